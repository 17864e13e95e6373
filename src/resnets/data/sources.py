"""Opening a data set from a path, whatever its format, and choosing train / val splits.

Formats, detected from the path: an image-folder tree (folder or ``.zip``), CIFAR-10/100
pickles (folder or ``.tar.gz``), an LMDB database made by ``resnets data pack``, a multi-label
label file (``.csv`` or ``.jsonl``, see :mod:`resnets.data.labelfile`), WebDataset ``.tar``
shards (one, or a folder of them), local Hugging Face data sets (Parquet files, or a
``save_to_disk`` folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ResnetsError
from . import cifar, hfdata, imagetree, labelfile, lmdbstore, shards  # noqa: F401 - each registers its format
from .base import FORMATS, VAL_SPLITS, DataSource
from .dataset import ImageDataset, stratified_split
from .images import BadImageError, printable
from .labelfile import random_split


def open_source(path: str | os.PathLike) -> DataSource:
    """The :class:`DataSource` at ``path``; ResnetsError (one line) if missing or of no known format."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ResnetsError(f"no such data set: {printable(str(path))}")
    if not path.is_dir() and not path.is_file():  # a FIFO would block the first read, a device would never end
        raise ResnetsError(f"{printable(str(path))} is neither a folder nor a regular file")
    for _, detect, opener in FORMATS:
        if detect(path):
            return opener(path)
    raise ResnetsError(f"unknown data format: {printable(str(path))} (expected an image folder, a .zip of one, "
                       f"CIFAR python pickles or their .tar.gz, a .csv/.jsonl label file, or an .lmdb from `resnets data pack`)")


def open_dataset(path: str | os.PathLike, split: str | None = None) -> ImageDataset:
    """The data set at ``path``, or its ``split`` (``"train"``, ``"test"``...: required when the
    source has several, None for a single unsplit tree)."""
    return _split_of(open_source(path), split)


def _split_of(source: DataSource, split: str | None) -> ImageDataset:
    splits = source.splits
    if split is None and len(splits) > 1:
        raise ResnetsError(f"{source.path} has splits {', '.join(splits)}: choose one with split=")
    if split is None:
        split = splits[0] if splits else None
    elif split not in splits:
        available = ", ".join(splits) if splits else "none (one unsplit tree)"
        raise ResnetsError(f"{source.path} has no split {split!r}; splits: {available}")
    dataset = source.dataset(split)
    if len(dataset) == 0:
        raise ResnetsError(f"data set {dataset.source} is empty")
    return dataset


def load_splits(path: str | os.PathLike, val_split: float | None = None,
                seed: int = 0) -> tuple[ImageDataset, ImageDataset | None]:
    """(train, val) data sets from ``path``.

    A source with a held-out split (``val/``, ``validation/``, ``valid/`` or ``test/``, in that
    order of preference) uses it, and ``val_split`` is not applied. Otherwise the training
    tree (``train/`` or the unsplit root) is split per class: ``val_split`` of each class goes
    to val, chosen by ``seed``. ``val`` is None when there is nothing to validate on.
    """
    if val_split is not None and not 0 <= val_split < 1:
        raise ResnetsError(f"val_split must be in [0, 1), got {val_split}")
    source = open_source(path)
    splits = source.splits
    train_name = "train" if "train" in splits else None
    if splits and train_name is None:
        raise ResnetsError(f"{source.path} has splits {', '.join(splits)} but no train split")
    train = _split_of(source, train_name)
    held_out = next((name for name in VAL_SPLITS if name in splits), None)
    if held_out is not None:
        return train, _split_of(source, held_out)
    if not val_split:
        return train, None
    if source.format == "labels":  # multi-hot targets: no class to stratify by
        train_idx, val_idx = random_split(len(train), val_split, seed)
    else:
        train_idx, val_idx = stratified_split(train.targets, val_split, seed)
    if not val_idx:
        raise ResnetsError(f"val_split={val_split} leaves no validation images in {train.source}")
    return train.subset(train_idx), train.subset(val_idx)


def inspect_source(path: str | os.PathLike, check: bool = False) -> dict:
    """What ``resnets data info`` reports: format, classes, images per split and class.

    With ``check``, every image is decoded and the unreadable ones are listed (slow on big sets).
    """
    source = open_source(path)
    report: dict = {"path": printable(str(source.path)), "format": source.format, "classes": list(source.classes),
                    "splits": {}}
    unreadable: list[str] = []
    for split in source.splits or (None,):
        dataset = source.dataset(split)
        report["splits"][split or "all"] = {
            "images": len(dataset),
            "per_class": dict(zip(dataset.classes, dataset.class_counts()))}
        if check:
            for index in tqdm(range(len(dataset)), desc=f"checking {split or 'images'}", unit="img",
                              leave=False):
                try:
                    dataset[index]
                except BadImageError:
                    unreadable.append(dataset.describe(index))
    if check:
        report["unreadable"] = unreadable
    return report
