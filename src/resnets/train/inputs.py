"""What the trainer reads: data sets decoded once into memory (uint8 tensors, augmented per
batch on the fly) or, when they are too large for that, streamed from disk every epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..data import decode_to_memory, fits_in_memory, load_splits, make_dataloader
from ..errors import ResnetsError


@dataclass
class InMemoryData:
    """Decoded uint8 images (N, 3, H, W) with int64 labels; ``val_*`` may be ``None``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor | None
    val_labels: torch.Tensor | None
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class StreamingData:
    """A data set read from disk each epoch: its splits (``val`` may be None) and class names."""

    train: Any  # ImageDataset
    val: Any | None
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def open_training_data(path: str, img_size: int, val_split: float | None, seed: int, workers: int,
                       stream: bool | None, progress: bool = True,
                       val_preprocessing: Any = None) -> InMemoryData | StreamingData:
    """The data at ``path``, decoded into memory or (``stream`` True, or None and too large for
    memory at ``img_size``, see ``MEMORY_LIMIT_BYTES``) opened for streaming.

    ``val_preprocessing``: the model's record; held-out images are decoded through it, exactly as
    ``evaluate`` and ``predict`` will feed them (training images are fitted to ``img_size``).
    """
    train_set, val_set = load_splits(path, val_split=val_split, seed=seed)
    if len(train_set) == 0:
        raise ResnetsError(f"{path} holds no training images")
    size = (img_size, img_size)
    if stream is None:
        stream = not fits_in_memory(train_set, size) or (val_set is not None and not fits_in_memory(val_set, size))
    if stream:
        return StreamingData(train_set, val_set if val_set is not None and len(val_set) else None,
                             list(train_set.classes))
    return _decode(train_set, val_set, size, workers, progress, val_preprocessing)


def load_in_memory(path: str, img_size: int, val_split: float | None, seed: int, workers: int,
                   progress: bool = True) -> InMemoryData:
    """Open a data set (folder, zip, CIFAR pickles, LMDB), split it and decode it at ``img_size``."""
    return open_training_data(path, img_size, val_split, seed, workers, False, progress)


class StreamLoader:
    """Batches decoded from disk by a torch DataLoader (workers, torchvision transforms), moved
    to the training device; same contract as the in-memory loader (``set_epoch``, ``len``,
    ``(x, y)`` batches).

    The order depends on (seed, epoch) and each image's augmentation on (seed, epoch, index),
    not on the number of workers, so a resumed run (even with other ``--workers``) sees the
    batches the unbroken run would have. Batches whose every image was unreadable are skipped.
    """

    def __init__(self, dataset: Any, preset: str, preprocessing: Any, train: bool, batch_size: int,
                 workers: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1,
                 plan: Any = None, policy: Any = None) -> None:
        # Eval: the model's record, as the in-memory decoding does.
        self.loader = make_dataloader(dataset, preset if train else "none", preprocessing, train=train,
                                      batch_size=batch_size,
                                      workers=workers, seed=seed, rank=rank, world_size=world_size,
                                      pin_memory=device.type == "cuda", persistent=not train,
                                      plan=plan, policy=policy)
        self.device, self.epoch = device, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.sampler.set_epoch(self.epoch)
        self.loader.dataset.epoch = self.epoch  # per-image augmentation seeds (fresh workers copy it)
        batches = iter(self.loader)
        in_process = self.loader.num_workers == 0
        while True:
            # Without workers, the per-image seeding happens on this process's global RNG:
            # keep the training's random stream (dropout, mixup...) as it was.
            training_rng = torch.get_rng_state() if in_process else None
            x, y = next(batches, (None, None))
            if in_process:
                torch.set_rng_state(training_rng)
            if y is None:
                break
            if len(y):
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.epoch += 1


def _decode(train_set: Any, val_set: Any | None, size: tuple[int, int], workers: int,
            progress: bool, val_preprocessing: Any = None) -> InMemoryData:
    train_images, train_labels = decode_to_memory(train_set, size=size, workers=workers, progress=progress)
    val_images = val_labels = None
    if val_set is not None and len(val_set):
        val_images, val_labels = decode_to_memory(val_set, size=size, workers=workers, progress=progress,
                                                  preprocessing=val_preprocessing)
    return InMemoryData(train_images, train_labels, val_images, val_labels, list(train_set.classes))


class FeatureLoader:
    """Shuffled batches of cached feature vectors (the head-only fast path).

    Same contract as the image loader: ``set_epoch``, ``len``, iteration yields ``(x, y)``;
    the order depends only on (seed, epoch), and each process takes its shard of every batch.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.features, self.labels = features, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(len(self.labels), generator=generator)
        else:
            order = torch.arange(len(self.labels))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size][self.rank::self.world_size].to(self.features.device)
            yield self.features[index], self.labels[index]
