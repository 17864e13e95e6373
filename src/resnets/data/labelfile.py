"""Multi-label data sets: images listed in a label file, several labels per image.

Two formats, chosen by the file's suffix:

* CSV (``.csv``): one image per row, ``path,labels``; the labels of a row are separated by
  ``;`` or spaces (``cat;dog`` or ``"cat dog"``). A first row ``path,labels`` is a header and
  skipped. Example::

      path,labels
      images/0001.png,circle;square
      images/0002.png,triangle

* JSON lines (``.jsonl``, ``.ndjson``): one object per line,
  ``{"path": "images/0001.png", "labels": ["circle", "square"]}``; blank lines are skipped.

Paths are relative to the folder of the label file and must stay inside it: a row naming an
absolute path, or one whose ``..`` climbs out of the folder (``../../elsewhere.png``), is refused
(:func:`resnets.fileio.escapes_folder`, the rule zip members are held to as well); a label file
naming images elsewhere belongs in a folder above them. Every listed image must exist and every row
must name at least one label. The classes are the sorted set of all labels, unless a
``classes.txt`` (one class per line) sits beside the label file: then that is the class list, in
its order, and a label outside it is an error. Both files are read as regular files of bounded size
only (:func:`resnets.textparse.read_limited`): a FIFO, device or folder in their place is refused. Each item's target is a multi-hot row
(``targets[i]`` is a tuple of 0/1 per class), which ``decode_to_memory`` turns into an (N, C)
tensor. The file has no splits: training holds out ``--val-split`` at random (:func:`random_split`).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from ..errors import ResnetsError
from ..fileio import escapes_folder
from ..textparse import load_json, read_limited
from .base import register_format
from .dataset import EncodedImageDataset
from .images import printable, read_image_file

SUFFIXES = (".csv", ".jsonl", ".ndjson")
CLASS_LIST = "classes.txt"
MAX_LABEL_FILE_BYTES = 512 * 2**20
MAX_CLASS_LIST_BYTES = 16 * 2**20  # a million class names of 15 characters

Rows = list[tuple[str, list[str]]]


def is_label_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read_rows(path: Path) -> Rows:
    """(relative image path, labels) per row of a CSV or JSON-lines label file; one line on bad input."""
    text = _read_text(path, MAX_LABEL_FILE_BYTES)
    rows = _json_rows(text, path) if path.suffix.lower() != ".csv" else _csv_rows(text, path)
    if not rows:
        raise ResnetsError(f"{printable(str(path))} lists no images")
    return rows


def _read_text(path: Path, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``; anything else is one line."""
    data = read_limited(path, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ResnetsError(f"{printable(str(path))} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _csv_rows(text: str, path: Path) -> Rows:
    rows: Rows = []
    try:
        for number, row in enumerate(csv.reader(text.splitlines(), strict=True), start=1):
            if not row or (number == 1 and [c.strip().lower() for c in row] == ["path", "labels"]):
                continue
            where = f"{printable(str(path))} line {number}"
            if len(row) != 2:
                raise ResnetsError(f"{where}: expected 2 fields (path,labels), found {len(row)}")
            rows.append((_checked_path(row[0], where), _checked_labels(re.split(r"[;\s]+", row[1]), where)))
    except csv.Error as error:
        raise ResnetsError(f"{printable(str(path))}: malformed CSV ({error})") from None
    return rows


def _json_rows(text: str, path: Path) -> Rows:
    rows: Rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{printable(str(path))} line {number}"
        item = load_json(line, where, invalid="malformed JSON")
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) \
                or not isinstance(item.get("labels"), list) or not all(isinstance(x, str) for x in item["labels"]):
            raise ResnetsError(f'{where}: expected {{"path": "...", "labels": ["...", ...]}}')
        rows.append((_checked_path(item["path"], where), _checked_labels(item["labels"], where)))
    return rows


def _checked_path(value: str, where: str) -> str:
    """A row's image path, normalised (``a/./b/../c`` -> ``a/c``); refused when empty or when it
    leaves the label file's folder (absolute, or a ``..`` that climbs out)."""
    value = value.strip()
    if not value:
        raise ResnetsError(f"{where}: empty image path")
    if escapes_folder(value):
        raise ResnetsError(f"{where}: image path {printable(value)} is outside the label file's folder "
                           f"(absolute, or '..' climbs out of it); paths must be relative to the label file")
    return os.path.normpath(value)


def _checked_labels(labels: list[str], where: str) -> list[str]:
    names = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
    if not names:
        raise ResnetsError(f"{where}: no labels")
    return names


def read_class_list(path: Path) -> list[str] | None:
    """The classes of ``classes.txt`` beside the label file, or None when there is none."""
    listing = path.parent / CLASS_LIST
    if not listing.exists():
        return None
    text = _read_text(listing, MAX_CLASS_LIST_BYTES)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise ResnetsError(f"{printable(str(listing))} must list each class once, one per line")
    return names


class LabelFileDataset(EncodedImageDataset):
    """The images of a label file; ``targets[i]`` is item i's multi-hot tuple."""

    multi_label = True

    def __init__(self, root: Path, rows: Rows, classes: list[str], source: str):
        index = {name: k for k, name in enumerate(classes)}
        self.root, self.classes, self.source = root, list(classes), source
        self.paths = [path for path, _ in rows]
        self.targets = [tuple(int(name in labels) for name in classes) for _, labels in rows]
        for number, (path, labels) in enumerate(rows, start=1):
            unknown = [name for name in labels if name not in index]
            if unknown:
                raise ResnetsError(f"{source}: {printable(path)} has label {printable(unknown[0])!r}, which is not "
                                   f"in {CLASS_LIST} ({', '.join(map(printable, classes[:5]))}...)")

    def encoded(self, index: int) -> bytes:
        return read_image_file(self.root / self.paths[index])

    def describe(self, index: int) -> str:
        return printable(self.paths[index])

    def class_counts(self) -> list[int]:
        """Images carrying each class (an image counts once for each of its labels)."""
        return np.asarray(self.targets, dtype=np.int64).sum(0).tolist() if self.targets else [0] * len(self.classes)


class LabelFileSource:
    """A label file as a data source (format ``labels``, one unsplit set)."""

    format = "labels"
    splits: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike, classes: list[str] | None = None):
        self.path = Path(path)
        self.rows = read_rows(self.path)
        given = classes if classes is not None else read_class_list(self.path)
        self.classes = list(given) if given is not None else sorted({n for _, labels in self.rows for n in labels})
        self._check_images()

    def _check_images(self) -> None:
        root = self.path.parent
        missing = [path for path, _ in self.rows if not _is_file(root / path)]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ResnetsError(f"{printable(str(self.path))} names missing image {printable(missing[0])}{more} "
                               f"(paths are relative to {printable(str(root))})")

    def dataset(self, split: str | None = None) -> LabelFileDataset:
        return LabelFileDataset(self.path.parent, self.rows, self.classes, printable(str(self.path)))


register_format(10, is_label_file, LabelFileSource)


def random_split(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices with ``round(fraction * count)`` at random in val (at least one of each
    when there are two items or more); deterministic in ``seed``, both sorted."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(max(int(round(count * fraction)), 1 if count > 1 else 0), count - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _is_file(path: Path) -> bool:
    """``Path.is_file``, False for a name the file system refuses (too long: ENAMETOOLONG)."""
    try:
        return path.is_file()
    except OSError:
        return False
