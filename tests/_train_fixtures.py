"""Tiny data and models shared by the training tests (fast on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnets.train import InMemoryData, TrainConfig

# A 3-stage CIFAR ResNet of a few thousand parameters.
TINY = {"layers": (1, 1, 1), "widths": (4, 8, 8), "stem_width": 4}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def write_folder_dataset(root: Path, per_class: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """root/<split>/class<k>/*.png: noisy colour patches, one colour per class."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for k, colour in enumerate(COLOURS):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(colour, 50, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def tensor_data(n_train: int = 48, n_val: int = 24, size: int = 16, seed: int = 0) -> InMemoryData:
    generator = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 3
        base = torch.tensor(COLOURS, dtype=torch.float32)[labels].view(n, 3, 1, 1)
        noise = torch.randn(n, 3, size, size, generator=generator) * 50
        return (base + noise).clamp(0, 255).to(torch.uint8), labels

    (xt, yt), (xv, yv) = make(n_train), make(n_val)
    return InMemoryData(xt, yt, xv, yv, ["class0", "class1", "class2"])


def tiny_config(out: Path, **overrides) -> TrainConfig:
    values = dict(model="resnet20", model_options=dict(TINY), out=str(out), epochs=2, batch_size=8,
                  lr=0.05, device="cpu", progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def assert_resume_is_bitwise(tmp_path: Path, options: dict, resume_workers: int):
    """Train ``options`` unbroken, and again stopped after one epoch and resumed with
    ``resume_workers``: the same weights bit for bit and the same losses. Returns the unbroken run."""
    from resnets.train import train
    from resnets.train.checkpoint import load_state

    full = train(tiny_config(tmp_path / "full", **options))
    train(tiny_config(tmp_path / "split", **options), stop_after=1)
    resumed = train(tiny_config(tmp_path / "ignored", resume=str(tmp_path / "split"), workers=resume_workers))
    a, b = load_state(tmp_path / "full")["model"], load_state(tmp_path / "split")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]
    return full
