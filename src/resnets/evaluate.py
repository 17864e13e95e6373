"""Evaluation: top-1/top-5, per-class precision/recall/F1 and a confusion matrix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .errors import ResnetsError
from .fileio import save_figure


@torch.inference_mode()
def collect_logits(model: nn.Module, loader: Iterable, amp: bool = False, channels_last: bool = False,
                   tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of every batch, kept on the device until the end.

    ``tta="flip"`` averages the logits of each image and its mirror image.
    """
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for x, y in loader:
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
            if tta == "flip":
                logits = (logits + model(x.flip(3)).float()) / 2
        all_logits.append(logits)
        all_labels.append(y)
    model.train(was_training)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels).cpu()


@torch.inference_mode()
def extract_features(model: nn.Module, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logits embeddings of every image (eval mode) and their labels, for head-only
    training. The labels come from the loader, so images a streaming loader skipped are absent."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
        labels.append(y)
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Percent of samples whose label is among the k highest logits (k capped at the class count)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == labels.view(-1, 1)
    return [100.0 * hits[:, :k].any(1).float().mean().item() for k in ks]


@dataclass
class EvalReport:
    top1: float
    top5: float
    loss: float
    count: int
    class_names: list[str]
    confusion: torch.Tensor                       # [true, predicted] counts
    per_class: list[dict[str, Any]] = field(default_factory=list)
    backend: str = "eager"  # the inference backend that computed the logits

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count,
                "backend": self.backend, "per_class": self.per_class, "confusion": self.confusion.tolist()}


def classification_report(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> EvalReport:
    """Accuracy, loss, confusion matrix and per-class precision/recall/F1 (0 where undefined)."""
    n = len(class_names)
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)
    true_pos = confusion.diag().double()
    precision = true_pos / confusion.sum(0).clamp(min=1)
    recall = true_pos / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    per_class = [{"class": name, "precision": p, "recall": r, "f1": f, "support": s}
                 for name, p, r, f, s in zip(class_names, precision.tolist(), recall.tolist(), f1.tolist(),
                                             confusion.sum(1).tolist())]
    top1, top5 = topk_accuracy(logits, labels, (1, 5))
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return EvalReport(top1, top5, loss, len(labels), class_names, confusion, per_class)


def plot_confusion(report: EvalReport, path: str | os.PathLike) -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report.class_names)
    side = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(report.confusion.numpy(), cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), report.class_names, rotation=90)
        ax.set_yticks(range(n), report.class_names)
        if n <= 20:
            for (i, j), value in zip(torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(),
                                     report.confusion.flatten().tolist()):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {report.top1:.2f}% on {report.count} images")
    return save_figure(fig, path)


CALIBRATION_IMAGES = 256


def _calibration_images(dataset, size: int, workers: int) -> torch.Tensor:
    from .data import decode_to_memory

    count = min(CALIBRATION_IMAGES, len(dataset))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count]
    images, _ = decode_to_memory(dataset.subset(chosen.tolist()), size=size, workers=workers, progress=False)
    return images


def _label_map(data_classes: list[str], model_classes: list[str]) -> torch.Tensor:
    """Data label index -> model output index, matched by class name."""
    lookup = {name: i for i, name in enumerate(model_classes)}
    missing = [c for c in data_classes if c not in lookup]
    if missing:
        raise ResnetsError(f"the data has class {missing[0]!r} that the model does not know "
                           f"({len(missing)} such); evaluate on data with the model's classes")
    return torch.tensor([lookup[c] for c in data_classes])


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, batch_size: int = 128,
             tta: str | None = None, device: str = "cpu", workers: int = 2,
             confusion_png: str | os.PathLike | None = None, backend: str = "eager") -> EvalReport:
    """Evaluate a run directory or weights file on a data set's held-out split (or all of it).

    ``backend``: any of :func:`resnets.optimize_for_inference`'s. The int8 ones are calibrated on
    ``CALIBRATION_IMAGES`` images drawn (seed 0) from the training split, or from the evaluated
    images when the data has no held-out split, so that their accuracy cost can be read here.
    """
    from .data import BatchAugment, TensorLoader, decode_to_memory, load_splits
    from .inference import INT8_BACKENDS, check_backend
    from .predict import load_for_inference

    if batch_size < 1:
        raise ResnetsError(f"--batch-size must be positive, got {batch_size}")
    backend = check_backend(backend)
    int8 = backend in INT8_BACKENDS
    predictor = load_for_inference(checkpoint, device, backend="eager" if int8 else backend)
    train_set, val_set = load_splits(str(data))
    dataset = val_set if val_set is not None and len(val_set) else train_set
    if int8:  # calibrated on images the model is then not scored on, where the data allows
        predictor = predictor.with_backend(backend, _calibration_images(train_set, predictor.img_size, workers))
    images, labels = decode_to_memory(dataset, size=predictor.img_size, workers=workers)
    labels = _label_map(list(dataset.classes), predictor.class_names)[labels]
    augment = BatchAugment("none", predictor.img_size, predictor.mean, predictor.std, train=False)
    loader = TensorLoader(images, labels, batch_size, shuffle=False, drop_last=False, augment=augment,
                          seed=0, device=predictor.device)
    logits, labels = collect_logits(predictor.model, loader, tta=tta)
    report = classification_report(logits, labels, predictor.class_names)
    report.backend = predictor.backend
    if confusion_png is not None:
        plot_confusion(report, confusion_png)
    return report
