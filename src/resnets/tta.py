"""Test-time augmentation: average a model's logits over a few shifted and mirrored views.

Each view is ``(dy, dx, flip)``: the image translated by reflect-padding it and cropping back to
its own size with the window moved by ``(dy, dx)`` pixels (rows, columns), then mirrored left-right
when ``flip``. ``(-1, -1)`` is the crop one pixel up and left of centre, so output pixel ``(r, c)``
is input pixel ``(r - 1, c - 1)`` (reflected at the border).

Modes:
    flip: the image and its mirror image (He et al. 2016 evaluate on flips; David Page,
          "How to train your ResNet", 2018).
    multicrop: the image and its mirror, each also translated by one pixel up-left and
          down-right: six views (Keller Jordan, airbench 2024, TTA level 2). airbench weights the
          untranslated pair 1/2 and each translated pair 1/4; here all six views count equally.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import ResnetsError

TTA_MODES = ("flip", "multicrop")

View = tuple[int, int, bool]


def tta_views(mode: str) -> list[View]:
    """The ``(dy, dx, flip)`` views of a test-time augmentation mode (see the module docstring)."""
    if mode == "flip":
        return [(0, 0, False), (0, 0, True)]
    if mode == "multicrop":
        return [(dy, dx, flip) for dy, dx in ((0, 0), (-1, -1), (1, 1)) for flip in (False, True)]
    raise ResnetsError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """The mean of ``model``'s logits over the views of ``mode`` (float32), or ``model(x)`` for None.

    ``x`` is a normalised (B, C, H, W) batch; each view keeps its size and memory format.
    """
    if mode is None:
        return model(x)
    views = tta_views(mode)
    total = sum(model(_view(x, *view)).float() for view in views)
    return total / len(views)


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
