"""Progressive resizing: train the early epochs on downscaled images, the last ones at full size.

fast.ai's technique, scheduled as MosaicML Composer's ``ProgressiveResizing`` does it: the
images start at ``initial_scale`` of the input size, stay there for the first ``delay`` of the
epochs, grow linearly, and the last ``finetune`` of the epochs run at full size. Sizes are
rounded down to a multiple of ``increment`` so a run sees few distinct shapes (one compiled
graph each with ``--compile``). Whole images are downscaled (antialiased bilinear), never
cropped: at 32x32 a crop would drop most of the object. A step at half the size costs about a
quarter, so the same time budget holds more epochs; validation always runs at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ResnetsError


@dataclass(frozen=True)
class ResizeSchedule:
    """The training input size of each epoch."""

    full_size: int
    initial_scale: float = 1.0   # 1.0: progressive resizing off
    delay: float = 0.5           # fraction of the epochs held at the initial scale
    finetune: float = 0.2        # fraction of the epochs at full size, at the end
    increment: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.initial_scale <= 1:
            raise ResnetsError(f"--progressive-resize must be in (0, 1], got {self.initial_scale}")
        if not (0 <= self.delay and 0 <= self.finetune and self.delay + self.finetune <= 1):
            raise ResnetsError("--progressive-delay and --progressive-finetune must be >= 0 and sum to at most 1")

    @property
    def enabled(self) -> bool:
        return self.initial_scale < 1

    def scale_at(self, epoch: int, epochs: int) -> float:
        """The scale of 0-based ``epoch`` out of ``epochs``, from the fraction of the run done."""
        done = epoch / max(epochs, 1)
        if done < self.delay:
            return self.initial_scale
        ramp = 1.0 - self.finetune - self.delay
        if ramp <= 0 or done >= 1.0 - self.finetune:
            return 1.0
        return self.initial_scale + (1.0 - self.initial_scale) * (done - self.delay) / ramp

    def size_at(self, epoch: int, epochs: int) -> int:
        """The input size of 0-based ``epoch``: the scaled size rounded down to ``increment``."""
        if not self.enabled:
            return self.full_size
        size = int(self.scale_at(epoch, epochs) * self.full_size)
        return min(self.full_size, max(self.increment, size - size % self.increment))

    def sizes(self, epochs: int) -> list[int]:
        return [self.size_at(e, epochs) for e in range(epochs)]


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` (N, C, H, W) downscaled to ``size`` x ``size``; unchanged when already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
