"""Augmentation policies (--augment-policy, --random-erasing, --color-jitter) and --aug-repeats:
one description, the same pixels in the in-memory and the streaming path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _train_fixtures import tiny_config, write_folder_dataset
from resnets.data import BatchAugment, TensorLoader, decode_to_memory, make_dataloader, open_dataset
from resnets.data.policy import POLICIES, AugmentPolicy
from resnets.data.sampling import EpochPlan
from resnets.errors import ResnetsError
from resnets.preprocessing import Preprocessing
from resnets.train import train
from resnets.train.checkpoint import load_state

RECORD = Preprocessing(input_size=16, resize_size=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 4}, size=16)


def _both_paths(folder: Path, policy: AugmentPolicy, epoch: int, repeats: int = 2):
    """Every batch of one epoch through the in-memory loader and the streaming loader, same plan."""
    dataset = open_dataset(str(folder / "train"))
    images, labels = decode_to_memory(dataset, size=(16, 16), workers=1, progress=False)
    plan = EpochPlan.of(labels, seed=5, repeats=repeats)
    memory = TensorLoader(images, labels, 6, augment=BatchAugment("none", RECORD), seed=5, plan=plan, policy=policy)
    stream = make_dataloader(dataset, "none", RECORD, train=True, batch_size=6, workers=0, seed=5, plan=plan,
                             policy=policy)
    memory.set_epoch(epoch)
    stream.sampler.set_epoch(epoch)
    stream.dataset.epoch = epoch
    return list(memory), list(stream)


@pytest.mark.parametrize("name", POLICIES)
def test_in_memory_and_streaming_paths_give_the_same_pixels(folder, name):
    policy = AugmentPolicy(name, random_erasing=0.5, color_jitter=0.3)
    memory, stream = _both_paths(folder, policy, epoch=1)
    assert len(memory) == len(stream) == 4  # 12 images x 2 repeats / 6
    for (xm, ym), (xs, ys) in zip(memory, stream):
        assert torch.equal(ym, ys)
        assert torch.equal(xm, xs)
    plain, _ = _both_paths(folder, AugmentPolicy(), epoch=1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(memory, plain))  # the policy changed pixels


def test_repeats_are_augmented_differently_and_epochs_differ(folder):
    policy = AugmentPolicy("trivialaugment", random_erasing=1.0)
    memory, _ = _both_paths(folder, policy, epoch=0)
    x = torch.cat([b[0] for b in memory])
    assert all(not torch.equal(x[i], x[i + 1]) for i in range(0, len(x), 2))  # the copies of an image differ
    again, _ = _both_paths(folder, policy, epoch=0)
    later, _ = _both_paths(folder, policy, epoch=1)
    assert torch.equal(x, torch.cat([b[0] for b in again]))
    assert not torch.equal(x, torch.cat([b[0] for b in later]))


def test_each_image_appears_repeats_times_per_epoch():
    plan = EpochPlan.of([0, 1, 2, 0, 1], seed=0, repeats=3)
    items = plan.order(4) % 5
    assert len(plan) == 15 and torch.bincount(items).tolist() == [3] * 5
    assert all(len(set(items[i:i + 3].tolist())) == 1 for i in range(0, 15, 3))  # copies side by side


def test_bad_policy_values():
    with pytest.raises(ResnetsError, match="--augment-policy"):
        AugmentPolicy("best")
    with pytest.raises(ResnetsError, match="--aug-repeats"):
        EpochPlan.of([0, 1], repeats=0)
    assert not AugmentPolicy() and AugmentPolicy(color_jitter=0.1)


@pytest.mark.parametrize("stream", [False, True])
def test_policy_run_resumes_bitwise(folder, tmp_path, stream, one_thread):
    options = dict(data=str(folder), stream=stream, workers=0, img_size=16, augment="cifar", epochs=2,
                   augment_policy="randaugment", random_erasing=0.25, aug_repeats=2, sampler="balanced")
    full = train(tiny_config(tmp_path / "full", **options))
    train(tiny_config(tmp_path / "split", **options), stop_after=1)
    resumed = train(tiny_config(tmp_path / "x", resume=str(tmp_path / "split")))
    a, b = load_state(tmp_path / "full")["model"], load_state(tmp_path / "split")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]
