"""Batches for training and evaluation.

:class:`TensorLoader` serves data sets decoded into memory (:func:`decode_to_memory`):
shuffling, sharding and augmentation are tensor operations, deterministic in (seed, epoch).
:func:`make_dataloader` streams sets too large for memory from disk through a torch
``DataLoader`` with torchvision transforms.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torchvision.transforms import v2

from ..errors import ResnetsError
from ..preprocessing import Preprocessing
from .augment import PRESETS, BatchAugment
from .dataset import ImageDataset
from .images import SkippedImages
from .policy import AugmentPolicy, apply_per_image, seed_image
from .sampling import EpochPlan, PlanSampler, mix_seed, shard_indices


class TensorLoader:
    """Iterable of (x, y) batches on ``device`` from uint8 images held in memory: ``x`` is
    ``augment(images)`` (the raw batch without one), ``y`` int64.

    Each epoch's shuffle and augmentation come from generators seeded by (seed, epoch) (and the
    rank), so a resumed run that calls :meth:`set_epoch` sees the very batches the interrupted run
    would have; each full pass advances the epoch. ``plan`` (an :class:`EpochPlan`) replaces the
    shuffle; ``policy`` runs on each image first, seeded per image as the streaming path does.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
                 shuffle: bool = True, drop_last: bool = True, augment: BatchAugment | None = None,
                 seed: int = 0, device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 plan: EpochPlan | None = None, policy: AugmentPolicy | None = None):
        if len(images) != len(labels):
            raise ResnetsError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ResnetsError(f"batch size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ResnetsError(f"rank {rank} is outside world size {world_size}")
        self.images, self.labels = images, labels.to(torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed, self.device = augment, seed, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.plan = plan if shuffle else None
        self.policy = policy.transform() if policy else None
        self.epoch = 0
        if len(self) == 0:
            raise ResnetsError(f"{len(images)} images make no batch of {batch_size}"
                               f"{f' per rank over {world_size} ranks' if world_size > 1 else ''}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _per_rank(self) -> int:
        total = len(self.plan) if self.plan is not None else len(self.images)
        return total // self.world_size if self.drop_last else -(-total // self.world_size)

    def __len__(self) -> int:
        count = self._per_rank()
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's draws for the current epoch, in batch order (item indices, or with a
        ``plan`` that repeats items, ``item + k * len(images)`` for an item's k-th draw)."""
        total = len(self.images)
        if self.plan is not None:
            order = self.plan.order(self.epoch)
        elif self.shuffle:
            order = torch.randperm(total, generator=torch.Generator().manual_seed(
                mix_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(total)
        mine = shard_indices(order, self.rank, self.world_size, self.drop_last)
        return mine[: len(self) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, 1))
        indices = self.indices()
        for start in range(0, len(indices), self.batch_size):
            with _one_cpu_thread(self.device):
                x, y = self._batch(indices[start:start + self.batch_size], generator)
            yield x, y
        self.epoch += 1

    def _batch(self, draws: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        batch = draws % len(self.images)
        x = self.images[batch]
        if self.policy is not None:
            x = apply_per_image(self.policy, x, draws, self.seed, self.epoch)
        x = x.to(self.device, non_blocking=True)
        y = self.labels[batch].to(self.device, non_blocking=True)
        if self.augment is None:
            return x, y
        return self.augment(x, generator, indices=batch, epoch=self.epoch, seed=self.seed), y


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run batch preparation on one CPU thread.

    Its tensors are small, so splitting them over threads gains little, and on a busy machine
    (more runnable threads than cores) torch's thread pool then waits for descheduled threads:
    measured 1.8k images/s with 2 threads against 29k with 1 on a loaded 2-core machine.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torchvision_transform(preset: str, preprocessing: Preprocessing, train: bool,
                          policy: AugmentPolicy | None = None) -> v2.Transform:
    """The torchvision v2 pipeline (PIL image -> normalised float tensor) of a preset.

    Evaluation is the model's record itself (:meth:`Preprocessing.to_uint8`), and every path
    ends in its :meth:`Preprocessing.normalize`, as the in-memory path does. In training, an
    augmentation ``policy`` runs on the decoded uint8 image before the preset's crop and flip.
    """
    if preset not in PRESETS:
        raise ResnetsError(f"unknown augmentation preset {preset!r}; choose from {', '.join(PRESETS)}")
    size = preprocessing.input_size
    if train and preset == "cifar":
        steps = [v2.PILToTensor(), v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
    elif train and preset == "imagenet":
        steps = [v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [preprocessing.to_uint8]
    if train and policy:
        steps.insert(1, policy.transform())
    return v2.Compose([*steps, preprocessing.normalize])


class _Transformed(torch.utils.data.Dataset):
    """``dataset`` through ``transform``; an unreadable image becomes None (dropped by the collate).

    With a ``seed``, each image's random augmentation is drawn from a generator seeded by
    (seed, epoch, index): the same whatever the number of workers or which worker loads it.
    An index past the end is a repeated draw of ``index % len(dataset)`` (see :class:`EpochPlan`).
    """

    def __init__(self, dataset: ImageDataset, transform: v2.Transform, seed: int | None = None):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        sample = SkippedImages().item(self.dataset, index % len(self.dataset))
        if sample is None:
            return None
        image, label = sample
        if self.seed is not None:
            seed_image(self.seed, self.epoch, index)  # v2 transforms use the global RNG
        return self.transform(image), label


def _collate_readable(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [s for s in samples if s is not None]
    if not samples:
        return torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64)
    return torch.utils.data.default_collate(samples)


def make_dataloader(dataset: ImageDataset, preset: str, preprocessing: Preprocessing,
                    train: bool, batch_size: int, workers: int = 2,
                    seed: int = 0, rank: int = 0, world_size: int = 1,
                    pin_memory: bool = False, persistent: bool = True, plan: EpochPlan | None = None,
                    policy: AugmentPolicy | None = None) -> torch.utils.data.DataLoader:
    """A torch DataLoader decoding from disk, for data sets too large for :func:`decode_to_memory`.

    Training loaders shuffle (call ``loader.sampler.set_epoch(e)`` each epoch, or a ``plan``
    replaces the shuffle) and drop the last partial batch; unreadable images are skipped, so a
    batch can be smaller. Augmentation is seeded per image from (seed, ``loader.dataset.epoch``,
    index): set that epoch before iterating, with ``persistent=False`` so fresh workers see it.
    """
    transformed = _Transformed(dataset, torchvision_transform(preset, preprocessing, train, policy),
                               seed if train else None)
    if train and plan is not None:
        sampler = PlanSampler(plan, rank, world_size, drop_last=True)
    else:
        sampler = torch.utils.data.DistributedSampler(
            transformed, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train)
    return torch.utils.data.DataLoader(
        transformed, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=_collate_readable, drop_last=train, pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0)
