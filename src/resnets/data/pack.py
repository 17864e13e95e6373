"""Packing any data set this package reads into an LMDB database or WebDataset shards
(``resnets data pack``); the layouts written are those of :mod:`~.lmdbstore` and :mod:`~.shards`.

Both packers decode each image once to check it and skip the unreadable ones alike
(:class:`~.images.SkippedImages`): a warning naming each, the count at the end.
"""

from __future__ import annotations

import errno
import functools
import io
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import lmdb
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ResnetsError, first_line
from ..fileio import atomic_path
from . import lmdbstore, shards
from .dataset import ImageDataset
from .images import BadImageError, SkippedImages, decode_image, printable
from .sources import open_source

# The LMDB map reserves address space, not disk: it starts small and grows with what is written
# (a terabyte reserved up front fails under `ulimit -v`, common on shared clusters).
_FIRST_MAP_SIZE = 64 * 2**20
_WINDOW = 1024  # images decoded ahead of the writer, and written per transaction


def _write_error(error: Exception, dst: Path) -> Exception:
    """lmdb's own error as the one the CLI reports in one line: a full disk is an OSError."""
    message = str(error)
    if "No space left" in message or (_disk_full(dst) and ("Input/output" in message
                                                           or isinstance(error, lmdb.DiskError))):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))  # lmdb says EIO when its mmap hits it
    if isinstance(error, lmdb.MemoryError):  # the map could not grow: an address-space limit
        return ResnetsError(f"cannot map {printable(str(dst))} in memory ({first_line(message)}): the process's "
                            f"address space is limited (ulimit -v); raise the limit or pack in parts or with --size")
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
    source, dst = open_source(src), Path(dst)
    if size is not None and size < 1:
        raise ResnetsError(f"size must be positive, got {size}")
    _check_destination(dst)
    datasets = {name: source.dataset(name) for name in (source.splits or (None,))}
    total = sum(len(ds) for ds in datasets.values())
    spans: dict[str, list[int]] = {}
    labels: list[int] = []
    skipped = SkippedImages()
    with atomic_path(dst) as tmp, ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=total, desc="packing", unit="img", disable=not progress) as bar:
        env = None
        try:
            env = lmdb.open(os.fsencode(tmp), subdir=False, lock=False, map_size=_FIRST_MAP_SIZE, meminit=False)
            for split, dataset in datasets.items():
                start = len(labels)
                for window in _checked_windows(dataset, size, pool, bar, skipped):
                    _put_all(env, [(lmdbstore.record_key(len(labels) + k), lmdbstore.encode_record(
                        dataset.targets[index], dataset.describe(index), record))
                        for k, (index, record) in enumerate(window)])  # one commit per window
                    labels.extend(dataset.targets[index] for index, _ in window)
                spans[split or ""] = [start, len(labels)]
            meta = {"format": lmdbstore.FORMAT, "version": lmdbstore.VERSION, "classes": source.classes,
                    "splits": spans}
            _put_all(env, [(b"__meta__", json.dumps(meta).encode()),
                           (b"__labels__", np.asarray(labels, dtype="<i4").tobytes())])
            env.sync(True)
        except lmdb.Error as error:
            raise _write_error(error, dst) from None
        finally:
            if env is not None:
                env.close()
        if not labels:
            raise ResnetsError(f"no readable images in {printable(str(src))}")
    skipped.warn_count(printable(str(src)), total=total)
    counts = {name or "all": stop - start for name, (start, stop) in spans.items()}
    return {"path": printable(str(dst)), "classes": source.classes, "splits": counts, "skipped": skipped.names}


def _put_all(env: lmdb.Environment, items: list[tuple[bytes, bytes]]) -> None:
    """Write ``items`` in one transaction, growing the map first when they may not fit in it (and
    again if LMDB still finds it full: pages and tree overhead are not known exactly)."""
    needed = sum(len(key) + len(value) for key, value in items)
    info, stat = env.info(), env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    if used + 2 * needed + 2**20 > info["map_size"]:
        env.set_mapsize(max(2 * info["map_size"], used + 2 * needed + 2**20))
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:  # aborted: grow and write the window again
            env.set_mapsize(2 * env.info()["map_size"])


def _check_destination(dst: Path) -> None:
    """ResnetsError if ``dst`` cannot be a new file: it is a folder, or a file stands where a folder must."""
    if dst.is_dir():
        raise ResnetsError(f"{printable(str(dst))} is a folder; give the database file to write, "
                           f"e.g. {printable(str(dst / 'data.lmdb'))}")
    existing = next((folder for folder in dst.parents if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResnetsError(f"cannot write {printable(str(dst))}: {printable(str(existing))} is a file, not a folder")


def _checked_windows(dataset: ImageDataset, size: int | None, pool: ThreadPoolExecutor, bar: tqdm,
                     skipped: SkippedImages) -> Iterator[list[tuple[int, bytes]]]:
    """(index, bytes to store) of the readable images of ``dataset``, :data:`_WINDOW` at a time (the
    images checked ahead of the writer, so memory stays bounded); the others are ``skipped``."""
    check = functools.partial(_checked, dataset, size=size)
    for start in range(0, len(dataset), _WINDOW):
        indices = range(start, min(start + _WINDOW, len(dataset)))
        window = []
        for index, record in zip(indices, pool.map(check, indices)):
            bar.update()
            if record is None:
                skipped.add(dataset.describe(index), stacklevel=4)  # the caller of pack_lmdb or pack_wds
            else:
                window.append((index, record))
        yield window


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


def pack_wds(src: str | os.PathLike, dst: str | os.PathLike, shard_size: int = 1000, size: int | None = None,
             workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Write every split of the data set at ``src`` as WebDataset shards in folder ``dst``.

    Shards are ``SPLIT-000000.tar`` (``data-`` for an unsplit set) of ``shard_size`` samples,
    each written to a temporary name and renamed when complete; ``manifest.json`` is written
    last, so a folder with a manifest is complete. Images are checked (decoded once) and
    unreadable ones skipped with a warning, as :func:`pack_lmdb` does.
    """
    if shard_size < 1:
        raise ResnetsError(f"shard size must be positive, got {shard_size}")
    if size is not None and size < 1:
        raise ResnetsError(f"size must be positive, got {size}")
    source, dst = open_source(src), Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ResnetsError(f"{printable(str(dst))} is a file; give a folder for the shards")
    if (dst / shards.MANIFEST).exists():
        raise ResnetsError(f"{printable(str(dst))} already holds packed shards; choose a new folder")
    datasets = {name: source.dataset(name) for name in (source.splits or (None,))}
    splits: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    skipped = SkippedImages()
    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=sum(map(len, datasets.values())), desc="packing", unit="img", disable=not progress) as bar:
        for split, dataset in datasets.items():
            files, written = splits.setdefault(split or "", []), 0
            records = ((dataset.targets[index], record) for index, record
                       in itertools.chain.from_iterable(_checked_windows(dataset, size, pool, bar, skipped)))
            while shard := list(itertools.islice(records, shard_size)):
                files.append(shards.write_shard(dst, split or "data", len(files), written, shard))
                written += len(shard)
            counts[split or "all"] = written
    if not any(counts.values()):
        raise ResnetsError(f"no readable images in {printable(str(src))}")
    manifest = {"format": shards.FORMAT, "version": shards.VERSION, "classes": source.classes, "splits": splits,
                "counts": counts, "shard_size": shard_size}
    with atomic_path(dst / shards.MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    skipped.warn_count(printable(str(src)))
    return {"path": printable(str(dst)), "classes": source.classes, "splits": counts, "skipped": skipped.names,
            "shards": sum(len(files) for files in splits.values())}
