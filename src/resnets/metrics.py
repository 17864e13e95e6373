"""Logits and what is read from them, in plain torch: one way for training, evaluation,
prediction and serving alike.

Test-time augmentation (:func:`tta_logits`) averages a model's logits over views ``(dy, dx,
flip)``: the image reflect-padded and cropped back to its size with the window moved by ``(dy,
dx)`` pixels, then mirrored when ``flip``. ``flip``: the image and its mirror (He et al. 2016;
Page 2018). ``multicrop``: that pair, and each also translated by one pixel up-left and
down-right, weighted as airbench's TTA level 2 (Keller Jordan, 2024): 1/2 untranslated, 1/4 each.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import ResnetsError

TTA_MODES = ("flip", "multicrop")

View = tuple[int, int, bool]


# -- logits over a loader -----------------------------------------------------------------------
@torch.inference_mode()
def collect_logits(model: nn.Module, loader: Iterable, amp: bool = False, channels_last: bool = False,
                   tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of every batch, kept on the device until the end.

    ``tta`` (a :data:`TTA_MODES` mode) averages the logits of several views of each image
    (:func:`tta_logits`).
    """
    if tta is not None:
        tta_views(tta)  # an unknown mode fails before the first batch
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for x, y in loader:
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = tta_logits(model, x, tta).float()
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


# -- named probabilities ------------------------------------------------------------------------
def probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Float32 class probabilities of (N, C) logits: a softmax over the classes, or one independent
    sigmoid per class for a multi-label model (:func:`resnets.multilabel.is_multi_label`)."""
    logits = logits.float()
    return logits.sigmoid() if multi_label else logits.softmax(1)


def top_classes(probs: torch.Tensor, class_names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of (N, C) probabilities, the ``k`` (at most C) most probable classes as
    ``{"class", "index", "probability"}``, most probable first."""
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[{"class": class_names[i], "index": i, "probability": p} for i, p in zip(row_i, row_p)]
            for row_i, row_p in zip(indices.tolist(), values.tolist())]


# -- test-time augmentation ---------------------------------------------------------------------
def tta_views(mode: str) -> list[View]:
    """The ``(dy, dx, flip)`` views of a test-time augmentation mode (see the module docstring)."""
    return [view for view, _ in _weighted_views(mode)]


def _weighted_views(mode: str) -> list[tuple[View, float]]:
    if mode == "flip":
        return [((0, 0, False), 0.5), ((0, 0, True), 0.5)]
    if mode == "multicrop":
        return [((dy, dx, flip), 0.25 if dy == 0 else 0.125) for dy, dx in ((0, 0), (-1, -1), (1, 1))
                for flip in (False, True)]
    raise ResnetsError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """The weighted mean of ``model``'s logits over the views of ``mode`` (float32), or ``model(x)`` for None.

    ``x`` is a normalised (B, C, H, W) batch; each view keeps its size and memory format.
    """
    if mode is None:
        return model(x)
    return sum(weight * model(_view(x, *view)).float() for view, weight in _weighted_views(mode))


def _view(x: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """One view of a (B, C, H, W) batch: translated by reflection (``dy``, ``dx``), then mirrored."""
    pad = max(abs(dy), abs(dx))
    height, width = x.shape[-2:]
    if pad >= min(height, width):
        raise ResnetsError(f"cannot translate {height}x{width} images by {pad} pixels with reflection")
    channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width]
    if flip:
        x = x.flip(-1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
