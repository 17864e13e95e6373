"""An LMDB database of encoded images, the ``backend: LMDB`` of Caffe's data layers.

Made by :func:`~resnets.data.pack.pack_lmdb` (``resnets data pack SRC DST.lmdb``) from any source
this package reads. Layout (our own, simpler than Caffe's ``Datum`` protobuf, which is not read):

* the database is one file (LMDB ``subdir=False``), written to a temporary name and renamed
  into place when complete, so an interrupted pack never leaves a half database;
* ``b"__meta__"``: JSON ``{"format": "resnets-lmdb", "version": 1, "classes": [...],
  "splits": {"train": [start, stop], ...}}`` (split ``""`` for an unsplit tree);
* ``b"__labels__"``: every record's label, int32 little-endian, for splitting without reads;
* ``b"%09d" % i``: record ``i``: ``<I label><H name length><name UTF-8><encoded image file>``,
  the image being the source file's own bytes (or, with ``size``, a JPEG re-encoded at
  quality 95 after resizing the shorter side).

A database is read through a memory map, where a page past the end of a truncated file is a
SIGBUS that kills the process, not an error. So before opening, the file's length is checked
against the last page its LMDB meta pages declare (:func:`check_complete`); LMDB itself refuses
page numbers past that last page. The metadata is checked too (types, counts, spans), so a
database that is not what ``pack_lmdb`` writes fails with one line.

A database can also be truncated or rewritten in place *while* it is read (``cp new.lmdb
data.lmdb`` during ``train --stream``). Every record read first compares the open file's size and
modification time (``fstat``) with those it had when opened, so such a change is one line naming
the file, and the run's last checkpoint, written before, stays. A truncation in the microseconds
between that check and the read can still fault the map: :func:`~resnets.fileio.exit_on_bus_error`
turns that SIGBUS into one line and exit status 2 instead of a silent death (the process cannot
continue after it; in a ``--workers`` process the line comes from the worker).
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from ..errors import ResnetsError
from ..fileio import exit_on_bus_error
from ..textparse import load_json
from .base import register_format
from .dataset import EncodedImageDataset
from .images import printable

FORMAT = "resnets-lmdb"
VERSION = 1
_RECORD_HEADER = struct.Struct("<IH")


def is_lmdb(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in (".lmdb", ".mdb")) or \
        (path.is_dir() and (path / "data.mdb").is_file())


# LMDB's on-disk meta page (lmdb.h / mdb.c, 64-bit builds): pages 0 and 1 each hold a 16-byte
# page header, then MDB_meta: magic, version, address, map size, two 48-byte MDB_db records
# (the first one's md_pad holds the page size), last page number, transaction id.
_META = struct.Struct("<II8xQ I44x 48x QQ")
_META_OFFSET = 16
_MAGIC = 0xBEEFC0DE


def check_complete(data_file: Path) -> None:
    """ResnetsError unless ``data_file`` is an LMDB data file holding every page it declares.

    Each valid meta page names the last page in use; a file shorter than that page's end was
    truncated (an interrupted copy) and would crash the process when read through the map.
    """
    name = printable(str(data_file))
    try:
        with open(data_file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            first = handle.read(_META_OFFSET + _META.size)
            metas = [_META.unpack_from(first, _META_OFFSET)] if len(first) == _META_OFFSET + _META.size else []
            page_size = metas[0][3] if metas and metas[0][0] == _MAGIC else 0
            if page_size in (2**k for k in range(9, 17)):  # LMDB pages are 512 B to 64 KiB
                handle.seek(page_size)
                second = handle.read(_META_OFFSET + _META.size)
                if len(second) == _META_OFFSET + _META.size:
                    metas.append(_META.unpack_from(second, _META_OFFSET))
    except OSError as error:
        raise ResnetsError(f"cannot read LMDB database {name}: {error.strerror or error}") from None
    valid = [meta for meta in metas if meta[0] == _MAGIC and meta[1] == 1]
    if not page_size or len(valid) != 2:
        raise ResnetsError(f"{name} is not an LMDB database (or its header is damaged)")
    needed = max(last_page + 1 for *_, last_page, _ in valid) * page_size
    if size < needed:
        raise ResnetsError(f"{name} is truncated: {size} bytes where its LMDB header declares {needed}; "
                           f"copy or pack it again")


# One read-only environment per database file and process: LMDB forbids opening the same
# file twice in a process, and handles do not survive fork. Keyed by process and inode, so a
# forked worker or a database re-packed in place (a new file) gets a new environment.
class _Opened:
    """An open environment, with a descriptor of its data file and that file's size and time then."""

    def __init__(self, env: lmdb.Environment, data_file: Path):
        self.env, self.data_file = env, data_file
        self.fd = os.open(data_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        stat = os.fstat(self.fd)
        self.size, self.mtime_ns = stat.st_size, stat.st_mtime_ns

    def check_unchanged(self) -> None:
        """ResnetsError if the data file was truncated or rewritten in place since it was opened."""
        stat = os.fstat(self.fd)
        if stat.st_size != self.size or stat.st_mtime_ns != self.mtime_ns:
            what = "truncated" if stat.st_size < self.size else "rewritten"
            raise ResnetsError(f"{printable(str(self.data_file))} was {what} in place while being read "
                               f"({stat.st_size} bytes, {self.size} when opened); write a new database "
                               f"under another name (or rename it into place) and resume from the last checkpoint")

    def close(self) -> None:
        self.env.close()
        os.close(self.fd)


_ENVIRONMENTS: dict[tuple[int, str, int, int], _Opened] = {}
_ENVIRONMENTS_LOCK = threading.Lock()


def _open_env(path: Path) -> _Opened:
    stat = path.stat()
    key = (os.getpid(), str(path.resolve()), stat.st_ino, stat.st_mtime_ns)
    with _ENVIRONMENTS_LOCK:
        opened = _ENVIRONMENTS.get(key)
        if opened is None:
            # a stale file's environment, or one inherited through fork (see above)
            for stale in [k for k in _ENVIRONMENTS if k[1] == key[1]]:
                _ENVIRONMENTS.pop(stale).close()
            data_file = path / "data.mdb" if path.is_dir() else path
            check_complete(data_file)
            try:
                env = lmdb.open(os.fsencode(path), readonly=True, lock=False, readahead=False, meminit=False,
                                subdir=path.is_dir(), max_readers=512)
            except lmdb.Error as error:
                raise ResnetsError(f"cannot open LMDB database {printable(str(path))}: {error}") from None
            opened = _ENVIRONMENTS[key] = _Opened(env, data_file)
            _name_mapped_files_on_bus_error()
        return opened


def _name_mapped_files_on_bus_error() -> None:
    """The SIGBUS line names every database this process has mapped (train and val may be two
    files, and the fault does not say which one shrank)."""
    files = sorted({str(opened.data_file) for key, opened in _ENVIRONMENTS.items() if key[0] == os.getpid()})
    which = " or ".join(printable(name) for name in files)
    exit_on_bus_error(f"{which} was truncated in place while being read (a memory-mapped LMDB database); "
                      "files written before are intact")


def record_key(index: int) -> bytes:
    return b"%09d" % index


class LmdbDataset(EncodedImageDataset):
    """Records ``start`` to ``stop`` of a database made by :func:`~.pack.pack_lmdb`.

    The environment (shared by all datasets of the file in this process) is looked up again
    after a fork, so the dataset can be pickled to DataLoader worker processes.
    """

    def __init__(self, path: Path, start: int, labels: list[int], classes: list[str], split: str | None):
        self.path, self.start = path, start
        self.targets, self.classes = labels, classes
        self.source = f"{path}" + (f" [{split}]" if split else "")
        self._env: tuple[int, _Opened] | None = None

    def _record(self, index: int) -> tuple[str, bytes]:
        if self._env is None or self._env[0] != os.getpid():
            self._env = (os.getpid(), _open_env(self.path))
        opened = self._env[1]
        opened.check_unchanged()  # a page past a truncated end would be a SIGBUS, not an error
        with opened.env.begin() as txn:
            value = txn.get(record_key(self.start + index))
        where = f"{printable(str(self.path))} record {self.start + index}"
        if value is None:
            raise ResnetsError(f"{where} is missing; the database is damaged")
        if len(value) < _RECORD_HEADER.size:
            raise ResnetsError(f"{where} is too short to be a record; the database is damaged")
        _, name_length = _RECORD_HEADER.unpack_from(value)
        name_end = _RECORD_HEADER.size + name_length
        return value[_RECORD_HEADER.size:name_end].decode("utf-8", "replace"), value[name_end:]

    def encoded(self, index: int) -> bytes:
        return self._record(index)[1]

    def describe(self, index: int) -> str:
        return f"{self.path}:{self._record(index)[0]}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None}


class LmdbSource:
    """A database made by :func:`~.pack.pack_lmdb`."""

    format = "lmdb"

    def __init__(self, path: Path):
        self.path = path
        name = printable(str(path))
        try:
            with _open_env(path).env.begin() as txn:
                meta, labels = txn.get(b"__meta__"), txn.get(b"__labels__")
        except lmdb.Error as error:
            raise ResnetsError(f"cannot read LMDB database {name}: {error}") from None
        if meta is None or labels is None:
            raise ResnetsError(f"{name} is not a database made by `resnets data pack` (Caffe Datum "
                               f"databases are not read); repack the images with `resnets data pack`")
        self._meta = _checked_meta(meta, labels, name)
        self._labels = np.frombuffer(labels, dtype="<i4").tolist()
        self.classes = list(self._meta["classes"])

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name in self._meta["splits"] if name)

    def dataset(self, split: str | None) -> LmdbDataset:
        start, stop = self._meta["splits"][split or ""]
        return LmdbDataset(self.path, start, self._labels[start:stop], self.classes, split)


register_format(0, is_lmdb, LmdbSource)


def _checked_meta(meta: bytes, labels: bytes, name: str) -> dict[str, Any]:
    """The ``__meta__`` record, checked against what :func:`~.pack.pack_lmdb` writes and the labels."""
    try:
        record = load_json(meta, f"{name}: its __meta__ record")
    except ValueError:  # not JSON, not UTF-8, too deep (load_json's ResnetsError is a ValueError)
        record = None
    if not isinstance(record, dict):
        raise ResnetsError(f"{name}: its __meta__ record is not the JSON object `resnets data pack` writes")
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ResnetsError(f"{name} has unsupported layout {printable(str(record.get('format')))} "
                           f"v{printable(str(record.get('version')))}")
    classes, splits = record.get("classes"), record.get("splits")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ResnetsError(f"{name}: its metadata has no class names (a list of strings)")
    record["classes"] = [printable(c) for c in classes]
    if len(labels) % 4:
        raise ResnetsError(f"{name}: its __labels__ record is not a whole number of int32 labels")
    count = len(labels) // 4
    if not isinstance(splits, dict) or not splits or not all(
            isinstance(split, str) and printable(split) == split and isinstance(span, list) and len(span) == 2
            and all(type(bound) is int for bound in span) and 0 <= span[0] <= span[1] <= count
            for split, span in splits.items()):
        raise ResnetsError(f"{name}: its metadata splits are not [start, stop] record ranges within "
                           f"its {count} labels")
    values = np.frombuffer(labels, dtype="<i4")
    if count and not 0 <= int(values.min()) <= int(values.max()) < len(classes):
        raise ResnetsError(f"{name} has labels outside 0..{len(classes) - 1}")
    return record


def encode_record(label: int, name: str, data: bytes) -> bytes:
    """Record bytes: ``<I label><H name length><name UTF-8><encoded image file>``."""
    encoded_name = printable(name).encode("utf-8")[:65535]
    return _RECORD_HEADER.pack(label, len(encoded_name)) + encoded_name + data
