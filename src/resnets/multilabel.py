"""Multi-label models: the task record and the metrics every command uses for them.

A multi-label model has one independent sigmoid per class (trained with ``BCEWithLogitsLoss``);
an image carries every class whose probability is at or above the model's threshold. Whether a
model is multi-label, and its threshold, is recorded in the weights file's ``extra``
(``{"task": "multi-label", "threshold": 0.5}``) and, once loaded, on the model
(``model.task_record``). :func:`is_multi_label` and :func:`threshold_of` are the one way to
ask, for a model, a :class:`~resnets.weights.format.WeightsFile` or its ``extra`` dict.

Metrics are plain torch: :func:`average_precision` follows scikit-learn's
``average_precision_score`` (the step-wise sum over distinct scores, no interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ResnetsError

MULTI_LABEL = "multi-label"
DEFAULT_THRESHOLD = 0.5


def task_record(threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """What a multi-label model's weights file records in ``extra``."""
    return {"task": MULTI_LABEL, "threshold": check_threshold(threshold)}


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A probability threshold in (0, 1); one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1 \
            or not math.isfinite(value):
        raise ResnetsError(f"{what} must be a number between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def task_of(extra: dict[str, Any] | None, where: str = "weights file") -> dict[str, Any]:
    """The checked task record in a weights file's ``extra`` ({} for a single-label model)."""
    task = (extra or {}).get("task")
    if task is None:
        return {}
    if task != MULTI_LABEL:
        raise ResnetsError(f"{where}: unknown task {task!r} (this version knows {MULTI_LABEL!r})")
    return task_record(check_threshold(extra.get("threshold", DEFAULT_THRESHOLD), f"{where}: threshold"))


def _record(model_or_record: Any) -> dict[str, Any]:
    if isinstance(model_or_record, dict):
        return task_of(model_or_record)
    extra = getattr(model_or_record, "extra", None)
    if isinstance(extra, dict):  # a WeightsFile
        return task_of(extra)
    return getattr(model_or_record, "task_record", None) or {}


def is_multi_label(model_or_record: Any) -> bool:
    """Whether a model (or weights record, or its ``extra``) is multi-label."""
    return _record(model_or_record).get("task") == MULTI_LABEL


def threshold_of(model_or_record: Any) -> float:
    """The recorded decision threshold of a multi-label model."""
    return float(_record(model_or_record).get("threshold", DEFAULT_THRESHOLD))


def mark_multi_label(model: Any, threshold: float = DEFAULT_THRESHOLD) -> Any:
    """Make ``model`` multi-label (saving it records so)."""
    model.task_record = task_record(threshold)
    return model


# -- metrics ------------------------------------------------------------------------------------
def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision of (N, C) scores against (N, C) 0/1 targets.

    As scikit-learn: AP = sum over distinct score thresholds of (R_k - R_{k-1}) * P_k. A class
    with no positive example has no AP: NaN (left out of :func:`mean_average_precision`).
    """
    scores, targets = scores.double(), targets.double()
    order = scores.argsort(dim=0, descending=True, stable=True)
    sorted_scores, hits = scores.gather(0, order), targets.gather(0, order)
    tp = hits.cumsum(0)
    fp = (1 - hits).cumsum(0)
    # the last row of each run of equal scores closes a threshold
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    last[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    positives = tp[-1]
    precision = tp / (tp + fp)
    recall = tp / positives.clamp(min=1)
    ap = torch.zeros(scores.shape[1], dtype=torch.float64)
    for c in range(scores.shape[1]):
        at = last[:, c]
        r = torch.cat([torch.zeros(1, dtype=torch.float64), recall[at, c]])
        ap[c] = ((r[1:] - r[:-1]) * precision[at, c]).sum()
    ap[positives == 0] = float("nan")
    return ap


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP over the classes that have positives (scikit-learn's ``average="macro"`` when all do)."""
    ap = average_precision(scores, targets)
    known = ~ap.isnan()
    if not bool(known.any()):
        raise ResnetsError("no class has a positive example: mAP is undefined")
    return float(ap[known].mean())


def counts_at(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (true positives, false positives, false negatives), predicting ``probs >= thresholds``."""
    predicted = probs >= torch.as_tensor(thresholds, dtype=probs.dtype)
    truth = targets.bool()
    return ((predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0))


def f1_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[float, float]:
    """(micro F1, macro F1) from per-class counts; a class with no positives and no predictions counts 1."""
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)
    denominator = 2 * tp + fp + fn
    per_class = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.ones_like(tp, dtype=torch.float))
    return float(micro), float(per_class.float().mean())


def best_f1_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per class, the threshold (one of the scores) with the best F1 on these images.

    Ties keep the highest threshold. A class without positives gets 1.0, which predicts it only
    where the sigmoid saturates.
    """
    probs, targets = probs.double(), targets.double()
    order = probs.argsort(dim=0, descending=True, stable=True)
    sorted_probs, hits = probs.gather(0, order), targets.gather(0, order)
    tp = hits.cumsum(0)
    predicted = torch.arange(1, len(probs) + 1, dtype=torch.float64).unsqueeze(1)
    f1 = 2 * tp / (predicted + tp[-1])
    last = torch.ones_like(sorted_probs, dtype=torch.bool)
    last[:-1] = sorted_probs[:-1] != sorted_probs[1:]
    f1[~last] = -1  # a threshold inside a run of equal scores cannot be realised
    best = f1.argmax(0)
    thresholds = sorted_probs.gather(0, best.unsqueeze(0)).squeeze(0)
    thresholds[tp[-1] == 0] = 1.0
    return thresholds.to(probs.dtype)


def labels_above(probs: torch.Tensor, class_names: list[str], threshold: float | torch.Tensor
                 ) -> list[list[dict[str, Any]]]:
    """Per image, every class at or above the threshold with its probability, most probable first."""
    limits = torch.as_tensor(threshold, dtype=probs.dtype).expand(probs.shape[1])
    rows = []
    for p in probs.tolist():
        chosen = [(q, c) for c, q in enumerate(p) if q >= float(limits[c])]
        rows.append([{"class": class_names[c], "index": c, "probability": q} for q, c in sorted(chosen, reverse=True)])
    return rows


# -- the evaluation report ---------------------------------------------------------------------
@dataclass
class MultiLabelReport:
    """``resnets evaluate`` on a multi-label model: mAP, and F1 / precision / recall at a threshold.

    ``threshold_how``: ``"recorded"`` (the model's), ``"given"`` (``--threshold``) or ``"tuned"``
    (per class, the best F1 on these same images: optimistic, as said in the report).
    Metrics are fractions in [0, 1]; ``map`` leaves out classes without positives (``no_positives``).
    """

    map: float
    micro_f1: float
    macro_f1: float
    loss: float
    count: int
    class_names: list[str]
    threshold_how: str
    per_class: list[dict[str, Any]] = field(default_factory=list)
    no_positives: list[str] = field(default_factory=list)
    backend: str = "eager"
    split: str = "all"
    split_how: str = ""
    skipped_classes: dict[str, int] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": MULTI_LABEL, "map": self.map, "micro_f1": self.micro_f1, "macro_f1": self.macro_f1,
                "loss": self.loss, "count": self.count, "threshold_how": self.threshold_how,
                "per_class": self.per_class, "no_positives": self.no_positives, "backend": self.backend,
                "split": self.split, "split_how": self.split_how, "skipped_classes": self.skipped_classes}


def multi_label_report(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                       threshold: float | str) -> MultiLabelReport:
    """Score (N, C) logits against (N, C) 0/1 targets; ``threshold`` a number or ``"tune"``."""
    probs, targets = logits.float().sigmoid(), targets.to(torch.int64)
    if threshold == "tune":
        thresholds, how = best_f1_thresholds(probs, targets).float(), "tuned"
    else:
        thresholds, how = torch.full((len(class_names),), check_threshold(threshold)), "fixed"
    tp, fp, fn = counts_at(probs, targets, thresholds)
    micro, macro = f1_scores(tp, fp, fn)
    ap = average_precision(probs, targets)
    rows = []
    for c, name in enumerate(class_names):
        t, p, n = int(tp[c]), int(fp[c]), int(fn[c])
        rows.append({"class": name, "ap": None if ap[c].isnan() else float(ap[c]),
                     "precision": t / (t + p) if t + p else 0.0, "recall": t / (t + n) if t + n else 0.0,
                     "f1": 2 * t / (2 * t + p + n) if 2 * t + p + n else 0.0, "support": t + n,
                     "threshold": float(thresholds[c])})
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float()).item()
    return MultiLabelReport(mean_average_precision(probs, targets), micro, macro, loss, len(targets),
                            list(class_names), how, rows, [n for n, a in zip(class_names, ap) if a.isnan()])
