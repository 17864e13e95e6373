"""Augmentation presets applied to whole uint8 batches as tensor operations.

One call augments a batch (B, 3, H, W) with per-image random crops and flips done by
indexing (``cifar``) or by ``torchvision.ops.roi_align`` (``imagenet``'s random-resized crop),
on the batch's own device, with no per-image Python or PIL work.

Presets:
    cifar: train: zero-pad 4, random ``img_size`` crop, horizontal flip (He et al. 2016).
           eval: the image (resized, shorter side, and centre-cropped if not ``img_size``).
    imagenet: train: random-resized crop (scale 0.08-1, ratio 3/4-4/3), horizontal flip.
           eval: resize the shorter side to ``img_size / 0.875``, centre-crop ``img_size``.
    none: the eval transform of ``cifar``, in training too.
All end with ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from ..errors import ResnetsError
from ..models.registry import ModelSpec, get_model_spec

PRESETS = ("cifar", "imagenet", "none")
EVAL_CROP_FRACTION = 0.875


def preset_for_model(model: str | ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...], int, str]:
    """(mean, std, img_size, preset) of a registered model: ``cifar`` for small-input nets."""
    spec = get_model_spec(model) if isinstance(model, str) else model
    preset = "cifar" if spec.input_size <= 64 else "imagenet"
    return tuple(spec.mean), tuple(spec.std), spec.input_size, preset


class BatchAugment:
    """Callable turning a uint8 batch into a normalised float32 batch of ``img_size`` squares."""

    def __init__(self, preset: str = "none", img_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), train: bool = True, padding: int = 4,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, crop_fraction: float = EVAL_CROP_FRACTION):
        if preset not in PRESETS:
            raise ResnetsError(f"unknown augmentation preset {preset!r}; choose from {', '.join(PRESETS)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ResnetsError("mean and std need 3 values each, std > 0")
        self.preset, self.img_size, self.train = preset, int(img_size), train
        self.padding, self.scale, self.ratio, self.hflip = padding, scale, ratio, hflip
        self.crop_fraction = crop_fraction
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"BatchAugment({self.preset!r}, img_size={self.img_size}, {mode})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ResnetsError(f"BatchAugment expects uint8 (B, 3, H, W), got {images.dtype} "
                               f"{tuple(images.shape)}")
        if self.train and self.preset == "cifar":
            return self._normalise(self._pad_crop_flip(images, generator))
        if self.train and self.preset == "imagenet":
            return self._normalise(self._resized_crop_flip(images, generator))
        return self._normalise(self._eval_resize(images))

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        scale = 1.0 / (255.0 * std)
        return images.to(torch.float32).mul_(scale).sub_(mean / std)

    def _eval_resize(self, images: torch.Tensor) -> torch.Tensor:
        size = self.img_size
        resize_to = math.floor(size / self.crop_fraction) if self.preset == "imagenet" else size
        if min(images.shape[-2:]) != resize_to:
            images = TF.resize(images, [resize_to], antialias=True)
        if tuple(images.shape[-2:]) != (size, size):
            images = TF.center_crop(images, [size, size])
        return images

    def _flips(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(batch, generator=generator) < self.hflip

    def _pad_crop_flip(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Zero-pad, then one random crop and flip per image, as a single gather."""
        batch, _, height, width = images.shape
        size, pad = self.img_size, self.padding
        if height + 2 * pad < size or width + 2 * pad < size:
            raise ResnetsError(f"cannot crop {size}x{size} from {height}x{width} images padded by {pad}")
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
        top = torch.randint(0, height + 2 * pad - size + 1, (batch,), generator=generator)
        left = torch.randint(0, width + 2 * pad - size + 1, (batch,), generator=generator)
        steps = torch.arange(size)
        cols = torch.where(self._flips(batch, generator)[:, None], size - 1 - steps, steps) + left[:, None]
        rows = (top[:, None] + steps).to(images.device)
        cols = cols.to(images.device)
        picked = padded.permute(0, 2, 3, 1)[torch.arange(batch, device=images.device)[:, None, None],
                                            rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2)

    def _resized_crop_flip(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """torchvision's RandomResizedCrop box sampling, vectorised; boxes resampled by roi_align."""
        batch, _, height, width = images.shape
        top, left, h, w = _random_resized_boxes(batch, height, width, self.scale, self.ratio, generator)
        boxes = torch.stack([torch.arange(batch), left, top, left + w, top + h], dim=1).to(torch.float32)
        out = roi_align(images.to(torch.float32), boxes.to(images.device), output_size=self.img_size,
                        spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flips = self._flips(batch, generator).to(images.device)
        return torch.where(flips[:, None, None, None], out.flip(-1), out)


def _random_resized_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                          ratio: tuple[float, float], generator: torch.Generator | None,
                          attempts: int = 10) -> tuple[torch.Tensor, ...]:
    """(top, left, h, w) per image, by torchvision's rule: up to 10 tries, else a centre crop."""
    area = height * width
    target = area * torch.empty(batch, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                      generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(dim=1)
    fallback_w, fallback_h = _centre_box(height, width, ratio)
    w = torch.where(found, w, fallback_w)
    h = torch.where(found, h, fallback_h)
    top = (torch.rand(batch, generator=generator) * (height - h + 1)).long()
    left = (torch.rand(batch, generator=generator) * (width - w + 1)).long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def _centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height
