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
"""

from __future__ import annotations

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

from ..errors import ResnetsError
from ..fileio import atomic_path
from .dataset import EncodedImageDataset, ImageDataset
from .images import BadImageError, BadImageWarning, decode_image

FORMAT = "resnets-lmdb"
VERSION = 1
_RECORD_HEADER = struct.Struct("<IH")
_MAP_SIZE = 2**40  # address space only: LMDB files grow as written


def is_lmdb(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in (".lmdb", ".mdb")) or \
        (path.is_dir() and (path / "data.mdb").is_file())


# One read-only environment per database file and process: LMDB forbids opening the same
# file twice in a process, and handles do not survive fork. Keyed by inode, so a database
# re-packed in place (a new file) gets a new environment.
_ENVIRONMENTS: dict[tuple[int, str, int, int], lmdb.Environment] = {}
_ENVIRONMENTS_LOCK = threading.Lock()


def _open_env(path: Path) -> lmdb.Environment:
    stat = path.stat()
    key = (os.getpid(), str(path.resolve()), stat.st_ino, stat.st_mtime_ns)
    with _ENVIRONMENTS_LOCK:
        env = _ENVIRONMENTS.get(key)
        if env is None:
            for stale in [k for k in _ENVIRONMENTS if k[1] == key[1] and k[0] == key[0]]:
                _ENVIRONMENTS.pop(stale).close()
            try:
                env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                                subdir=path.is_dir(), max_readers=512)
            except lmdb.Error as error:
                raise ResnetsError(f"cannot open LMDB database {path}: {error}") from None
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
        if value is None:
            raise ResnetsError(f"{self.path} lacks record {self.start + index}; the database is damaged")
        _, name_length = _RECORD_HEADER.unpack_from(value)
        name_end = _RECORD_HEADER.size + name_length
        return value[_RECORD_HEADER.size:name_end].decode("utf-8"), value[name_end:]

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
        with _open_env(path).begin() as txn:
            meta, labels = txn.get(b"__meta__"), txn.get(b"__labels__")
        if meta is None or labels is None:
            raise ResnetsError(f"{path} is not a database made by `resnets data pack` (Caffe Datum "
                               f"databases are not read); repack the images with `resnets data pack`")
        self._meta = json.loads(meta)
        if self._meta.get("format") != FORMAT or self._meta.get("version") != VERSION:
            raise ResnetsError(f"{path} has unsupported layout {self._meta.get('format')} "
                               f"v{self._meta.get('version')}")
        self._labels = np.frombuffer(labels, dtype="<i4").tolist()
        self.classes = list(self._meta["classes"])

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name in self._meta["splits"] if name)

    def dataset(self, split: str | None) -> LmdbDataset:
        start, stop = self._meta["splits"][split or ""]
        return LmdbDataset(self.path, start, self._labels[start:stop], self.classes, split)


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
        raise ResnetsError(f"--size must be positive, got {size}")
    datasets = {name: source.dataset(name) for name in (source.splits or (None,))}
    total = sum(len(ds) for ds in datasets.values())
    spans: dict[str, list[int]] = {}
    labels: list[int] = []
    skipped: list[str] = []
    with atomic_path(dst) as tmp, ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=total, desc="packing", unit="img", disable=not progress) as bar:
        env = lmdb.open(str(tmp), subdir=False, lock=False, map_size=_MAP_SIZE, meminit=False)
        try:
            for split, dataset in datasets.items():
                start = len(labels)
                txn = env.begin(write=True)
                for index, record in enumerate(pool.map(lambda i: _checked(dataset, i, size),
                                                        range(len(dataset)))):
                    bar.update()
                    if record is None:
                        skipped.append(dataset.describe(index))
                        warnings.warn(f"skipped unreadable image {skipped[-1]}", BadImageWarning,
                                      stacklevel=2)
                        continue
                    txn.put(_record_key(len(labels)), _encode_record(dataset.targets[index],
                                                                     dataset.describe(index), record))
                    labels.append(dataset.targets[index])
                    if len(labels) % 1000 == 0:
                        txn.commit()
                        txn = env.begin(write=True)
                txn.commit()
                spans[split or ""] = [start, len(labels)]
            meta = {"format": FORMAT, "version": VERSION, "classes": source.classes, "splits": spans}
            with env.begin(write=True) as txn:
                txn.put(b"__meta__", json.dumps(meta).encode())
                txn.put(b"__labels__", np.asarray(labels, dtype="<i4").tobytes())
            env.sync(True)
        finally:
            env.close()
        if not labels:
            raise ResnetsError(f"no readable images in {src}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {total} in {src}", BadImageWarning,
                      stacklevel=2)
    counts = {name or "all": stop - start for name, (start, stop) in spans.items()}
    return {"path": str(dst), "classes": source.classes, "splits": counts, "skipped": skipped}


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
    encoded_name = name.encode("utf-8")[:65535]
    return _RECORD_HEADER.pack(label, len(encoded_name)) + encoded_name + data
