"""The end-to-end demo on built-in data: train, evaluate and predict handwritten digits.

scikit-learn's bundled digits (1,797 8x8 grey images, no download) are upsampled to 16x16
RGB, split 80/20 (stratified), a CIFAR-style ResNet-20 is trained on the 80 %, evaluated on
the held-out 20 % and asked to classify a few of the held-out digits written out as PNGs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ResnetsError
from .evaluate import classification_report, plot_confusion
from .metrics import collect_logits
from .predict import load_for_inference, predict_files
from .train import InMemoryData, TrainConfig, train

DIGIT_SIZE = 16


@dataclass
class DemoResult:
    run_dir: Path
    test_top1: float
    test_count: int
    train_seconds: float
    predictions: list[dict[str, Any]]
    true_labels: list[str]


def load_digits_split(size: int = DIGIT_SIZE, test_fraction: float = 0.2, seed: int = 0) -> tuple[InMemoryData, torch.Tensor, torch.Tensor]:
    """(train data, test images uint8 (N,3,size,size), test labels) from scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ResnetsError("the demo needs scikit-learn: pip install 'resnets[demo]'") from None
    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8) in [0,1]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                           stratify=labels.numpy(), random_state=seed)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    data = InMemoryData(images[train_idx], labels[train_idx], None, None, [str(d) for d in range(10)])
    return data, images[test_idx], labels[test_idx]


def write_pngs(images: torch.Tensor, folder: Path, names: list[str]) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, name in zip(images, names):
        path = folder / f"{name}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def run_demo(out: str | Path = "runs/demo", model: str = "resnet20", epochs: int = 10, seed: int = 0,
             progress: bool = True) -> DemoResult:
    """Train on 80 % of the digits, evaluate on the other 20 %, predict 6 held-out PNGs."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    out = Path(out)
    data, test_images, test_labels = load_digits_split(seed=seed)
    config = TrainConfig(model=model, out=str(out), epochs=epochs, batch_size=64, lr=0.1, opt="sgd",
                         sched="onecycle", label_smoothing=0.1, augment="none", channels_last=True,
                         seed=seed, device="cpu", progress=progress)
    start = time.perf_counter()
    train(config, data=data, overwrite=True)  # the demo folder is the demo's own: a rerun replaces it
    seconds = time.perf_counter() - start

    predictor = load_for_inference(out)
    batches = [(predictor.normalise(test_images[i:i + 256]), test_labels[i:i + 256])
               for i in range(0, len(test_labels), 256)]
    logits, labels = collect_logits(predictor.model, batches)
    report = classification_report(logits, labels, predictor.class_names)
    plot_confusion(report, out / "confusion.png")

    picks = list(range(6))
    truth = [str(test_labels[i].item()) for i in picks]
    pngs = write_pngs(test_images[picks], out / "samples", [f"sample{i}_digit{t}" for i, t in zip(picks, truth)])
    predictions = predict_files(predictor, pngs, topk=3)
    return DemoResult(out, report.top1, report.count, seconds, predictions, truth)


def print_result(result: DemoResult, file=sys.stdout) -> None:
    print(f"trained in {result.train_seconds:.0f} s; held-out test accuracy: {result.test_top1:.2f}% "
          f"of {result.test_count} digits", file=file)
    for prediction, truth in zip(result.predictions, result.true_labels):
        best = prediction["top"][0]
        verdict = "ok" if best["class"] == truth else "WRONG"
        print(f"  {Path(prediction['path']).name}: predicted {best['class']} "
              f"({100 * best['probability']:.1f}%) {verdict}", file=file)
    print(f"run directory: {result.run_dir} (weights.safetensors, metrics.jsonl, curves.png, "
          f"confusion.png, samples/)", file=file)
