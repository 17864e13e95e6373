"""Local Hugging Face data sets, read with pyarrow alone (the ``datasets`` package is not needed).

Two layouts:

* Parquet files with an image column (the Hub's ``data/train-00000-of-00001.parquet``): a
  ``.parquet`` file, or a folder of them whose names (or parent folders) start with a split
  name (``train``, ``val``, ``validation``, ``valid``, ``test``);
* a folder written by ``Dataset.save_to_disk`` (``state.json`` + ``data-*.arrow``) or
  ``DatasetDict.save_to_disk`` (``dataset_dict.json`` + one such folder per split).

The image and label columns are the ``Image`` and ``ClassLabel`` features the schema's
metadata declares, else found by type and name. Labels are read up front, image bytes when an
item is read: Arrow files through a memory map, Parquet a row group at a time, kept in a bounded
cache. Shuffled reads of a Parquet set much larger than that cache read a row group per image:
pack such a set once with ``resnets data pack SRC DIR --format wds`` (one seek per image).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

try:  # optional (the `hf` extra): detection works without it, reading says what to install
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:
    pa = pq = None

from ..errors import ResnetsError, first_line
from ..textparse import load_json, read_limited
from .base import VAL_SPLITS, register_format
from .dataset import EncodedImageDataset
from .images import MAX_IMAGE_BYTES, BadImageError, BadImageWarning, printable, read_image_file
from .shards import check_class_number

MAX_JSON_BYTES = 16 * 2**20
MAX_ROW_GROUP_BYTES = 2**30  # one row group is held in memory while its images are read
ROW_GROUP_CACHE_BYTES = 256 * 2**20  # Parquet row groups kept per process (see ArrowImageDataset._column)
IMAGE_NAMES = ("image", "img", "images", "picture", "jpg", "png")
LABEL_NAMES = ("label", "labels", "class", "target", "fine_label", "category", "cls")
_SPLIT_NAME = re.compile(r"^(train|" + "|".join(VAL_SPLITS) + r")(?:[-_.]|$)")
_ARROW_ERRORS = (OSError, ValueError) + ((pa.ArrowException,) if pa is not None else ())


def is_parquet(path: Path) -> bool:
    """A ``.parquet`` file, or a folder with some at its top, in ``data/`` or in split-named subfolders.

    (Not searched deeper: an image tree of a million files must not be walked to say no.)
    """
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    folders = [path, path / "data", *(path / split for split in ("train", *VAL_SPLITS))]
    return any(folder.is_dir() and next(folder.glob("*.parquet"), None) is not None for folder in folders)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


class ArrowImageDataset(EncodedImageDataset):
    """Rows of Arrow/Parquet ``parts`` (a file, or a file's row group); only labels are held in memory.

    ``parts`` are ``(kind, path, row_group)`` with kind ``"arrow"`` or ``"parquet"``; ``rows``
    are the global row numbers of the items (rows without a label are left out).
    """

    def __init__(self, parts: list[tuple[str, Path, int]], part_rows: list[int], rows: list[int],
                 targets: list[int], classes: list[str], image_column: str, source: str):
        self.parts, self.rows, self.targets, self.classes = parts, rows, targets, classes
        self.image_column, self.source = image_column, source
        self._starts = np.cumsum([0] + part_rows).tolist()
        self._cache: dict[int, pa.Array] = {}  # by part, least recently used first
        self._cached_bytes, self._pid = 0, os.getpid()

    def _column(self, part: int) -> pa.Array:
        """The image column of ``part``, from a per-process cache of decoded row groups.

        Shuffled reads hit row groups at random, and a Parquet row group is read whole; the
        cache (:data:`ROW_GROUP_CACHE_BYTES` per process) holds a small set entirely. Arrow
        files are memory-mapped: keeping them costs address space, not memory.
        """
        if self._pid != os.getpid():  # a forked DataLoader worker starts its own cache
            self._cache, self._cached_bytes, self._pid = {}, 0, os.getpid()
        column = self._cache.pop(part, None)
        if column is None:
            kind, path, group = self.parts[part]
            try:
                table = (_read_arrow(path) if kind == "arrow"
                         else pq.ParquetFile(path).read_row_group(group, columns=[self.image_column]))
            except _ARROW_ERRORS as error:
                raise ResnetsError(f"cannot read {printable(str(path))}: {first_line(error)}") from None
            column = table.column(self.image_column).combine_chunks()
            self._cached_bytes += _held_bytes(kind, column)
            while self._cache and self._cached_bytes > ROW_GROUP_CACHE_BYTES:
                oldest = next(iter(self._cache))
                self._cached_bytes -= _held_bytes(self.parts[oldest][0], self._cache.pop(oldest))
        self._cache[part] = column
        return column

    def encoded(self, index: int) -> bytes:
        part, local = _locate_row(self._starts, self.rows[index])
        value = self._column(part)[local]
        path = None
        if isinstance(value, pa.StructScalar):
            fields = [f.name for f in value.type]
            path = value["path"].as_py() if "path" in fields else None
            value = value["bytes"] if "bytes" in fields else None
        buffer = value.as_buffer() if value is not None and value.is_valid else None
        if buffer is None and isinstance(path, str) and path:
            return self._referenced_file(part, path)
        if buffer is None:
            raise BadImageError(f"cannot read image {self.describe(index)}: the row holds no image")
        if buffer.size > MAX_IMAGE_BYTES:
            raise BadImageError(f"cannot read image {self.describe(index)}: {buffer.size} bytes, more than the "
                                f"{MAX_IMAGE_BYTES} an image file may have")
        return buffer.to_pybytes()

    def _referenced_file(self, part: int, path: str) -> bytes:
        """An image the row names by path only (``datasets`` keeps local files so in Parquet).

        A relative path is looked up beside the data file, then from the working folder, as
        ``datasets`` itself would open it; the file is read as any image file is.
        """
        beside = self.parts[part][1].parent / path
        return read_image_file(beside if not Path(path).is_absolute() and beside.exists() else path)

    def describe(self, index: int) -> str:
        return _row_name(self.parts, self._starts, self.rows[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}, "_cached_bytes": 0}


def _locate_row(starts: list[int], row: int) -> tuple[int, int]:
    """(part, row within the part) of global row ``row``; ``starts`` are the parts' first rows."""
    part = int(np.searchsorted(starts, row, side="right")) - 1
    return part, row - starts[part]


def _row_name(parts: list[tuple[str, Path, int]], starts: list[int], row: int) -> str:
    part, local = _locate_row(starts, row)
    kind, path, group = parts[part]
    return f"{printable(str(path))}{f' row group {group}' if kind == 'parquet' else ''} row {local}"


def _held_bytes(kind: str, column: pa.Array) -> int:
    return 0 if kind == "arrow" else column.nbytes


def _read_arrow(path: Path) -> pa.Table:
    """A ``save_to_disk`` Arrow file (IPC stream, or file format) through a memory map: no copy."""
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).read_all()


def _features(schema: pa.Schema) -> dict[str, Any]:
    """The ``datasets`` feature declarations stored in a schema's metadata ({} when there are none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = load_json(raw, "huggingface metadata", MAX_JSON_BYTES)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):  # ValueError: also load_json's ResnetsError (size, depth)
        features = {}
    return features if isinstance(features, dict) else {}


def _image_column(schema: pa.Schema, features: dict[str, Any], where: str) -> str:
    declared = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    structs = [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
    binaries = [f.name for f in schema if (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))
                and f.name.lower() in IMAGE_NAMES]
    for name in declared + structs + binaries:
        if name in schema.names:
            return name
    raise ResnetsError(f"{where} has no image column (an Image feature, a struct with image bytes, or a "
                       f"binary column named {'/'.join(IMAGE_NAMES[:3])}); columns: "
                       f"{', '.join(printable(n) for n in schema.names)}")


def _label_column(schema: pa.Schema, features: dict[str, Any], where: str) -> tuple[str, list[str] | None]:
    """The label column and its class names when the schema declares them (a ClassLabel)."""
    for name, feature in features.items():
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and name in schema.names:
            names = feature.get("names")
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                return name, [printable(n) for n in names]
            return name, None
    for name in LABEL_NAMES:
        field = next((f for f in schema if f.name.lower() == name), None)
        if field is not None and (pa.types.is_integer(field.type) or pa.types.is_string(field.type)
                                  or pa.types.is_large_string(field.type)):
            return field.name, None
    raise ResnetsError(f"{where} has no label column (a ClassLabel, or an integer or string column named "
                       f"{'/'.join(LABEL_NAMES[:4])}); columns: {', '.join(printable(n) for n in schema.names)}")


class _Table:
    """The parts of one split, their labels read up front, before classes are known."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, Path, int]] = []
        self.part_rows: list[int] = []
        self.labels: list[Any] = []


class HfSource:
    """Parquet files or a ``save_to_disk`` folder, split by file names or ``dataset_dict.json``."""

    def __init__(self, path: Path):
        self.path = path
        self.format = "hf-arrow" if is_saved_dataset(path) else "parquet"
        if pa is None:
            raise ResnetsError(f"reading {printable(str(path))} ({self.format}) needs pyarrow: "
                               f"pip install 'resnets[hf]' (or pip install pyarrow)")
        split_files = _saved_splits(path) if self.format == "hf-arrow" else _parquet_splits(path)
        if not split_files:
            raise ResnetsError(f"no data files in {printable(str(path))}")
        self._columns: tuple[str, str, list[str] | None] | None = None
        self._tables = {split: self._read_labels(files) for split, files in split_files.items()}
        self.classes = self._columns[2] or self._classes_from_labels()
        self._targets = {split: self._targets_of(table) for split, table in self._tables.items()}

    def _read_labels(self, files: list[Path]) -> _Table:
        table = _Table()
        arrow = self.format == "hf-arrow"
        for path in files:
            where = printable(str(path))
            try:
                data = _read_arrow(path) if arrow else pq.ParquetFile(path)
                schema = data.schema if arrow else data.schema_arrow
            except _ARROW_ERRORS as error:
                raise ResnetsError(f"cannot read {where}: {first_line(error)}") from None
            columns = self._columns_of(schema, where)
            if arrow:
                table.parts.append(("arrow", path, 0))
                table.part_rows.append(data.num_rows)
                table.labels.extend(data.column(columns[1]).to_pylist())
                continue
            for group in range(data.metadata.num_row_groups):
                meta = data.metadata.row_group(group)
                if meta.total_byte_size > MAX_ROW_GROUP_BYTES:
                    raise ResnetsError(f"{where}: row group {group} holds {meta.total_byte_size} bytes, more than "
                                       f"the {MAX_ROW_GROUP_BYTES} read at once; rewrite it with smaller row groups")
                try:
                    labels = data.read_row_group(group, columns=[columns[1]]).column(0).to_pylist()
                except _ARROW_ERRORS as error:
                    raise ResnetsError(f"cannot read {where}: {first_line(error)}") from None
                table.parts.append(("parquet", path, group))
                table.part_rows.append(len(labels))
                table.labels.extend(labels)
        return table

    def _columns_of(self, schema: pa.Schema, where: str) -> tuple[str, str, list[str] | None]:
        features = _features(schema)
        columns = (_image_column(schema, features, where), *_label_column(schema, features, where))
        if self._columns is None:
            self._columns = columns
        elif columns[:2] != self._columns[:2]:
            raise ResnetsError(f"{where} names its image/label columns differently from the other files")
        return columns

    def _classes_from_labels(self) -> list[str]:
        values = {v for table in self._tables.values() for v in table.labels if v is not None}
        if all(isinstance(v, str) for v in values):
            return sorted(printable(v) for v in values)
        largest = max((int(v) for v in values), default=-1)
        count = sum(len(table.labels) for table in self._tables.values())
        for table in self._tables.values():
            if largest in table.labels:
                row = table.labels.index(largest)
                where = _row_name(table.parts, np.cumsum([0] + table.part_rows).tolist(), row)
                check_class_number(largest, count, where, "declare the classes as a ClassLabel feature")
        return [str(k) for k in range(largest + 1)]

    def _targets_of(self, table: _Table) -> tuple[list[int], list[int]]:
        """(rows, labels) of the rows whose label is a known class."""
        index = {name: k for k, name in enumerate(self.classes)}
        rows, targets, unlabelled = [], [], []
        for row, value in enumerate(table.labels):
            label = index.get(printable(value)) if isinstance(value, str) else value
            if label is None or not 0 <= label < len(self.classes):
                unlabelled.append(row)
                continue
            rows.append(row)
            targets.append(int(label))
        if unlabelled:
            starts = np.cumsum([0] + table.part_rows).tolist()
            names = ", ".join(_row_name(table.parts, starts, row) for row in unlabelled[:5])
            warnings.warn(f"skipped {len(unlabelled)} row(s) without a known label: {names}"
                          + (" ..." if len(unlabelled) > 5 else ""), BadImageWarning, stacklevel=3)
        return rows, targets

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name in self._tables if name)

    def dataset(self, split: str | None) -> ArrowImageDataset:
        table = self._tables[split or ""]
        rows, targets = self._targets[split or ""]
        source = printable(str(self.path)) + (f" [{split}]" if split else "")
        return ArrowImageDataset(table.parts, table.part_rows, rows, targets, self.classes, self._columns[0], source)


def _parquet_splits(path: Path) -> dict[str, list[Path]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if p.is_file())
    named: dict[str, list[Path]] = {}
    for file in files:
        relative = file.relative_to(path).parts if path.is_dir() else (file.name,)
        match = next((m for m in (_SPLIT_NAME.match(part) for part in relative) if m), None)
        named.setdefault(match.group(1) if match else "", []).append(file)
    if "" in named and len(named) > 1:
        raise ResnetsError(f"{printable(str(path))} mixes split-named Parquet files with "
                           f"{printable(named[''][0].name)}; name every file train-*, test-* ... or none")
    return named


def _saved_splits(path: Path) -> dict[str, list[Path]]:
    """The Arrow files of each split of a ``save_to_disk`` folder."""
    if (path / "dataset_dict.json").is_file():
        splits = load_json(read_limited(path / "dataset_dict.json", MAX_JSON_BYTES),
                           printable(str(path / "dataset_dict.json")))
        names = splits.get("splits") if isinstance(splits, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) and n and "/" not in n and n != ".."
                                                  for n in names):
            raise ResnetsError(f"{printable(str(path / 'dataset_dict.json'))} lists no splits")
        return {name: _state_files(path / name) for name in names}
    return {"": _state_files(path)}


def _state_files(folder: Path) -> list[Path]:
    state = load_json(read_limited(folder / "state.json", MAX_JSON_BYTES), printable(str(folder / "state.json")))
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ResnetsError(f"{printable(str(folder / 'state.json'))} names no data files")
    files = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not (folder / name).is_file():
            raise ResnetsError(f"{printable(str(folder / 'state.json'))} names a missing data file "
                               f"{printable(str(name))}")
        files.append(folder / name)
    return files


register_format(40, lambda path: is_saved_dataset(path) or is_parquet(path), HfSource)
