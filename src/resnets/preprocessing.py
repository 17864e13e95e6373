"""How a model wants its input: the one record, and the one place that applies it.

Every model carries a :class:`Preprocessing` (``model.preprocessing``, as timm's models carry a
``pretrained_cfg``); every weights file stores it; every command that feeds images to a model
(training's validation, ``evaluate``, ``predict``, ``export``'s ONNX metadata, ``summary``,
``bench``, ``explain``, ``serve``) turns it into pixels through the methods below and nothing else.

Feeding an image is two steps, kept apart so that a data set can be decoded once and
normalised per batch:

1. :meth:`Preprocessing.resize_crop` (PIL image -> PIL image of ``input_size``): resize
   (``resize_size`` an int: the shorter side, aspect kept; ``[height, width]``: exactly that,
   as Keras' ``load_img(target_size=...)`` does), then a centre crop of ``input_size``.
2. :meth:`Preprocessing.normalize` (uint8 ``(B, 3, H, W)`` -> float32): pixels scaled to
   ``[0, pixel_range]``, reordered to ``channel_order``, then ``(x - mean) / std`` with ``mean``
   and ``std`` in those units and that order. Keras' caffe-style ResNet50, for one, is
   ``pixel_range=255``, ``BGR``, ``mean=[103.939, 116.779, 123.68]``, ``std=[1, 1, 1]``.

:meth:`Preprocessing.transform` composes both for one image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import ResnetsError


class PixelBudgetError(ResnetsError):
    """An image, or what a resize or crop would make of it, over :data:`MAX_PIXELS`."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CHANNEL_ORDERS = ("RGB", "BGR")
EVAL_CROP_FRACTION = 0.875  # the usual resize of 1/0.875 of the crop (256 for 224)
MAX_INPUT_SIZE = 8192
MAX_CHANNELS = 64
# The decode budget: no image is decoded, resized or cropped into more pixels than this (128 Mi
# pixels, 384 MiB of RGB: a 100-megapixel photo, or a 2:1 image resized to 8192 on its shorter side).
MAX_PIXELS = 2**27
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's convert("L"): RGB pixels for a one-channel model


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: geometry (resize, crop, interpolation) and pixel values."""

    input_size: int = 224
    resize_size: int | tuple[int, int] = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"
    pixel_range: float = 1.0

    def __post_init__(self) -> None:
        _check_size("input_size", self.input_size)
        resize = self.resize_size
        if isinstance(resize, (list, tuple)):
            if len(resize) != 2:
                raise ResnetsError(f"preprocessing resize_size must be one size or [height, width], got {resize!r}")
            for value in resize:
                _check_size("resize_size", value)
            object.__setattr__(self, "resize_size", (int(resize[0]), int(resize[1])))
        else:
            _check_size("resize_size", resize)
        if self.interpolation not in INTERPOLATIONS:
            raise ResnetsError(f"preprocessing interpolation {self.interpolation!r} is not one of "
                               f"{', '.join(INTERPOLATIONS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ResnetsError(f"preprocessing channel_order {self.channel_order!r} is not RGB or BGR")
        object.__setattr__(self, "mean", _finite_values("mean", self.mean))
        object.__setattr__(self, "std", _finite_values("std", self.std))
        if len(self.mean) != len(self.std) or (self.channel_order == "BGR" and len(self.mean) != 3):
            raise ResnetsError(f"preprocessing mean and std must have one value per input channel (3 for BGR), "
                               f"got {len(self.mean)} and {len(self.std)}")
        if min(self.std) <= 0:
            raise ResnetsError(f"preprocessing std must be positive, got {list(self.std)}")
        if not (isinstance(self.pixel_range, (int, float)) and math.isfinite(self.pixel_range)
                and self.pixel_range > 0):
            raise ResnetsError(f"preprocessing pixel_range must be a positive number, got {self.pixel_range!r}")
        object.__setattr__(self, "pixel_range", float(self.pixel_range))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def for_input_size(cls, input_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, crop_fraction: float | None = None,
                       **fields: Any) -> "Preprocessing":
        """Resize to ``input_size / crop_fraction`` (no crop margin when None), centre-crop ``input_size``."""
        resize = input_size if crop_fraction is None else math.floor(input_size / crop_fraction)
        return cls(input_size=input_size, resize_size=resize, mean=tuple(mean), std=tuple(std), **fields)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Preprocessing":
        """A record as stored in a weights file; files of earlier versions are read too.

        Earlier files wrote ``crop_size`` for ``input_size``, and training runs wrote
        ``{"img_size", "mean", "std", "augment"}`` (images resized to ``img_size``, no margin).
        """
        if not isinstance(record, Mapping):
            raise ResnetsError(f"the preprocessing record must be a JSON object, got {type(record).__name__}")
        data = dict(record)
        if "input_size" not in data:
            size = data.get("crop_size", data.get("img_size"))
            if size is None:
                raise ResnetsError("the preprocessing record has no input_size")
            data["input_size"] = size
            data.setdefault("resize_size", size)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("resize_size"), list):
            values["resize_size"] = tuple(values["resize_size"])
        try:
            return cls(**values)
        except TypeError as error:
            raise ResnetsError(f"invalid preprocessing record ({error})") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists, not tuples)."""
        record = dataclasses.asdict(self)
        for key in ("mean", "std"):
            record[key] = list(record[key])
        if isinstance(self.resize_size, tuple):
            record["resize_size"] = list(self.resize_size)
        return record

    def replace(self, **changes: Any) -> "Preprocessing":
        return dataclasses.replace(self, **changes)

    # -- application -------------------------------------------------------------------------
    def resize_crop(self, image: Any) -> Any:
        """PIL image -> PIL image of ``input_size`` x ``input_size`` (resize, then centre crop)."""
        from PIL import Image

        resample = getattr(Image.Resampling, self.interpolation.upper())
        new_size = self.resized_size(*image.size)
        if new_size != image.size:
            image = image.resize(new_size, resample)
        return _center_crop(image, self.input_size)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width`` x ``height`` image after the resize step; both sizes within
        the decode budget (:func:`check_pixels`), checked before anything is allocated."""
        check_pixels(width, height)
        if isinstance(self.resize_size, tuple):
            size = self.resize_size[1], self.resize_size[0]
        elif width <= height:  # the shorter side to resize_size; the other rounded down, as torchvision's Resize(int)
            size = self.resize_size, int(self.resize_size * height / width)
        else:
            size = int(self.resize_size * width / height), self.resize_size
        check_pixels(width, height, size)
        return size

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Where the model's input lies in a ``width`` x ``height`` photo: (left, top, right,
        bottom) in the photo's pixels (past its edges where the crop had to pad)."""
        new_width, new_height = self.resized_size(width, height)
        left, top = _crop_offset(new_width, self.input_size), _crop_offset(new_height, self.input_size)
        sx, sy = width / new_width, height / new_height
        size = self.input_size
        return left * sx, top * sy, (left + size) * sx, (top + size) * sy

    def keeps(self, height: int, width: int) -> bool:
        """Whether :meth:`resize_crop` returns an image of this size unchanged."""
        square = height == width == self.input_size
        if isinstance(self.resize_size, tuple):
            return square and self.resize_size == (height, width)
        return square and self.resize_size == height

    def to_uint8(self, image: Any) -> torch.Tensor:
        """PIL RGB image -> uint8 (3, input_size, input_size) after :meth:`resize_crop`."""
        array = np.asarray(self.resize_crop(image), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(B, 3, H, W)`` (or ``(3, H, W)``) -> the float32 input the model expects.

        A record of one channel (a model with ``in_chans=1``) takes RGB pixels as their luma; one
        of N channels takes uint8 images of N channels."""
        device = images_u8.device
        shape = (1, -1, 1, 1) if images_u8.ndim == 4 else (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(shape)
        x = images_u8.to(torch.float32) * (self.pixel_range / 255.0)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        if len(self.mean) == 1 and x.shape[-3] == 3:
            x = (x * torch.tensor(LUMA, device=device).view(shape)).sum(-3, keepdim=True)
        return (x - mean) / std

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised float32 (3, input_size, input_size)."""
        return lambda image: self.normalize(self.to_uint8(image))

    def describe(self) -> str:
        """One line for model cards and logs."""
        resize = (f"{self.resize_size[0]}x{self.resize_size[1]}" if isinstance(self.resize_size, tuple)
                  else f"shorter side {self.resize_size}")
        scale = "0-255" if self.pixel_range == 255 else f"0-{self.pixel_range:g}"
        return (f"resize {resize} ({self.interpolation}), centre crop {self.input_size}, {self.channel_order} "
                f"{scale}, mean {[round(m, 4) for m in self.mean]}, std {[round(s, 4) for s in self.std]}")


def channels_preprocessing(record: Preprocessing, in_chans: int) -> Preprocessing:
    """The record of an RGB model adapted to ``in_chans`` channels: one channel takes the mean of
    the three means and stds (RGB images are fed as their luma); N channels repeat them cyclically,
    as the filters are. The channel order no longer applies (the values follow the filters)."""
    if len(record.mean) == in_chans:
        return record
    if in_chans == 1:
        mean, std = (sum(record.mean) / 3,), (sum(record.std) / 3,)
    else:
        mean, std = (tuple(values[i % 3] for i in range(in_chans)) for values in (record.mean, record.std))
    return record.replace(mean=mean, std=std, channel_order="RGB")


def _center_crop(image: Any, size: int) -> Any:
    """Centre crop as torchvision's ``CenterCrop`` (rounded offsets; zero-padded if too small)."""
    from PIL import Image

    width, height = image.size
    if (width, height) == (size, size):
        return image
    check_pixels(width, height, (max(width, size), max(height, size)))
    left, top = _crop_offset(width, size), _crop_offset(height, size)
    if width < size or height < size:  # zero padding around, as CenterCrop pads
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, (max(0, -left) if width < size else 0, max(0, -top) if height < size else 0))
        image = padded
        left, top = max(left, 0), max(top, 0)
    return image.crop((left, top, left + size, top + size))


def check_pixels(width: int, height: int, made: tuple[int, int] | None = None) -> None:
    """The decode budget, the one check of every image size: a ``width`` x ``height`` image, and
    the ``made`` (width, height) a resize or crop would make of it, hold at most :data:`MAX_PIXELS`
    pixels; :class:`PixelBudgetError` otherwise, before anything is allocated."""
    if width < 1 or height < 1:
        raise PixelBudgetError(f"image of {width}x{height} pixels is empty")
    if width * height > MAX_PIXELS:
        raise PixelBudgetError(f"image of {width}x{height} pixels is over the limit of {MAX_PIXELS} pixels")
    if made is not None and made[0] * made[1] > MAX_PIXELS:
        raise PixelBudgetError(f"image of {width}x{height} pixels would become {made[0]}x{made[1]}, "
                               f"over the limit of {MAX_PIXELS} pixels")


def _crop_offset(side: int, size: int) -> int:
    """Start of a centred crop of ``size`` along a side of ``side`` pixels (negative: padded)."""
    padded = max(side, size)
    return int(round((padded - size) / 2.0)) - (padded - side) // 2


def _check_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_INPUT_SIZE:
        raise ResnetsError(f"preprocessing {name} must be an integer in 1..{MAX_INPUT_SIZE}, got {value!r}")


def _finite_values(name: str, values: Any) -> tuple[float, ...]:
    """One finite number per input channel (3 for RGB; 1..MAX_CHANNELS)."""
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ResnetsError(f"preprocessing {name} must be numbers (one per channel), got {values!r}") from None
    if not 1 <= len(floats) <= MAX_CHANNELS or not all(math.isfinite(v) for v in floats):
        raise ResnetsError(f"preprocessing {name} must be 1 to {MAX_CHANNELS} finite numbers, got {list(floats)}")
    return floats
