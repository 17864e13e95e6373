"""An LMDB database of encoded images, the ``backend: LMDB`` of Caffe's data layers.

Made by :func:`pack_lmdb` (``resnets data pack SRC DST.lmdb``) from any source this package
reads. Layout (our own, simpler than Caffe's ``Datum`` protobuf, which is not read):

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
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ResnetsError, first_line
from ..fileio import atomic_path
from .dataset import EncodedImageDataset, ImageDataset
from .images import BadImageError, BadImageWarning, decode_image, printable

FORMAT = "resnets-lmdb"
VERSION = 1
_RECORD_HEADER = struct.Struct("<IH")
_MAP_SIZE = 2**40  # address space only: LMDB files grow as written
_WINDOW = 1024  # images decoded ahead of the writer, and written per transaction


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
_ENVIRONMENTS: dict[tuple[int, str, int, int], lmdb.Environment] = {}
_ENVIRONMENTS_LOCK = threading.Lock()


def _open_env(path: Path) -> lmdb.Environment:
    stat = path.stat()
    key = (os.getpid(), str(path.resolve()), stat.st_ino, stat.st_mtime_ns)
    with _ENVIRONMENTS_LOCK:
        env = _ENVIRONMENTS.get(key)
        if env is None:
            # a stale file's, or one inherited through fork (lmdb refuses a second open of
            # a file in a process, and a parent's handle must not be used in a child)
            for stale in [k for k in _ENVIRONMENTS if k[1] == key[1]]:
                _ENVIRONMENTS.pop(stale).close()
            check_complete(path / "data.mdb" if path.is_dir() else path)
            try:
                env = lmdb.open(os.fsencode(path), readonly=True, lock=False, readahead=False, meminit=False,
                                subdir=path.is_dir(), max_readers=512)
            except lmdb.Error as error:
                raise ResnetsError(f"cannot open LMDB database {printable(str(path))}: {error}") from None
            _ENVIRONMENTS[key] = env
        return env


def _record_key(index: int) -> bytes:
    return b"%09d" % index


class LmdbDataset(EncodedImageDataset):
    """Records ``start`` to ``stop`` of a database made by :func:`pack_lmdb`.

    The environment (shared by all datasets of the file in this process) is looked up again
    after a fork, so the dataset can be pickled to DataLoader worker processes.
    """

    def __init__(self, path: Path, start: int, labels: list[int], classes: list[str], split: str | None):
        self.path, self.start = path, start
        self.targets, self.classes = labels, classes
        self.source = f"{path}" + (f" [{split}]" if split else "")
        self._env: tuple[int, lmdb.Environment] | None = None

    def _record(self, index: int) -> tuple[str, bytes]:
        if self._env is None or self._env[0] != os.getpid():
            self._env = (os.getpid(), _open_env(self.path))
        with self._env[1].begin() as txn:
            value = txn.get(_record_key(self.start + index))
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
    """A database made by :func:`pack_lmdb`."""

    format = "lmdb"

    def __init__(self, path: Path):
        self.path = path
        name = printable(str(path))
        try:
            with _open_env(path).begin() as txn:
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


def _checked_meta(meta: bytes, labels: bytes, name: str) -> dict[str, Any]:
    """The ``__meta__`` record, checked against what :func:`pack_lmdb` writes and the labels."""
    try:
        record = json.loads(meta)
    except ValueError:  # not JSON, or not UTF-8
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


def _write_error(error: Exception, dst: Path) -> Exception:
    """lmdb's own error as the one the CLI reports in one line: a full disk is an OSError."""
    message = str(error)
    if "No space left" in message or (_disk_full(dst) and ("Input/output" in message
                                                           or isinstance(error, lmdb.DiskError))):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))  # lmdb says EIO when its mmap hits it
    if isinstance(error, lmdb.MapFullError):
        return ResnetsError(f"the images need more than the LMDB map's {_MAP_SIZE / 2**30:.0f} GiB; pack them "
                            "in parts or with --size")
    return ResnetsError(f"cannot write {printable(str(dst))}: {first_line(message)}")


def _disk_full(dst: Path) -> bool:
    try:
        stats = os.statvfs(dst.parent)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 4 * 2**20


def pack_lmdb(src: str | os.PathLike, dst: str | os.PathLike, size: int | None = None, workers: int = 2,
              progress: bool = True) -> dict[str, Any]:
    """Write every split of the data set at ``src`` into a new LMDB database ``dst``.

    Each image is decoded once to check it; unreadable ones are skipped with a warning naming
    each file and a count at the end. ``size`` resizes the shorter side of larger images to
    ``size`` pixels (re-encoded as JPEG); without it the original file bytes are stored.
    Returns ``{"classes", "splits": {name: count}, "skipped": [file, ...], "path"}``.
    """
    from .sources import open_source

    source = open_source(src)
    dst = Path(dst)
    if size is not None and size < 1:
        raise ResnetsError(f"size must be positive, got {size}")
    _check_destination(dst)
    datasets = {name: source.dataset(name) for name in (source.splits or (None,))}
    total = sum(len(ds) for ds in datasets.values())
    spans: dict[str, list[int]] = {}
    labels: list[int] = []
    skipped: list[str] = []
    with atomic_path(dst) as tmp, ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=total, desc="packing", unit="img", disable=not progress) as bar:
        env = lmdb.open(os.fsencode(tmp), subdir=False, lock=False, map_size=_MAP_SIZE, meminit=False)
        try:
            for split, dataset in datasets.items():
                start = len(labels)
                check = functools.partial(_checked, dataset, size=size)
                for window in range(0, len(dataset), _WINDOW):  # bounded memory, one commit each
                    indices = range(window, min(window + _WINDOW, len(dataset)))
                    with env.begin(write=True) as txn:
                        for index, record in zip(indices, pool.map(check, indices)):
                            bar.update()
                            if record is None:
                                skipped.append(dataset.describe(index))
                                warnings.warn(f"skipped unreadable image {skipped[-1]}", BadImageWarning,
                                              stacklevel=2)
                                continue
                            txn.put(_record_key(len(labels)), _encode_record(
                                dataset.targets[index], dataset.describe(index), record))
                            labels.append(dataset.targets[index])
                spans[split or ""] = [start, len(labels)]
            meta = {"format": FORMAT, "version": VERSION, "classes": source.classes, "splits": spans}
            with env.begin(write=True) as txn:
                txn.put(b"__meta__", json.dumps(meta).encode())
                txn.put(b"__labels__", np.asarray(labels, dtype="<i4").tobytes())
            env.sync(True)
        except lmdb.Error as error:
            raise _write_error(error, dst) from None
        finally:
            env.close()
        if not labels:
            raise ResnetsError(f"no readable images in {printable(str(src))}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {total} in {printable(str(src))}",
                      BadImageWarning,
                      stacklevel=2)
    counts = {name or "all": stop - start for name, (start, stop) in spans.items()}
    return {"path": printable(str(dst)), "classes": source.classes, "splits": counts, "skipped": skipped}


def _check_destination(dst: Path) -> None:
    """ResnetsError if ``dst`` cannot be a new file: it is a folder, or a file stands where a folder must."""
    if dst.is_dir():
        raise ResnetsError(f"{printable(str(dst))} is a folder; give the database file to write, "
                           f"e.g. {printable(str(dst / 'data.lmdb'))}")
    existing = next((folder for folder in dst.parents if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResnetsError(f"cannot write {printable(str(dst))}: {printable(str(existing))} is a file, not a folder")


def _checked(dataset: ImageDataset, index: int, size: int | None) -> bytes | None:
    """The bytes to store for item ``index`` (decoded once to check), or None if unreadable."""
    try:
        data = dataset.encoded(index)
        image = decode_image(data, dataset.describe(index))
    except BadImageError:
        return None
    if size is None or min(image.size) <= size:
        return data
    scale = size / min(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _encode_record(label: int, name: str, data: bytes) -> bytes:
    encoded_name = printable(name).encode("utf-8")[:65535]
    return _RECORD_HEADER.pack(label, len(encoded_name)) + encoded_name + data
