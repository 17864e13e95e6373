"""How a model wants its input: recorded with its weights, turned into a transform on demand.

A preprocessing record is a plain dict (it lives in the JSON metadata of a weights file)::

    {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear",
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "channel_order": "RGB", "pixel_range": 1.0}

Pixels are first scaled to ``[0, pixel_range]`` and reordered to ``channel_order``; ``mean``
and ``std`` are in those units and that order. Keras' caffe-style ResNet50, for one, is
``pixel_range=255``, ``BGR``, ``mean=[103.939, 116.779, 123.68]``, ``std=[1, 1, 1]``.
``resize_size`` is an int (shorter side) or ``[height, width]`` (exact, no aspect kept).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..errors import ResnetsError


def make_preprocessing(resize_size: int | Sequence[int], crop_size: int, mean: Sequence[float],
                       std: Sequence[float], interpolation: str = "bilinear", channel_order: str = "RGB",
                       pixel_range: float = 1.0) -> dict[str, Any]:
    return {"resize_size": resize_size if isinstance(resize_size, int) else list(resize_size),
            "crop_size": crop_size, "interpolation": interpolation, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "channel_order": channel_order, "pixel_range": float(pixel_range)}


class _ReorderAndScale(torch.nn.Module):
    def __init__(self, pixel_range: float, bgr: bool) -> None:
        super().__init__()
        self.pixel_range, self.bgr = pixel_range, bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.pixel_range
        return x.flip(-3) if self.bgr else x


def build_transform(preprocessing: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """A torchvision transform taking a PIL image (or uint8 tensor) to the model's input tensor."""
    from torchvision.transforms import v2 as T  # torchvision is slow to import: only when used

    try:
        interpolation = T.InterpolationMode(preprocessing.get("interpolation", "bilinear"))
        order = preprocessing.get("channel_order", "RGB").upper()
        if order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order {order!r}")
        return T.Compose([  # resize a PIL image as PIL does, like torchvision's own presets
            T.Resize(preprocessing["resize_size"], interpolation=interpolation, antialias=True),
            T.CenterCrop(preprocessing["crop_size"]),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            _ReorderAndScale(float(preprocessing.get("pixel_range", 1.0)), order == "BGR"),
            T.Normalize(preprocessing["mean"], preprocessing["std"]),
        ])
    except (KeyError, ValueError) as error:
        raise ResnetsError(f"invalid preprocessing record ({error}); it needs resize_size, crop_size, "
                           "mean and std") from None
