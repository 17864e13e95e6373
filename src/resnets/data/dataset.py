"""The dataset interface every format implements: ``ds[i] -> (RGB PIL image, label)``.

Labels are known without decoding (``targets``), so splitting, counting and sharding never
touch pixels. Formats that store encoded files (folder, zip, LMDB) share
:class:`EncodedImageDataset`; CIFAR's pickles hold decoded pixels and return them directly.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ResnetsError
from .images import decode_image


class ImageDataset(torch.utils.data.Dataset):
    """A labelled image collection: label ``k`` is ``classes[k]``, ``targets`` every item's label,
    ``source`` where the items come from (a path, with the split), for messages."""

    classes: list[str]
    targets: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """The RGB image and label of item ``index``; raises BadImageError if it cannot be decoded."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """A name for item ``index`` that a user can find (file name, archive member, key)."""
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        """Item ``index``'s exact name (a path, ``archive:member``), for machine output; ``describe``
        is the same made safe for a terminal. Formats named by a key keep ``describe``'s."""
        return self.describe(index)

    def encoded(self, index: int) -> bytes:
        """The item as an image file's bytes (the original file where there is one)."""
        buffer = io.BytesIO()
        self[index][0].save(buffer, format="PNG")
        return buffer.getvalue()

    def as_uint8(self) -> torch.Tensor | None:
        """All pixels as a uint8 (N, 3, H, W) tensor when the format stores them decoded, else None."""
        return None

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        return SubsetDataset(self, indices)

    def class_counts(self) -> list[int]:
        counts = Counter(self.targets)
        return [counts.get(label, 0) for label in range(len(self.classes))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} images, {len(self.classes)} classes)"


class EncodedImageDataset(ImageDataset):
    """Items stored as encoded image files; subclasses provide :meth:`encoded` and :meth:`describe`."""

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return decode_image(self.encoded(index), self.describe(index)), self.targets[index]

    def encoded(self, index: int) -> bytes:
        raise NotImplementedError


class _Delegating(ImageDataset):
    """Items held by other data sets: :meth:`_locate` says which one, and at what index there."""

    def _locate(self, index: int) -> tuple[ImageDataset, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        dataset, local = self._locate(index)
        return dataset[local]

    def describe(self, index: int) -> str:
        dataset, local = self._locate(index)
        return dataset.describe(local)

    def item_name(self, index: int) -> str:
        dataset, local = self._locate(index)
        return dataset.item_name(local)

    def encoded(self, index: int) -> bytes:
        dataset, local = self._locate(index)
        return dataset.encoded(local)


class SubsetDataset(_Delegating):
    """The items of ``parent`` at ``indices`` (a split), with the parent's classes."""

    def __init__(self, parent: ImageDataset, indices: Sequence[int]):
        self.parent = parent
        self.indices = [int(i) for i in indices]
        self.classes = parent.classes
        self.targets = [parent.targets[i] for i in self.indices]
        self.source = parent.source

    def _locate(self, index: int) -> tuple[ImageDataset, int]:
        return self.parent, self.indices[index]

    def as_uint8(self) -> torch.Tensor | None:
        pixels = self.parent.as_uint8()
        return None if pixels is None else pixels[torch.as_tensor(self.indices, dtype=torch.long)]

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        return SubsetDataset(self.parent, [self.indices[i] for i in indices])


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item indices into (train, val) with ``fraction`` of each class in val.

    Deterministic in ``seed``; each class keeps at least one training item, and a class with
    two or more items gives at least one to val. Both lists are sorted (reads stay sequential).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(targets, dtype=np.int64)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * fraction))
        n_val = min(max(n_val, 1 if len(members) > 1 else 0), len(members) - 1)
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return sorted(train), sorted(val)


class ConcatDataset(_Delegating):
    """Several splits of one source as one data set; they must name the same classes in the same order."""

    def __init__(self, parts: Sequence[ImageDataset]):
        if any(list(p.classes) != list(parts[0].classes) for p in parts):
            raise ResnetsError(f"the splits of {parts[0].source} name different classes; evaluate one split")
        self.parts = list(parts)
        self.classes = parts[0].classes
        self.targets = [t for p in parts for t in p.targets]
        self.source = " + ".join(p.source for p in parts)
        self._starts = np.cumsum([0] + [len(p) for p in parts]).tolist()

    def _locate(self, index: int) -> tuple[ImageDataset, int]:
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.parts[part], index - self._starts[part]
