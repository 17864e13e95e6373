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
