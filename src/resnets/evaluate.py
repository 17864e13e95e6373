"""Evaluation: top-1/top-5, per-class precision/recall/F1 and a confusion matrix."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import BatchAugment, TensorLoader, decode_to_memory, load_splits
from .data.dataset import ConcatDataset
from .data.sources import VAL_SPLITS, open_source
from .errors import ResnetsError
from .explain import cam_class, class_activation_maps, label_text
from .fileio import atomic_write_text, save_figure
from .inference import INT8_BACKENDS, check_backend
from .metrics import collect_logits, topk_accuracy, tta_views
from .multilabel import MultiLabelReport, is_multi_label, multi_label_report, threshold_of
from .predict import InferenceModel, load_for_inference
from .textparse import MAX_TEXT_BYTES, load_json, read_limited
from .weights.onnx import OnnxModel, is_onnx_path


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
    split: str = "all"  # which images were scored
    split_how: str = ""  # how that split was chosen, for the report
    skipped_classes: dict[str, int] = field(default_factory=dict)  # data classes the model lacks: images
    items: list[str] = field(default_factory=list)  # the scored images (file names), in logits order
    interpretation: dict[str, Any] | None = None  # --report: most-confused pairs, top losses (interpret())
    balanced_accuracy: float = 0.0  # mean recall (%) over the classes that have images
    macro_f1: float = 0.0  # mean F1 over the classes that have images or predictions
    recall_floor: float = 0.5  # classes with images whose recall is below it are flagged (low_recall)

    @property
    def low_recall(self) -> list[str]:
        """The classes (with images) whose recall is under ``recall_floor``: what an imbalanced set hides."""
        return [row["class"] for row in self.per_class if row["support"] and row["recall"] < self.recall_floor]

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.interpretation is None else {"interpretation": self.interpretation}
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count,
                "split": self.split, "split_how": self.split_how, "skipped_classes": self.skipped_classes,
                "backend": self.backend, "per_class": self.per_class, "confusion": self.confusion.tolist(),
                "balanced_accuracy": self.balanced_accuracy, "macro_f1": self.macro_f1,
                "recall_floor": self.recall_floor, "low_recall": self.low_recall, **extra}


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
    report = EvalReport(top1, top5, loss, len(labels), class_names, confusion, per_class)
    present, seen = confusion.sum(1) > 0, (confusion.sum(1) + confusion.sum(0)) > 0
    report.balanced_accuracy = 100.0 * recall[present].mean().item() if present.any() else 0.0
    report.macro_f1 = f1[seen].mean().item() if seen.any() else 0.0
    return report


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


def most_confused(confusion: torch.Tensor, class_names: list[str], limit: int = 10) -> list[dict[str, Any]]:
    """The off-diagonal cells of the confusion matrix, most images first (fastai's ``most_confused``)."""
    n = len(class_names)
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, cells = off.flatten().sort(descending=True, stable=True)
    return [{"true": class_names[c // n], "predicted": class_names[c % n], "count": k}
            for k, c in zip(counts.tolist(), cells.tolist()) if k > 0][:limit]


def top_losses(logits: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, indices) of the ``count`` images with the highest cross-entropy, highest first."""
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return losses.topk(min(count, len(losses)))


REPORT_IMAGES = 16


def interpret(report: EvalReport, logits: torch.Tensor, labels: torch.Tensor, images_u8: torch.Tensor,
              out_dir: str | os.PathLike, count: int = REPORT_IMAGES, cam_predictor: Any = None) -> dict[str, Any]:
    """What fastai's ``ClassificationInterpretation`` shows, from logits already computed.

    Writes ``top_losses.png`` (the ``count`` images with the highest loss: true and predicted
    class, the predicted class's probability, the loss; with ``cam_predictor``, an
    :class:`resnets.predict.InferenceModel`, the Grad-CAM of the predicted class over each) and
    ``interpretation.json`` in ``out_dir``; returns that record (also ``report.interpretation``).
    """
    losses, chosen = top_losses(logits, labels, count)
    probs = logits.softmax(1)
    predicted = logits.argmax(1)
    rows = [{"item": report.items[i] if i < len(report.items) else str(i), "index": i,
             "true": report.class_names[int(labels[i])], "predicted": report.class_names[int(predicted[i])],
             "probability": float(probs[i, predicted[i]]),
             "true_probability": float(probs[i, labels[i]]), "loss": float(loss)}
            for loss, i in zip(losses.tolist(), chosen.tolist())]
    cams = None
    if cam_predictor is not None and rows:
        batch = cam_predictor.normalise(images_u8[chosen])
        cams = class_activation_maps(cam_predictor.plain, batch, predicted[chosen].tolist())
    out = Path(out_dir)
    grid = plot_top_losses(images_u8[chosen], rows, out / "top_losses.png", cams)
    record = {"most_confused": most_confused(report.confusion, report.class_names), "top_losses": rows,
              "top_losses_png": str(grid), "cam": cams is not None}
    atomic_write_text(out / "interpretation.json", json.dumps(record, indent=1) + "\n")
    report.interpretation = record
    return record


def plot_top_losses(images_u8: torch.Tensor, rows: list[dict[str, Any]], path: str | os.PathLike,
                    cams: Any = None) -> Path:
    """A grid of images, each titled predicted / true / loss / probability, CAMs laid over if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(rows))
    cols = min(4, count)
    lines = math.ceil(count / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 3.55 * lines), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(rows):
            continue
        row = rows[k]
        ax.imshow(images_u8[k].permute(1, 2, 0).numpy(), interpolation="bilinear")
        if cams is not None:
            ax.imshow(cams[k], cmap="jet", alpha=0.4, interpolation="bilinear", vmin=0, vmax=1)
        ax.set_title(f"predicted {label_text(row['predicted'], 22)} ({100 * row['probability']:.0f}%)\n"
                     f"true {label_text(row['true'], 22)}, loss {row['loss']:.2f}", fontsize=10,
                     color="#b00020" if row["predicted"] != row["true"] else "black")
    return save_figure(fig, path)


CALIBRATION_IMAGES = 256


def _calibration_images(dataset, preprocessing, workers: int) -> torch.Tensor:
    count = min(CALIBRATION_IMAGES, len(dataset))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count]
    return decode_to_memory(dataset.subset(chosen.tolist()), workers=workers, progress=False,
                            preprocessing=preprocessing)[0]


SPLITS = ("auto", "val", "train", "all")


@dataclass
class EvalData:
    """The images ``evaluate`` scores: which split of which source, and why."""

    dataset: Any  # ImageDataset
    split: str  # "val", "test", "train", "all" ...
    how: str  # one line for the report: how the split was chosen


def evaluation_data(data: str | os.PathLike, split: str = "auto", run_config: dict[str, Any] | None = None
                    ) -> tuple[EvalData, Any]:
    """The split to score, and the training split (for int8 calibration; may be the same).

    ``split``: ``auto`` scores the held-out images: the source's ``val``/``test`` split, else the
    run's own ``--val-split`` reproduced from its stored seed and fraction, else everything.
    ``val``, ``train`` and ``all`` ask for one of those explicitly. A source holding only a
    ``val/`` or ``test/`` split, or a bare class tree, is scored whole.
    """
    if split not in SPLITS:
        raise ResnetsError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    source = open_source(data)
    names = list(source.splits)
    held_out = next((name for name in VAL_SPLITS if name in names), None)
    if names and "train" not in names:  # only held-out splits (a validation download): the preferred one, whole
        if split == "train":
            raise ResnetsError(f"{data} has no train split (its splits: {', '.join(names)})")
        name = held_out or names[0]
        whole = source.dataset(name)
        return EvalData(whole, name, f"all of its {name} split"), whole
    run = run_config or {}
    fraction = run.get("val_split") if held_out is None else None
    train, val = load_splits(data, val_split=fraction or None, seed=int(run.get("seed", 0)))
    if split == "all":
        everything = _concat(source, names) if names else load_splits(data)[0]
        return EvalData(everything, "all", "every image"), train
    if split == "train":
        return EvalData(train, "train", "the training split"), train
    if val is None:
        if split == "val":
            raise ResnetsError(f"{data} has no val/test split and the model's run held nothing out; "
                               "use --split all")
        return EvalData(train, "all", "every image (no held-out split)"), train
    how = (f"the {held_out} split" if held_out else
           f"the run's held-out {fraction:g} (seed {run.get('seed', 0)}), {len(val)} of {len(train) + len(val)}")
    return EvalData(val, held_out or "val", how), train


def _concat(source: Any, names: list[str]) -> Any:
    """Every split of ``source`` as one data set (class names must agree across splits)."""
    parts = [source.dataset(name) for name in names] if names else [source.dataset(None)]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _label_map(data_classes: list[str], model_classes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Data label index -> model output index, matched by class name (-1: unknown to the model)."""
    lookup = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in lookup]
    if len(unknown) == len(data_classes):
        raise ResnetsError(f"none of the data's classes ({', '.join(data_classes[:3])}...) is one the model knows "
                           f"({', '.join(model_classes[:3])}...); is this the right data?")
    return torch.tensor([lookup.get(c, -1) for c in data_classes]), unknown


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, batch_size: int = 128,
             tta: str | None = None, device: str = "cpu", workers: int = 2,
             confusion_png: str | os.PathLike | None = None, backend: str = "auto",
             split: str = "auto", report_dir: str | os.PathLike | None = None,
             report_cam: bool = False, recall_floor: float = 0.5,
             threshold: float | str | None = None) -> EvalReport | MultiLabelReport:
    """Evaluate a model (anything :func:`resnets.factory.load_model` takes) on a data set.

    Images go through the model's own preprocessing record. ``split``: see
    :func:`evaluation_data`; the report says which split was scored and how many images.
    Classes are matched to the model's by name: a class the model does not know is left out and
    reported (``report.skipped_classes``).

    ``backend``: any of :func:`resnets.optimize_for_inference`'s; ``auto`` (the default) counts
    the images it will run (views of test-time augmentation included) and runs eager where an
    export and probe would not pay back (:func:`resnets.inference.worth_probing`). The int8
    ones are calibrated on
    ``CALIBRATION_IMAGES`` images drawn (seed 0) from the training split, or from the evaluated
    images when the data has no other split, so that their accuracy cost can be read here.

    ``report_dir``: also write :func:`interpret`'s top-loss grid and most-confused pairs there,
    from the same logits (``report_cam``: with Grad-CAMs of the predicted class). A multi-label
    model gets a :class:`~resnets.multilabel.MultiLabelReport` (mAP, micro/macro F1, per-class
    precision/recall) at ``threshold``: None for the model's recorded one, a number, or ``"tune"``
    for each class's best F1 on these same images (reported as tuned).
    """
    if batch_size < 1:
        raise ResnetsError(f"--batch-size must be positive, got {batch_size}")
    if isinstance(recall_floor, bool) or not isinstance(recall_floor, (int, float)) or not 0 <= recall_floor <= 1:
        raise ResnetsError(f"--recall-floor must be a number in [0, 1], got {recall_floor!r}")
    backend = check_backend(backend)
    if report_cam:  # the missing extra is said before the images are scored, not after
        cam_class("gradcam")
    chosen, train_set = evaluation_data(data, split, _run_config(checkpoint))
    runs = len(chosen.dataset) * (len(tta_views(tta)) if tta else 1)
    predictor, label_map, unknown = _prepared_model(checkpoint, device, backend, chosen.dataset, train_set, workers,
                                                    runs, report_cam)
    multi_label = _multi_label(predictor, chosen.dataset, report_dir, report_cam)
    images, labels, kept = decode_to_memory(chosen.dataset, workers=workers, preprocessing=predictor.preprocessing,
                                            return_kept=True)
    targets, scored, skipped = (_multi_label_targets if multi_label else _single_label_targets)(
        labels, chosen.dataset, label_map, unknown, len(predictor.class_names))
    images, kept = images[scored], kept[scored]
    logits, targets = _logits(predictor, images, targets[scored], batch_size, tta)
    report = _multi_label_report(logits, targets, predictor, threshold) if multi_label else \
        classification_report(logits, targets, predictor.class_names)
    report.backend, report.split, report.split_how = predictor.backend, chosen.split, chosen.how
    report.items = [chosen.dataset.describe(i) for i in kept.tolist()]
    report.skipped_classes = skipped
    if multi_label:
        return report
    report.recall_floor = float(recall_floor)
    if confusion_png is not None:
        plot_confusion(report, confusion_png)
    if report_dir is not None:
        interpret(report, logits, targets, images, report_dir, cam_predictor=predictor if report_cam else None)
    return report


def _prepared_model(checkpoint: str | os.PathLike, device: str, backend: str, dataset: Any, train_set: Any,
                    workers: int, images: int | None = None,
                    report_cam: bool = False) -> tuple[InferenceModel, torch.Tensor, list[str]]:
    """The model through ``backend`` (``images``: how many it will run, for ``auto``), and
    :func:`_label_map` of the data's classes onto its own (refused, if none matches, before an
    int8 backend is calibrated)."""
    int8 = backend in INT8_BACKENDS
    first = ("onnxruntime" if is_onnx_path(checkpoint) else "eager") if int8 else backend  # calibrated below
    predictor = load_for_inference(checkpoint, device, backend=first, images=images)
    if report_cam and isinstance(predictor.plain, OnnxModel):
        raise ResnetsError(f"--report-cam needs gradients through the model, which the ONNX file {checkpoint} does "
                           "not give; pass its weights file, or drop --report-cam")
    label_map, unknown = _label_map(list(dataset.classes), predictor.class_names)
    if int8:  # calibrated on images the model is then not scored on, where the data allows
        predictor = predictor.with_backend(backend, _calibration_images(train_set, predictor.preprocessing, workers))
    return predictor, label_map, unknown


def _single_label_targets(labels: torch.Tensor, dataset: Any, label_map: torch.Tensor, unknown: list[str],
                          num_classes: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """The model's class of each image, which images to score (those of classes the model
    knows), and the data set's image count of each class it does not."""
    targets = label_map[labels]
    skipped = {name: int((torch.as_tensor(dataset.targets) == i).sum())
               for i, name in enumerate(dataset.classes) if name in unknown}
    return targets, targets >= 0, skipped


def _multi_label_targets(labels: torch.Tensor, dataset: Any, label_map: torch.Tensor, unknown: list[str],
                         num_classes: int) -> tuple[torch.Tensor, slice, dict[str, int]]:
    """(N, ``num_classes``) 0/1 targets in the model's classes, every image scored (a label the
    model does not know is dropped from it), and the image count of each such label."""
    if labels.ndim == 1:  # single-label data: each image carries its one class
        labels = torch.nn.functional.one_hot(labels, len(dataset.classes))
    targets = torch.zeros(len(labels), num_classes, dtype=torch.int64)
    known = label_map >= 0
    targets[:, label_map[known]] = labels[:, known]
    skipped = {name: int(labels[:, j].sum()) for j, name in enumerate(dataset.classes) if name in unknown}
    return targets, slice(None), skipped


def _logits(predictor: InferenceModel, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
            tta: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on uint8 ``images`` (through its preprocessing), and ``targets`` alongside."""
    augment = BatchAugment("none", predictor.preprocessing, train=False)
    loader = TensorLoader(images, targets, batch_size, shuffle=False, drop_last=False, augment=augment,
                          seed=0, device=predictor.device)
    return collect_logits(predictor.model, loader, tta=tta)


def _multi_label(predictor: InferenceModel, dataset: Any, report_dir: Any, report_cam: bool) -> bool:
    """Whether to score as multi-label (the model is); a label file with a single-label model is refused."""
    multi_hot = bool(getattr(dataset, "multi_label", False) or getattr(getattr(dataset, "parent", None),
                                                                        "multi_label", False))
    if not is_multi_label(predictor.plain):
        if multi_hot:
            raise ResnetsError(f"{dataset.source} is a multi-label data set but the model is single-label; "
                               "train one with `resnets train --multi-label`")
        return False
    if report_dir is not None or report_cam:
        raise ResnetsError("--report and --report-cam are for single-label models; drop them")
    return True


def _multi_label_report(logits: torch.Tensor, targets: torch.Tensor, predictor: InferenceModel,
                        threshold: float | str | None) -> MultiLabelReport:
    """The multi-label metrics at ``threshold``: None for the model's recorded one, a number, ``"tune"``."""
    report = multi_label_report(logits, targets, predictor.class_names,
                                threshold_of(predictor.plain) if threshold is None else threshold)
    if report.threshold_how != "tuned":
        report.threshold_how = "recorded" if threshold is None else "given"
    return report


def _run_config(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The training config of a run directory (for its held-out split), else None."""
    path = Path(checkpoint) / "config.json"
    if not Path(checkpoint).is_dir() or not path.is_file():
        return None
    try:
        config = load_json(read_limited(path, MAX_TEXT_BYTES), path.name)
    except (OSError, ValueError) as error:  # ValueError: the bounded readers' ResnetsError (FIFO, size, depth, syntax)
        raise ResnetsError(f"{path} is unreadable ({error}); pass the weights file instead") from None
    if not isinstance(config, dict):
        raise ResnetsError(f"{path} is not a JSON object")
    fraction = config.get("val_split")
    if fraction is not None and (not isinstance(fraction, (int, float)) or not 0 <= fraction < 1):
        raise ResnetsError(f"{path}: val_split {fraction!r} is not a fraction in [0, 1)")
    if not isinstance(config.get("seed", 0), int):
        raise ResnetsError(f"{path}: seed {config.get('seed')!r} is not an integer")
    return config
