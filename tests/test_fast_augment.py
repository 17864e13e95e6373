"""BatchAugment's alternating flip and reflect padding (airbench), and its random path unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from resnets.data import BatchAugment, TensorLoader
from resnets.data.augment import alternating_flips
from resnets.errors import ResnetsError

IDENTITY = dict(mean=(0.0,) * 3, std=(1 / 255,) * 3)  # normalise to the pixel values themselves


def asymmetric(n: int, side: int = 4) -> torch.Tensor:
    """n uint8 images, none equal to its mirror (columns 0..side-1 differ), each different."""
    cols = torch.arange(side).view(1, 1, 1, side) * 20
    rows = torch.arange(side).view(1, 1, side, 1) * 3
    offset = (torch.arange(n) % 7).view(n, 1, 1, 1)
    return (cols + rows + offset).expand(n, 3, side, side).to(torch.uint8).contiguous()


def flipped_mask(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Which outputs are the mirror of their image; fails unless each is the image or its mirror."""
    plain = images.float()
    mirror = torch.isclose(out, plain.flip(-1), atol=1e-3).flatten(1).all(1)
    same = torch.isclose(out, plain, atol=1e-3).flatten(1).all(1)
    assert bool((mirror ^ same).all()), "an output is neither its image nor its mirror"
    return mirror


def alternating(preset: str, side: int = 4, **options) -> BatchAugment:
    if preset == "imagenet":
        options.update(scale=(1, 1), ratio=(1, 1))
    else:
        options.update(padding=0)
    return BatchAugment(preset, side, train=True, flip="alternate", **IDENTITY, **options)


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_alternating_flip_mirrors_each_image_every_other_epoch(preset):
    images, indices = asymmetric(40), torch.arange(100, 140)
    augment = alternating(preset)
    masks = [flipped_mask(augment(images, indices=indices, epoch=e, seed=3), images) for e in range(4)]
    for e in range(2):
        assert bool((masks[e] != masks[e + 1]).all()), "some image kept its side from one epoch to the next"
        assert torch.equal(masks[e], masks[e + 2])
    assert torch.equal(masks[0], alternating_flips(indices, 0, 3))


def test_alternating_flip_is_a_fair_fixed_bit_of_seed_and_index():
    images, indices = asymmetric(1000, side=2), torch.arange(1000)
    augment = alternating("cifar", side=2)
    first = flipped_mask(augment(images, indices=indices, epoch=0, seed=7), images)
    assert 400 < int(first.sum()) < 600
    again = flipped_mask(augment(images, torch.Generator().manual_seed(99), indices=indices, epoch=0, seed=7), images)
    assert torch.equal(first, again)  # no generator involved: the same bit however often it is asked
    other_seed = flipped_mask(augment(images, indices=indices, epoch=0, seed=8), images)
    assert 300 < int((first != other_seed).sum()) < 700
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(alternating_flips(indices[shuffled], 0, 7), first[shuffled])  # per index, not per slot


def test_alternating_flip_needs_indices_and_other_flip_errors():
    images = asymmetric(4)
    with pytest.raises(ResnetsError, match="indices"):
        alternating("cifar")(images)
    with pytest.raises(ResnetsError, match="indices"):
        alternating("cifar")(images, indices=torch.arange(3))
    with pytest.raises(ResnetsError, match="flip"):
        BatchAugment("cifar", 4, flip="sometimes")
    with pytest.raises(ResnetsError, match="pad mode"):
        BatchAugment("cifar", 4, pad_mode="circular")
    never = BatchAugment("cifar", 4, train=True, padding=0, flip="none", **IDENTITY)
    for seed in range(5):
        assert not flipped_mask(never(images, torch.Generator().manual_seed(seed)), images).any()


def test_tensor_loader_passes_indices_epoch_and_seed():
    images = asymmetric(30)
    labels = torch.arange(30)  # the label is the item index
    augment = alternating("cifar")
    make = lambda: TensorLoader(images, labels, batch_size=8, augment=augment, seed=5)  # noqa: E731
    first = make()
    epochs = [[(x.clone(), y.clone()) for x, y in first] for _ in range(3)]  # epochs 0, 1, 2
    for epoch, batches in enumerate(epochs):
        for x, y in batches:
            assert torch.equal(flipped_mask(x, images[y]), alternating_flips(y, epoch, 5))
    resumed = make()
    resumed.set_epoch(2)
    for (x1, y1), (x2, y2) in zip(epochs[2], resumed):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_reflect_padding_reflects_the_border():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    whole = dict(padding=1, flip="none", **IDENTITY)  # a 6x6 crop of a 6x6 padded image: all of it
    out = BatchAugment("cifar", 6, train=True, pad_mode="reflect", **whole)(image)
    expected = torch.tensor([[5, 4, 5, 6, 7, 6],
                             [1, 0, 1, 2, 3, 2],
                             [5, 4, 5, 6, 7, 6],
                             [9, 8, 9, 10, 11, 10],
                             [13, 12, 13, 14, 15, 14],
                             [9, 8, 9, 10, 11, 10]], dtype=torch.float32)
    for channel in range(3):
        torch.testing.assert_close(out[0, channel], expected, rtol=0, atol=1e-3)
    zeros = BatchAugment("cifar", 6, train=True, **whole)(image)[0, 0]
    assert zeros[0].abs().max() < 1e-3 and torch.allclose(zeros[1:5, 1:5], expected[1:5, 1:5], atol=1e-3)
    with pytest.raises(ResnetsError, match="reflect"):
        BatchAugment("cifar", 4, train=True, padding=4, pad_mode="reflect")(image)


def test_random_flip_path_is_unchanged():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default = BatchAugment("cifar", 8, train=True, padding=2, **IDENTITY)
    explicit = BatchAugment("cifar", 8, train=True, padding=2, flip="random", pad_mode="constant", **IDENTITY)
    out = default(images, torch.Generator().manual_seed(4))
    with_indices = explicit(images, torch.Generator().manual_seed(4), indices=torch.arange(12), epoch=3, seed=9)
    assert torch.equal(out, with_indices)
    torch.testing.assert_close(out, _old_pad_crop_flip(images, 8, 2, torch.Generator().manual_seed(4)),
                               rtol=0, atol=1e-3)
    imagenet = dict(train=True, scale=(0.3, 1), **IDENTITY)
    torch.testing.assert_close(
        BatchAugment("imagenet", 8, **imagenet)(images, torch.Generator().manual_seed(4)),
        BatchAugment("imagenet", 8, flip="random", **imagenet)(images, torch.Generator().manual_seed(4),
                                                               indices=torch.arange(12), epoch=1),
        rtol=0, atol=0)


def _old_pad_crop_flip(images, size, pad, generator):
    """The cifar preset as it was: zero pad, then top, left and a flip coin per image from the generator."""
    batch = len(images)
    padded = TF.pad(images, [pad])
    top = torch.randint(0, images.shape[-2] + 2 * pad - size + 1, (batch,), generator=generator)
    left = torch.randint(0, images.shape[-1] + 2 * pad - size + 1, (batch,), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    crops = [TF.crop(padded[k], int(top[k]), int(left[k]), size, size) for k in range(batch)]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips)]).float()
