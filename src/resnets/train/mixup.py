"""Batch mixing (MixUp / CutMix) through torchvision.transforms.v2, yielding soft targets."""

from __future__ import annotations

from typing import Callable

import torch

BatchMix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_batch_mix(mixup: float, cutmix: float, num_classes: int) -> BatchMix | None:
    """A callable ``(images, labels) -> (mixed images, soft targets)``; ``None`` when both are off.

    With both enabled, each batch picks one of them at random (as timm and torchvision's
    reference scripts do).
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    from torchvision.transforms import v2  # torchvision is slow to import: only when mixing

    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
