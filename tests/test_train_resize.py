"""Progressive resizing (schedule, resampling against Pillow, the sizes a run trains at) and
validation every N epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _train_fixtures import tensor_data, tiny_config
from resnets.errors import ResnetsError
from resnets.train import train
from resnets.train.checkpoint import load_state
from resnets.train.resize import ResizeSchedule, resize_batch
from resnets.weights import load_weights_file


def test_schedule_holds_ramps_then_finetunes_at_full_size():
    schedule = ResizeSchedule(32, initial_scale=0.5, delay=0.3, finetune=0.2)
    # epochs 0-2 held at 16; 3-7 ramp linearly (scales 0.5 ... 0.9, sizes rounded down to 4 px); 8-9 at 32
    assert schedule.sizes(10) == [16, 16, 16, 16, 16, 20, 24, 28, 32, 32]
    # Composer's defaults at 224 px: scales 0.5, 0.5, 0.667, 0.833 over epochs 5-7
    assert ResizeSchedule(224, 0.5, 0.5, 0.2).sizes(10) == [112] * 6 + [148, 184, 224, 224]


def test_schedule_off_and_degenerate_cases():
    assert ResizeSchedule(32).sizes(5) == [32] * 5 and not ResizeSchedule(32).enabled
    assert ResizeSchedule(32, 0.5, delay=0.0, finetune=1.0).sizes(3) == [32, 32, 32]
    assert ResizeSchedule(32, 0.5, delay=1.0, finetune=0.0).sizes(3) == [16, 16, 16]
    assert ResizeSchedule(8, 0.1, 0.5, 0.2).size_at(0, 10) == 4  # never below one increment
    for bad in (dict(initial_scale=0.0), dict(initial_scale=1.5), dict(delay=0.7, finetune=0.5),
                dict(delay=-0.1)):
        with pytest.raises(ResnetsError):
            ResizeSchedule(32, **{"initial_scale": 0.5, **bad})


@pytest.mark.parametrize("size", [16, 24, 11])
def test_resize_batch_matches_pillow_antialiased_bilinear(size):
    rng = np.random.default_rng(0)
    planes = rng.uniform(0, 255, size=(3, 32, 32)).astype(np.float32)
    ours = resize_batch(torch.from_numpy(planes)[None], size)[0].numpy()
    pillow = np.stack([np.asarray(Image.fromarray(p, mode="F").resize((size, size), Image.BILINEAR))
                       for p in planes])
    assert ours.shape == (3, size, size)
    np.testing.assert_allclose(ours, pillow, atol=1e-2)
    same = torch.rand(2, 3, 16, 16)
    assert resize_batch(same, 16) is same


def test_a_run_trains_at_the_scheduled_sizes_and_validates_at_full_size(tmp_path, monkeypatch):
    from resnets.train import engine

    seen: list[int] = []

    def spy(images, size):
        out = resize_batch(images, size)
        seen.append(out.shape[-1])
        return out

    monkeypatch.setattr(engine, "resize_batch", spy)
    options = dict(epochs=4, augment="cifar", progressive_resize=0.5, progressive_delay=0.25,
                   progressive_finetune=0.25, val_every=2)
    result = train(tiny_config(tmp_path / "run", **options), data=tensor_data(size=32))
    per_epoch = 48 // 8
    assert len(seen) == 4 * per_epoch  # every training batch, no validation batch
    assert seen[::per_epoch] == [16, 16, 24, 32] == [r["img_size"] for r in result.history]
    # validation every 2 epochs, at the full size the weights file records
    assert ["val_top1" in r for r in result.history] == [False, True, False, True]
    record = load_weights_file(result.weights)
    assert record.preprocessing.input_size == 32


def test_progressive_resume_reaches_the_same_weights(tmp_path):
    data = tensor_data(size=32)
    options = dict(epochs=4, augment="cifar", progressive_resize=0.5, progressive_delay=0.25,
                   progressive_finetune=0.25, sched="onecycle")
    train(tiny_config(tmp_path / "full", **options), data=data)
    train(tiny_config(tmp_path / "split", **options), data=data, stop_after=2)
    train(tiny_config(tmp_path / "ignored", resume=str(tmp_path / "split")), data=data)
    a, b = load_state(tmp_path / "full"), load_state(tmp_path / "split")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_published_weights_are_the_best_validated_epoch(tmp_path):
    result = train(tiny_config(tmp_path / "run", epochs=3, val_every=2, lr=0.2), data=tensor_data())
    validated = [r for r in result.history if "val_top1" in r]
    assert [r["epoch"] for r in validated] == [2, 3]
    best = max(validated, key=lambda r: r["val_top1"])
    assert load_weights_file(result.weights).extra["epoch"] == best["epoch"] - 1


def test_progressive_resize_with_cached_features_is_refused(tmp_path):
    from resnets import create_model
    from resnets.weights import save_weights
    from _train_fixtures import TINY

    pre = save_weights(tmp_path / "pre.safetensors", create_model("resnet20", num_classes=4, **TINY))
    with pytest.raises(ResnetsError, match="cached features"):
        train(tiny_config(tmp_path / "run", model=None, weights=str(pre), freeze="backbone",
                          progressive_resize=0.5), data=tensor_data())
