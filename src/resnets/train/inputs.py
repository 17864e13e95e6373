"""Training data in memory: decoded once to uint8 tensors, batched and augmented on the fly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def load_in_memory(path: str, img_size: int, val_split: float | None, seed: int, workers: int,
                   progress: bool = True) -> InMemoryData:
    """Open a data set (folder, zip, CIFAR pickles, LMDB), split it and decode it at ``img_size``."""
    from ..data import decode_to_memory, load_splits

    train_set, val_set = load_splits(path, val_split=val_split, seed=seed)
    if len(train_set) == 0:
        raise ResnetsError(f"{path} holds no training images")
    size = (img_size, img_size)
    train_images, train_labels = decode_to_memory(train_set, size=size, workers=workers, progress=progress)
    val_images = val_labels = None
    if val_set is not None and len(val_set):
        val_images, val_labels = decode_to_memory(val_set, size=size, workers=workers, progress=progress)
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
