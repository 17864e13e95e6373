"""TensorLoader determinism and sharding; make_dataloader from disk."""

from __future__ import annotations

import warnings

import pytest
import torch

from _data_helpers import make_tree
from resnets.data import BatchAugment, TensorLoader, make_dataloader, open_dataset, shard_indices
from resnets.errors import ResnetsError
from resnets.preprocessing import Preprocessing


def indexed(n=50):
    """Images whose every pixel is their index, labels equal to the index: batches can be traced."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return images, torch.arange(n)


def epoch_batches(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_pair_images_with_their_labels():
    images, labels = indexed()
    loader = TensorLoader(images, labels, batch_size=8, drop_last=False)
    batches = epoch_batches(loader)
    assert len(batches) == len(loader) == 7
    assert [len(y) for _, y in batches] == [8] * 6 + [2]
    for x, y in batches:
        assert x.dtype == torch.uint8 and torch.equal(x[:, 0, 0, 0].long(), y)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(50))
    assert len(TensorLoader(images, labels, batch_size=8, drop_last=True)) == 6


def test_same_seed_and_epoch_give_the_same_batches():
    images, labels = indexed()
    augment = BatchAugment("cifar", 4, (0.5,) * 3, (0.5,) * 3, padding=2)
    make = lambda seed: TensorLoader(images, labels, batch_size=8, augment=augment, seed=seed)  # noqa: E731
    first, resumed = make(0), make(0)
    epoch3 = epoch_batches(first, 3)
    for (x1, y1), (x2, y2) in zip(epoch3, epoch_batches(resumed, 3)):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)
    assert not torch.equal(
        torch.cat([y for _, y in epoch3]), torch.cat([y for _, y in epoch_batches(first, 4)])
    )
    assert not torch.equal(
        torch.cat([y for _, y in epoch3]), torch.cat([y for _, y in epoch_batches(make(1), 3)])
    )
    assert epoch3[0][0].dtype == torch.float32 and epoch3[0][0].shape == (8, 3, 4, 4)


def test_iterating_without_set_epoch_advances_the_epoch():
    images, labels = indexed()
    loader = TensorLoader(images, labels, batch_size=10)
    first, second = epoch_batches(loader), epoch_batches(loader)
    assert not torch.equal(first[0][1], second[0][1])
    assert torch.equal(second[0][1], epoch_batches(TensorLoader(images, labels, batch_size=10), 1)[0][1])


@pytest.mark.parametrize("n, world_size", [(48, 4), (50, 3)])
def test_ranks_shard_the_epoch_like_distributed_sampler(n, world_size):
    images, labels = indexed(n)
    per_rank = []
    for rank in range(world_size):
        loader = TensorLoader(
            images, labels, batch_size=4, drop_last=False, seed=2, rank=rank, world_size=world_size
        )
        loader.set_epoch(1)
        per_rank.append(torch.cat([y for _, y in loader]).tolist())
    assert len({len(r) for r in per_rank}) == 1  # every rank runs the same number of steps
    union = sum(per_rank, [])
    assert set(union) == set(range(n))
    if n % world_size == 0:
        assert len(union) == n  # disjoint
    else:
        assert len(union) == n + world_size - n % world_size  # padded by wrapping, as DistributedSampler does
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world_size, rank=1, shuffle=False)
    assert shard_indices(torch.arange(n), 1, world_size, drop_last=False).tolist() == list(sampler)


def test_drop_last_sharding_is_disjoint():
    images, labels = indexed(50)
    seen = [
        torch.cat([y for _, y in TensorLoader(images, labels, batch_size=4, rank=r, world_size=3)]).tolist()
        for r in range(3)
    ]
    assert all(len(s) == 16 for s in seen) and len(set(sum(seen, []))) == 48


def test_loader_errors():
    images, labels = indexed(10)
    with pytest.raises(ResnetsError, match="no batch"):
        TensorLoader(images, labels, batch_size=32)
    with pytest.raises(ResnetsError, match="rank 2 is outside"):
        TensorLoader(images, labels, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ResnetsError, match="10 images but 9 labels"):
        TensorLoader(images, labels[:9])


def test_make_dataloader_streams_from_disk_and_skips_bad_files(tmp_path):
    make_tree(tmp_path, splits=(None,), per_class=4, size=(20, 20))
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    dataset = open_dataset(tmp_path)
    loader = make_dataloader(
        dataset, "imagenet", Preprocessing.for_input_size(16, (0.5,) * 3, (0.25,) * 3), train=False, batch_size=5,
        workers=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert sum(len(y) for _, y in batches) == 12
    assert any("broken.png" in str(w.message) for w in caught)
    assert batches[0][0].shape[1:] == (3, 16, 16) and batches[0][0].dtype == torch.float32
    train = make_dataloader(
        dataset, "cifar", Preprocessing.for_input_size(16, (0.5,) * 3, (0.25,) * 3), train=True, batch_size=4,
        workers=0
    )
    train.sampler.set_epoch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert all(x.shape[1:] == (3, 16, 16) for x, _ in train)


def test_training_step_keeps_its_threads():
    images, labels = indexed(40)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in TensorLoader(images, labels, batch_size=8, augment=BatchAugment("none", 4)):
            assert torch.get_num_threads() == 2  # batch preparation ran on one thread, then restored
    finally:
        torch.set_num_threads(before)


def test_worker_processes_reopen_zip_and_lmdb(tmp_path):
    from _data_helpers import zip_tree
    from resnets.data import pack_lmdb

    make_tree(tmp_path / "tree", splits=(None,), per_class=3, size=(8, 8))
    pack_lmdb(tmp_path / "tree", tmp_path / "t.lmdb", progress=False)
    record = Preprocessing.for_input_size(8, (0.5,) * 3, (0.5,) * 3)
    for path in (zip_tree(tmp_path / "tree", tmp_path / "t.zip"), tmp_path / "t.lmdb"):
        dataset = open_dataset(path)
        dataset[0]  # the parent holds an open handle before the workers fork
        expected = make_dataloader(dataset, "none", record, False, batch_size=4, workers=0)
        in_workers = make_dataloader(dataset, "none", record, False, batch_size=4, workers=2)
        for (x1, y1), (x2, y2) in zip(expected, in_workers, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert dataset[1][1] == 0  # the parent's handle still works
