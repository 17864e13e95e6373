"""Training that streams images from disk each epoch (data sets too large to decode into memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _train_fixtures import assert_resume_is_bitwise, tiny_config, write_folder_dataset
from resnets.data import BadImageWarning
from resnets.train import train
from resnets.train.inputs import InMemoryData, StreamingData, open_training_data


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


def test_streams_only_when_the_decoded_set_would_not_fit(folder_data):
    small = open_training_data(str(folder_data), 16, None, 0, 1, stream=None, progress=False)
    huge = open_training_data(str(folder_data), 20_000, None, 0, 1, stream=None, progress=False)  # 29 GB decoded
    forced = open_training_data(str(folder_data), 16, None, 0, 1, stream=True, progress=False)
    assert isinstance(small, InMemoryData) and isinstance(huge, StreamingData) and isinstance(forced, StreamingData)
    assert huge.class_names == small.class_names and len(huge.train) == 24 and len(huge.val) == 12


@pytest.mark.parametrize("workers, resume_workers", [(0, 2), (2, 0)])
def test_streamed_resume_reaches_the_same_weights(folder_data, tmp_path, workers, resume_workers):
    """Augmentation is seeded per image: resuming with another --workers changes nothing."""
    options = dict(data=str(folder_data), stream=True, workers=workers, img_size=16, augment="cifar",
                   epochs=3, sched="onecycle")
    full = assert_resume_is_bitwise(tmp_path, options, resume_workers)
    # the augmentation differs between epochs (the seed includes the epoch): losses are not replayed
    assert len({round(r["train_loss"], 6) for r in full.history}) == 3


def test_streaming_and_memory_see_the_same_validation_images(folder_data, tmp_path):
    """Same model, same val split: the streamed val loader must score exactly as the decoded one."""
    # frozen backbone (BatchNorm statistics kept) and no feature cache: the val pass runs on images
    common = dict(data=str(folder_data), img_size=16, epochs=1, lr=1e-9, augment="none", freeze="backbone",
                  feature_cache=False)
    streamed = train(tiny_config(tmp_path / "s", stream=True, workers=0, **common))
    decoded = train(tiny_config(tmp_path / "m", stream=False, **common))
    assert streamed.history[0]["val_top1"] == pytest.approx(decoded.history[0]["val_top1"])
    assert streamed.history[0]["val_loss"] == pytest.approx(decoded.history[0]["val_loss"], abs=1e-5)


def test_streaming_skips_unreadable_files_and_caches_features(tmp_path):
    data = write_folder_dataset(tmp_path / "data", {"train": 8, "val": 4})
    (data / "train" / "class0" / "broken.png").write_bytes(b"not an image")
    from _train_fixtures import TINY
    from resnets import create_model
    from resnets.weights import save_weights

    pre = save_weights(tmp_path / "pre.safetensors", create_model("resnet20", num_classes=4, **TINY))
    config = tiny_config(tmp_path / "run", model=None, weights=str(pre), freeze="backbone", data=str(data),
                         stream=True, workers=0, img_size=16, epochs=2)
    with pytest.warns(BadImageWarning, match="broken.png"):
        result = train(config)
    assert result.used_feature_cache and len(result.history) == 2


@pytest.mark.parametrize("option", [{"flip": "alternate"}, {"translate": 2}, {"pad_mode": "reflect"},
                                    {"patch_whitening": True}])
def test_in_memory_techniques_are_refused_when_streaming(folder_data, tmp_path, option):
    """The fast-training augmentations and whitening act on decoded images; streamed they would
    be ignored without a word, so they are refused in one line."""
    from resnets.errors import ResnetsError

    with pytest.raises(ResnetsError, match="drop --stream") as error:
        train(tiny_config(tmp_path / "run", data=str(folder_data), stream=True, workers=0, img_size=16, **option))
    assert "\n" not in str(error.value)
