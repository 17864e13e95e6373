"""BatchAugment against torchvision's transforms, and preset_for_model."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF

from resnets.data import BatchAugment, preset_for_model
from resnets.errors import ResnetsError
from resnets.models.registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def batch(n=6, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def torchvision_normalise(images):
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))])(images)


def test_no_crop_no_flip_equals_torchvision_normalize():
    images = batch()
    expected = torchvision_normalise(images)
    for augment in (BatchAugment("cifar", 32, MEAN, STD, train=True, padding=0, hflip=0.0),
                    BatchAugment("cifar", 32, MEAN, STD, train=False),
                    BatchAugment("none", 32, MEAN, STD, train=True),
                    BatchAugment("imagenet", 32, MEAN, STD, train=True, scale=(1, 1), ratio=(1, 1), hflip=0.0)):
        out = augment(images)
        assert out.dtype == torch.float32 and out.shape == (6, 3, 32, 32)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_cifar_train_is_a_padded_crop_and_flip_of_each_image():
    images = batch(n=16)
    out = BatchAugment("cifar", 32, MEAN, STD, train=True)(images, torch.Generator().manual_seed(1))
    padded = torchvision_normalise(TF.pad(images, [4]))  # zero padding, normalised like the image
    flipped = 0
    for k in range(len(images)):
        matches = [(top, left, flip) for top, left, flip in itertools.product(range(9), range(9), (False, True))
                   if torch.allclose(out[k], _crop(padded[k], top, left, flip), atol=1e-5)]
        assert len(matches) >= 1, f"image {k} is no crop of its padded source"
        flipped += matches[0][2]
    assert 0 < flipped < len(images)


def _crop(image, top, left, flip):
    crop = TF.crop(image, top, left, 32, 32)
    return TF.horizontal_flip(crop) if flip else crop


def test_cifar_train_is_deterministic_in_the_generator():
    augment = BatchAugment("cifar", 32, MEAN, STD)
    images = batch()
    first = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("size, img_size", [((40, 48), 28), ((32, 32), 32), ((64, 50), 24)])
def test_imagenet_eval_equals_torchvision_resize_center_crop(size, img_size):
    images = batch(4, *size)
    expected = torch.stack([v2.Compose([v2.Resize(int(img_size / 0.875), antialias=True), v2.CenterCrop(img_size),
                                        v2.ToDtype(torch.float32, scale=True),
                                        v2.Normalize(list(MEAN), list(STD))])(image) for image in images])
    out = BatchAugment("imagenet", img_size, MEAN, STD, train=False)(images)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_imagenet_train_crops_are_resized_regions():
    images = batch(32, 40, 40)
    out = BatchAugment("imagenet", 16, MEAN, STD)(images, torch.Generator().manual_seed(0))
    assert out.shape == (32, 3, 16, 16)
    low, high = torchvision_normalise(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2))[:, 0].T
    assert (out >= low.view(1, 3, 1, 1) - 1e-5).all() and (out <= high.view(1, 3, 1, 1) + 1e-5).all()
    assert out.std(dim=0).mean() > 0.1  # images differ: per-image crops, not one crop for the batch


def test_random_resized_boxes_follow_torchvision_rules():
    from resnets.data.augment import _random_resized_boxes

    top, left, h, w = _random_resized_boxes(4000, 60, 90, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 90).all()
    area = (h * w).float() / (60 * 90)
    aspect = w.float() / h.float()
    assert area.min() > 0.06 and area.max() <= 1.0 and aspect.min() > 0.7 and aspect.max() < 1.4
    # the same distribution as torchvision's sampler (box area mean over many draws)
    torch.manual_seed(0)
    reference = torch.tensor([v2.RandomResizedCrop.get_params(torch.empty(3, 60, 90), [0.08, 1.0], [3 / 4, 4 / 3])[2:]
                              for _ in range(4000)]).float()
    reference_area = (reference[:, 0] * reference[:, 1]) / (60 * 90)
    assert abs(area.mean() - reference_area.mean()) < 0.02
    # an image too thin for any box falls back to the centre crop of the largest allowed ratio
    top, left, h, w = _random_resized_boxes(3, 10, 100, (0.9, 1.0), (3 / 4, 4 / 3), None)
    assert h.tolist() == [10] * 3 and w.tolist() == [13] * 3 and left.tolist() == [43] * 3


def test_bad_arguments_are_user_errors():
    with pytest.raises(ResnetsError, match="unknown augmentation preset"):
        BatchAugment("autoaugment")
    with pytest.raises(ResnetsError, match="uint8"):
        BatchAugment("cifar", 32)(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ResnetsError, match="cannot crop 64x64"):
        BatchAugment("cifar", 64)(batch())


def test_preset_for_model():
    assert preset_for_model("resnet20") == (CIFAR_MEAN, CIFAR_STD, 32, "cifar")
    assert preset_for_model("resnet50") == (IMAGENET_MEAN, IMAGENET_STD, 224, "imagenet")
    with pytest.raises(ResnetsError, match="unknown model"):
        preset_for_model("resnet51")
