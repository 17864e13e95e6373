"""Augmentation presets applied to whole uint8 batches as tensor operations: per-image random
crops and flips by indexing or ``roi_align``, on the batch's device, with no per-image Python.

Presets:
    cifar: train: zero-pad 4, random ``img_size`` crop, horizontal flip (He et al. 2016);
           ``pad_mode="reflect"`` pads by reflection instead (Keller Jordan, airbench 2024: 2 px).
           eval: the image (resized, shorter side, and centre-cropped if not ``img_size``).
    imagenet: train: random-resized crop (scale 0.08-1, ratio 3/4-4/3), horizontal flip.
           eval: resize the shorter side to ``img_size / 0.875``, centre-crop ``img_size``.
    none: the eval transform of ``cifar``, in training too.
The flip is random (``flip="random"``), alternating (``"alternate"``: each image flipped in every
other epoch, see :func:`alternating_flips`) or off (``"none"``).
All end with the model's :meth:`Preprocessing.normalize <resnets.preprocessing.Preprocessing.normalize>`
(the same code that ``predict`` and ``evaluate`` run), and evaluation resizes as the record says.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from ..errors import ResnetsError
from ..models.registry import ModelSpec, get_model_spec
from ..preprocessing import EVAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, check_pixels

PRESETS = ("cifar", "imagenet", "none")
FLIPS = ("random", "alternate", "none")
PAD_MODES = ("constant", "reflect")
_MASK32 = 0xFFFFFFFF


def default_preset(input_size: int) -> str:
    """The augmentation preset of a model taking ``input_size`` px: ``cifar`` up to 64, else ``imagenet``."""
    return "cifar" if input_size <= 64 else "imagenet"


def preset_for_model(model: str | ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...], int, str]:
    """(mean, std, img_size, preset) of a registered model: ``cifar`` for small-input nets."""
    spec = get_model_spec(model) if isinstance(model, str) else model
    return tuple(spec.mean), tuple(spec.std), spec.input_size, default_preset(spec.input_size)


def storage_size(preset: str, img_size: int, crop_fraction: float = EVAL_CROP_FRACTION) -> int:
    """The square size at which to keep decoded images in memory for a preset.

    ``imagenet`` keeps the eval resize (``img_size / 0.875``, 256 for 224) so that evaluation
    crops the centre of a larger image rather than upsampling; the others keep ``img_size``.
    """
    return math.floor(img_size / crop_fraction) if preset == "imagenet" else img_size


def training_preprocessing(base: Preprocessing, preset: str, img_size: int) -> Preprocessing:
    """The record of a model trained with ``preset`` at ``img_size``: ``base``'s pixel values
    (mean, std, channel order, range, interpolation) and the geometry the preset evaluates with."""
    return base.replace(input_size=img_size, resize_size=storage_size(preset, img_size))


class BatchAugment:
    """Callable turning a uint8 batch into a normalised float32 batch of ``img_size`` squares.

    ``preprocessing``: the model's record (its ``input_size`` is ``img_size``), or an
    ``img_size`` with ``mean`` and ``std``, for the preset's own eval geometry.
    ``flip``: ``"random"`` flips each image with probability ``hflip``; ``"alternate"`` flips the
    image of data-set index i in epoch e iff ``b(seed, i) XOR e % 2`` (:func:`alternating_flips`),
    so the call needs the batch's ``indices``; ``"none"`` never flips.
    ``pad_mode``: how ``cifar`` pads by ``padding`` pixels before its crop, ``"constant"`` (zeros)
    or ``"reflect"``.
    """

    def __init__(self, preset: str = "none", preprocessing: Preprocessing | int = 224,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, train: bool = True,
                 padding: int = 4, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, flip: str = "random",
                 pad_mode: str = "constant"):
        if preset not in PRESETS:
            raise ResnetsError(f"unknown augmentation preset {preset!r}; choose from {', '.join(PRESETS)}")
        if flip not in FLIPS:
            raise ResnetsError(f"unknown flip {flip!r}; choose from {', '.join(FLIPS)}")
        if pad_mode not in PAD_MODES:
            raise ResnetsError(f"unknown pad mode {pad_mode!r}; choose from {', '.join(PAD_MODES)}")
        if not isinstance(preprocessing, Preprocessing):
            preprocessing = training_preprocessing(
                Preprocessing(mean=tuple(mean or IMAGENET_MEAN), std=tuple(std or IMAGENET_STD)), preset,
                int(preprocessing))
        elif mean is not None or std is not None:
            raise ResnetsError("pass mean and std in the preprocessing record, not beside it")
        self.preset, self.preprocessing, self.train = preset, preprocessing, train
        self.img_size = preprocessing.input_size
        self.padding, self.scale, self.ratio, self.hflip = padding, scale, ratio, hflip
        self.flip, self.pad_mode = flip, pad_mode

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"BatchAugment({self.preset!r}, img_size={self.img_size}, {mode})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 indices: torch.Tensor | None = None, epoch: int = 0, seed: int = 0) -> torch.Tensor:
        """Augment a uint8 batch. ``indices`` (each image's data-set index), ``epoch`` and ``seed``
        drive the alternating flip; the random crops and flips are drawn from ``generator``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ResnetsError(f"BatchAugment expects uint8 (B, 3, H, W), got {images.dtype} "
                               f"{tuple(images.shape)}")
        if indices is not None and tuple(indices.shape) != (len(images),):
            raise ResnetsError(f"expected {len(images)} indices, one per image, got shape {tuple(indices.shape)}")
        flips = _FlipDraw(indices, epoch, seed)
        if self.train and self.preset == "cifar":
            return self._normalise(self._pad_crop_flip(images, generator, flips))
        if self.train and self.preset == "imagenet":
            return self._normalise(self._resized_crop_flip(images, generator, flips))
        return self._normalise(self._eval_resize(images))

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.normalize(images)

    def _eval_resize(self, images: torch.Tensor) -> torch.Tensor:
        """The record's geometry on tensors; a no-op for images decoded through the record. Sizes
        come from :meth:`Preprocessing.resized_size`, so the decode budget is checked first."""
        size, (height, width) = self.img_size, images.shape[-2:]
        if self.preprocessing.keeps(height, width):
            return images
        new_width, new_height = self.preprocessing.resized_size(width, height)
        if isinstance(self.preprocessing.resize_size, tuple) or (new_height, new_width) != (height, width):
            images = TF.resize(images, [new_height, new_width], antialias=True)
        if tuple(images.shape[-2:]) != (size, size):
            check_pixels(*images.shape[-2:][::-1], (max(new_width, size), max(new_height, size)))
            images = TF.center_crop(images, [size, size])
        return images

    def _flips(self, batch: int, generator: torch.Generator | None, draw: _FlipDraw) -> torch.Tensor:
        """Which images to mirror (bool, on the CPU)."""
        if self.flip == "none":
            return torch.zeros(batch, dtype=torch.bool)
        if self.flip == "alternate":
            if draw.indices is None:
                raise ResnetsError("flip='alternate' needs each image's data-set index: pass indices=")
            return alternating_flips(draw.indices.cpu(), draw.epoch, draw.seed)
        return torch.rand(batch, generator=generator) < self.hflip

    def _pad_crop_flip(self, images: torch.Tensor, generator: torch.Generator | None,
                       draw: _FlipDraw) -> torch.Tensor:
        """Pad (zeros or reflection), then one random crop and flip per image, as a single ``gather``."""
        batch, channels, height, width = images.shape
        size, pad = self.img_size, self.padding
        if height + 2 * pad < size or width + 2 * pad < size:
            raise ResnetsError(f"cannot crop {size}x{size} from {height}x{width} images padded by {pad}")
        if self.pad_mode == "reflect" and pad >= min(height, width):
            raise ResnetsError(f"reflect padding by {pad} needs images larger than {pad} pixels a side, "
                               f"got {height}x{width}")
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode=self.pad_mode) if pad else images
        padded_width = width + 2 * pad
        top = torch.randint(0, height + 2 * pad - size + 1, (batch,), generator=generator)
        left = torch.randint(0, padded_width - size + 1, (batch,), generator=generator)
        steps = torch.arange(size)
        cols = torch.where(self._flips(batch, generator, draw)[:, None], size - 1 - steps, steps) + left[:, None]
        rows = top[:, None] + steps
        flat = (rows[:, :, None] * padded_width + cols[:, None, :]).view(batch, 1, size * size)
        flat = flat.to(images.device).expand(batch, channels, size * size)
        picked = padded.reshape(batch, channels, -1).gather(2, flat)
        return picked.view(batch, channels, size, size)

    def _resized_crop_flip(self, images: torch.Tensor, generator: torch.Generator | None,
                           draw: _FlipDraw) -> torch.Tensor:
        """torchvision's RandomResizedCrop box sampling, vectorised; boxes resampled by roi_align."""
        batch, _, height, width = images.shape
        top, left, h, w = _random_resized_boxes(batch, height, width, self.scale, self.ratio, generator)
        boxes = torch.stack([torch.arange(batch), left, top, left + w, top + h], dim=1).to(torch.float32)
        out = roi_align(images.to(torch.float32), boxes.to(images.device), output_size=self.img_size,
                        spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flips = self._flips(batch, generator, draw).to(images.device)
        return torch.where(flips[:, None, None, None], out.flip(-1), out)


class _FlipDraw(NamedTuple):
    """What the alternating flip reads: each image's data-set index, the epoch and the seed."""

    indices: torch.Tensor | None
    epoch: int
    seed: int


def alternating_flips(indices: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
    """Whether to mirror each image (bool, same shape as ``indices``) under the alternating flip.

    Keller Jordan, airbench (2024), "alternating flip": rather than a fresh coin per image per
    epoch, image i is mirrored in epoch e iff ``b(i) XOR (e % 2)``, so every image is seen both
    ways in every pair of epochs (random flips repeat a view in about half of the pairs). ``b(i)``
    is a fixed pseudo-random bit of (seed, i), an integer hash of the index, so it needs no state
    (no data-set size, nothing to save for a resumed run).
    """
    key = _hash32(_hash32(torch.tensor(seed & _MASK32)) ^ ((seed >> 32) & _MASK32))
    bits = _hash32(_hash32(indices.to(torch.int64) & _MASK32) ^ key) & 1
    return (bits ^ (int(epoch) % 2)).to(torch.bool)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (Thomas Mueller's ``hash32``) in int64, kept below 2**59 so no overflow."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


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
