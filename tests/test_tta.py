"""Test-time augmentation (resnets.metrics) against views built by hand, and through collect_logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnets.data import BatchAugment, TensorLoader
from resnets.errors import ResnetsError
from resnets.metrics import TTA_MODES, collect_logits, tta_logits, tta_views


def tiny_model() -> nn.Module:
    """A conv net whose logits depend on where things are (flattened, not pooled): neither shift-
    nor mirror-invariant, so every view counts."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def batch(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def reflect_pad_1(x: torch.Tensor) -> torch.Tensor:
    """One pixel of reflection on every side, by concatenating the second row/column outside the first."""
    x = torch.cat([x[..., 1:2, :], x, x[..., -2:-1, :]], dim=-2)
    return torch.cat([x[..., :, 1:2], x, x[..., :, -2:-1]], dim=-1)


@torch.no_grad()
def test_multicrop_is_airbenchs_weighting_of_six_views_built_by_hand():
    model, x = tiny_model(), batch()
    padded = reflect_pad_1(x)
    up_left, down_right = padded[..., 0:6, 0:6], padded[..., 2:8, 2:8]
    assert torch.equal(up_left[..., 1:, 1:], x[..., :-1, :-1])  # the content moved one pixel down-right
    views = [x, x.flip(-1), up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    logits = [model(v) for v in views]
    # airbench's level 2: 0.5 * mirror-mean(identity) + 0.5 * mean(mirror-mean(up-left), mirror-mean(down-right))
    expected = 0.5 * (logits[0] + logits[1]) / 2 + 0.5 * ((logits[2] + logits[3]) / 2 + (logits[4] + logits[5]) / 2) / 2
    torch.testing.assert_close(tta_logits(model, x, "multicrop"), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, torch.stack(logits).mean(0), atol=1e-4)  # not a plain mean
    assert not torch.allclose(expected, tta_logits(model, x, "flip"), atol=1e-4)  # translation mattered
    assert sorted(tta_views("multicrop")) == sorted(
        [(0, 0, False), (0, 0, True), (-1, -1, False), (-1, -1, True), (1, 1, False), (1, 1, True)])


@torch.no_grad()
def test_flip_and_none():
    model, x = tiny_model(), batch()
    torch.testing.assert_close(tta_logits(model, x, "flip"), (model(x) + model(x.flip(-1))) / 2)
    assert tta_views("flip") == [(0, 0, False), (0, 0, True)]
    assert torch.equal(tta_logits(model, x, None), model(x))
    assert not torch.allclose(tta_logits(model, x, "flip"), model(x), atol=1e-4)


def test_unknown_mode_raises():
    model, x = tiny_model(), batch()
    for call in (lambda: tta_views("five-crop"), lambda: tta_logits(model, x, "five-crop"),
                 lambda: collect_logits(model, [(x, torch.zeros(3))], tta="five-crop")):
        with pytest.raises(ResnetsError, match="flip, multicrop"):
            call()
    assert TTA_MODES == ("flip", "multicrop")


def test_collect_logits_multicrop_through_a_tensor_loader():
    model = tiny_model()
    images = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(10) % 5
    augment = BatchAugment("none", 6, (0.5,) * 3, (0.25,) * 3, train=False)
    loader = TensorLoader(images, labels, batch_size=4, shuffle=False, drop_last=False, augment=augment)
    logits, got_labels = collect_logits(model, loader, tta="multicrop")
    with torch.no_grad():
        expected = tta_logits(model, augment(images), "multicrop")
    assert logits.shape == (10, 5) and torch.equal(got_labels, labels)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    channels_last, _ = collect_logits(model, loader, channels_last=True, tta="multicrop")
    torch.testing.assert_close(channels_last, expected, rtol=1e-5, atol=1e-6)
    plain, _ = collect_logits(model, loader)
    assert not torch.allclose(plain, expected, atol=1e-4)


def test_evaluate_cli_accepts_the_modes(capsys):
    from resnets.cli import build_parser

    parser = build_parser()
    for mode in TTA_MODES:
        assert parser.parse_args(["evaluate", "m.safetensors", "--data", "d", "--tta", mode]).tta == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "m.safetensors", "--data", "d", "--tta", "five-crop"])
    assert "invalid choice" in capsys.readouterr().err
