"""The one preprocessing record: its geometry equals torchvision's Resize + CenterCrop, its
normalisation the written-out formula, and a record from a file is checked before use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from resnets import ResnetsError
from resnets.preprocessing import Preprocessing


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (256, 256), (100, 50), (40, 30)])
@pytest.mark.parametrize("resize,crop,interpolation", [(232, 224, "bilinear"), (64, 56, "bicubic"),
                                                       ((60, 90), 56, "nearest"), (48, 64, "bilinear")])
def test_resize_crop_is_torchvisions_resize_and_center_crop(size, resize, crop, interpolation):
    record = Preprocessing(crop, resize, interpolation)
    image = photo(*size)
    theirs = v2.Compose([v2.Resize(list(resize) if isinstance(resize, tuple) else resize,
                                   interpolation=v2.InterpolationMode(interpolation)), v2.CenterCrop(crop),
                         v2.PILToTensor()])(image)
    assert torch.equal(record.to_uint8(image), theirs)


def test_crop_box_is_where_the_crop_comes_from():
    record = Preprocessing(56, 64)
    left, top, right, bottom = record.crop_box(300, 200)
    assert (right - left, bottom - top) == pytest.approx((56 * 200 / 64, 56 * 200 / 64))
    assert (left + right) / 2 == pytest.approx(150, abs=2) and (top + bottom) / 2 == pytest.approx(100, abs=2)


def test_normalize_follows_channel_order_and_pixel_range():
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    keras_v1 = Preprocessing(4, 4, mean=(103.939, 116.779, 123.68), std=(1, 1, 1), channel_order="BGR",
                             pixel_range=255)
    expected = pixels.float().flip(1) - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    assert torch.allclose(keras_v1.normalize(pixels), expected, atol=1e-4)
    torchvision_way = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(pixels.float() / 255)
    assert torch.allclose(Preprocessing(4, 4).normalize(pixels), torchvision_way, atol=1e-6)


def test_records_of_earlier_files_are_read():
    old_convert = {"resize_size": [224, 224], "crop_size": 224, "interpolation": "nearest",
                   "mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "RGB", "pixel_range": 1.0}
    assert Preprocessing.from_dict(old_convert) == Preprocessing(224, (224, 224), "nearest", (0.5,) * 3, (0.5,) * 3)
    old_train = {"img_size": 32, "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2], "augment": "cifar"}
    assert Preprocessing.from_dict(old_train) == Preprocessing(32, 32, mean=(0.4,) * 3, std=(0.2,) * 3)
    record = Preprocessing(224, (240, 260), "bicubic", channel_order="BGR", pixel_range=255)
    assert Preprocessing.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("bad", [{"input_size": 0}, {"input_size": 10**6}, {"input_size": 2.5},
                                 {"resize_size": [1, 2, 3]}, {"interpolation": "magic"},
                                 {"channel_order": "GBR"}, {"mean": [0, 0]}, {"std": [1, 0, 1]},
                                 {"mean": [float("nan"), 0, 0]}, {"pixel_range": float("inf")},
                                 {"pixel_range": -1}])
def test_bad_records_are_refused_in_one_line(bad):
    with pytest.raises(ResnetsError) as error:
        Preprocessing.from_dict({"input_size": 224, "resize_size": 256, **bad})
    assert "\n" not in str(error.value)
