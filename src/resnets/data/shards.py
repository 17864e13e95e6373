"""WebDataset tar shards: read at random, written by ``resnets data pack SRC DIR --format wds``.

A shard is a plain (uncompressed) tar whose members are grouped into samples by key, the
member name up to the first dot of its file name (``000042.jpg`` + ``000042.cls``): the
WebDataset convention, so shards made by ``webdataset.TarWriter`` are read too. A sample
needs one image member (any of :data:`~.images.IMAGE_EXTENSIONS`) and a ``.cls`` member
holding its integer label.

Training shuffles and shards items by index (the exact-resume sampler), so shards are read at
random, not streamed: each shard's tar headers are scanned once when the data set opens
(offsets, sizes and the small ``.cls`` members, never the images), and an image is one seek
and one bounded read. Compressed shards (``.tar.gz``) cannot be read this way and are refused.

A folder of shards may hold ``manifest.json`` (written by :func:`~.pack.pack_wds`): class names and
the shards of each split. :func:`~.pack.pack_wds` also writes ``SHARD.tar.idx.json`` beside each shard
(every sample's offset, size and label), so opening a packed set reads no shard; an index is
used only while the shard keeps its size, and each read through it checks the member's header. Without one, shards named ``train-*.tar``, ``val-*.tar`` ... form
splits, and classes are named by their numbers.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import stat
import tarfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ..errors import ResnetsError, first_line
from ..fileio import atomic_paths
from ..textparse import load_json, read_limited
from .base import VAL_SPLITS, register_format
from .dataset import EncodedImageDataset
from .images import MAX_IMAGE_BYTES, BadImageError, BadImageWarning, is_image_name, printable

FORMAT = "resnets-wds"
VERSION = 1
MANIFEST = "manifest.json"
LABEL_EXTENSION = "cls"
MAX_LABEL_BYTES = 32  # a .cls member holds one decimal integer
MAX_MANIFEST_BYTES = 16 * 2**20
INDEX_SUFFIX = ".idx.json"  # written beside each shard by pack_wds: offsets and labels, so opening skips the scan
MAX_HEADER_BYTES = 2**20  # a tar header (pax records, long names) read while indexing
MAX_CLASSES = 1_000_000  # classes named by number: a larger label is taken as corrupt
MIN_UNDECLARED_CLASSES = 1000  # labels below this always pass as class numbers (see check_class_number)
_SPLIT_NAME = re.compile(r"^(train|" + "|".join(VAL_SPLITS) + r")[-_.]")


class Sample(NamedTuple):
    """Where one sample's image lies: shard file, byte offset and size in it, and a name to show.

    ``from_index``: the place comes from an index file, not from scanning the shard, so each read
    checks that the tar header just before it names this member with this size.
    """

    shard: int
    offset: int
    size: int
    name: str
    from_index: bool = False


def is_wds(path: Path) -> bool:
    """A ``.tar`` file, or a folder holding a manifest or ``.tar`` files (and nothing that makes it an image tree)."""
    if path.is_file():
        return path.suffix.lower() == ".tar"
    return path.is_dir() and ((path / MANIFEST).is_file()
                              or any(child.suffix.lower() == ".tar" and child.is_file() for child in path.iterdir()))


class WdsDataset(EncodedImageDataset):
    """The samples of some shards; pickles to DataLoader workers (no open file is kept)."""

    def __init__(self, shards: list[Path], samples: list[Sample], targets: list[int], classes: list[str],
                 source: str):
        self.shards, self.samples = shards, samples
        self.targets, self.classes, self.source = targets, classes, source

    def encoded(self, index: int) -> bytes:
        sample = self.samples[index]
        if sample.size > MAX_IMAGE_BYTES:
            raise BadImageError(f"cannot read image {self.describe(index)}: {sample.size} bytes, more than the "
                                f"{MAX_IMAGE_BYTES} an image file may have")
        header = tarfile.BLOCKSIZE if sample.from_index else 0
        try:
            with open(self.shards[sample.shard], "rb") as handle:
                handle.seek(sample.offset - header)
                data = handle.read(header + sample.size)
        except OSError as error:
            raise BadImageError(f"cannot read image {self.describe(index)}: {error.strerror or error}") from None
        if header and not _header_matches(data[:header], sample):
            raise BadImageError(f"cannot read image {self.describe(index)}: the shard changed since its index "
                                f"{_index_path(self.shards[sample.shard]).name} was written; delete the index")
        data = data[header:]
        if len(data) != sample.size:
            raise BadImageError(f"cannot read image {self.describe(index)}: the shard ends inside it (truncated)")
        return data

    def describe(self, index: int) -> str:
        sample = self.samples[index]
        return f"{self.shards[sample.shard]}:{sample.name}"


def _split_key(member_name: str) -> tuple[str, str]:
    """(key, extension) of a tar member: the WebDataset convention splits at the file name's first dot."""
    folder, _, base = member_name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _index_shard(path: Path, shard: int) -> list[tuple[Sample, int | None]]:
    """The samples of one shard with their labels (None where the ``.cls`` is missing or unreadable).

    Only headers and ``.cls`` members are read. Raises ResnetsError (one line) when the file is
    not an uncompressed tar.
    """
    name = printable(str(path))
    images: dict[str, Sample] = {}
    labels: dict[str, int | None] = {}
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ResnetsError(f"shard {name} is not a regular file")
            with tarfile.open(fileobj=_BoundedReads(handle, name), mode="r:") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, extension = _split_key(member.name)
                    if extension == LABEL_EXTENSION:
                        labels[key] = _read_label(handle, member)
                    elif is_image_name(f".{extension}") and key not in images:
                        images[key] = Sample(shard, member.offset_data, member.size, printable(member.name))
                _check_end(handle, archive.offset, name)
    except tarfile.ReadError as error:
        raise ResnetsError(f"shard {name} is not an uncompressed tar file ({first_line(error)})") from None
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ResnetsError(f"cannot read shard {name}: {first_line(error)}") from None
    return [(sample, labels.get(key)) for key, sample in images.items()]


def _check_end(handle: io.BufferedReader, offset: int, name: str) -> None:
    """Warn when a shard does not end with the zero block that ends every tar, where tarfile
    stopped: it was cut short (an interrupted copy or download: nothing left, or part of a header)
    or damaged there (bytes that are no header), and tarfile ends silently in each case, dropping
    the samples that followed."""
    size = os.fstat(handle.fileno()).st_size
    handle.seek(min(offset, size))
    if handle.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        warnings.warn(f"shard {name} is cut short: it ends at byte {min(offset, size)} without tar's "
                      f"end-of-archive blocks (the file has {size} bytes), so samples after its last "
                      f"complete member are missing; copy it again", BadImageWarning, stacklevel=2)


def _index_path(shard: Path) -> Path:
    return shard.with_name(shard.name + INDEX_SUFFIX)


def _header_matches(block: bytes, sample: Sample) -> bool:
    """Whether ``block`` is the ustar header of ``sample`` (its name and size), as pack_wds writes it."""
    try:
        return (len(block) == tarfile.BLOCKSIZE and block[:100].rstrip(b"\0").decode() == sample.name
                and int(block[124:136].strip(b"\0 ") or b"0", 8) == sample.size)
    except (UnicodeDecodeError, ValueError):
        return False


def _indexed_shard(path: Path, shard: int) -> list[tuple[Sample, int | None]]:
    """:func:`_index_shard`'s answer, from the index :func:`write_shard` wrote beside the shard when it
    is there and matches the shard's size (else the shard is scanned). An index can only point
    inside its shard: a wrong one gives undecodable images, which are skipped and named."""
    index = _index_path(path)
    try:
        size = path.stat().st_size
        record = load_json(read_limited(index, MAX_MANIFEST_BYTES), printable(str(index)))
    except (OSError, ValueError):  # missing, no regular file (a FIFO is not waited on), too large or deep
        return _index_shard(path, shard)
    entries = record.get("samples") if isinstance(record, dict) and record.get("shard_bytes") == size else None
    valid = isinstance(entries, list) and all(
        isinstance(e, list) and len(e) == 4 and isinstance(e[0], str) and type(e[1]) is int and type(e[2]) is int
        and tarfile.BLOCKSIZE <= e[1] and 0 <= e[2] and e[1] + e[2] <= size and (e[3] is None or type(e[3]) is int)
        for e in entries)
    if not valid:
        return _index_shard(path, shard)
    return [(Sample(shard, offset, length, printable(name), True), label) for name, offset, length, label in entries]


class _BoundedReads:
    """A file whose reads are refused above :data:`MAX_HEADER_BYTES`.

    tarfile reads a pax or GNU long-name header whole, at the size the header declares; a
    shard declaring a huge one must fail, not fill memory. Image data is never read here.
    """

    def __init__(self, handle: io.BufferedReader, name: str):
        self._handle, self._name = handle, name
        self.seek, self.tell = handle.seek, handle.tell

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_HEADER_BYTES:
            raise ResnetsError(f"shard {self._name} declares a tar header of more than {MAX_HEADER_BYTES} bytes")
        return self._handle.read(size)


def _read_label(handle: io.BufferedReader, member: tarfile.TarInfo) -> int | None:
    """The integer in a ``.cls`` member, read directly (tarfile seeks back to its next header itself)."""
    if member.size > MAX_LABEL_BYTES:
        return None
    handle.seek(member.offset_data)
    text = handle.read(member.size)
    try:
        return int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


class WdsSource:
    """A ``.tar`` shard, or a folder of shards (with or without ``manifest.json``)."""

    format = "webdataset"

    def __init__(self, path: Path):
        self.path = path
        manifest = _read_manifest(path / MANIFEST) if path.is_dir() and (path / MANIFEST).is_file() else None
        self._split_shards = _manifest_splits(path, manifest) if manifest else _named_splits(path)
        self._indexed = {split: self._index(shards) for split, shards in self._split_shards.items()}
        largest = max((max(labels, default=-1) for _, labels in self._indexed.values()), default=-1)
        if not manifest:
            self._check_undeclared(largest)
        self.classes = list(manifest["classes"]) if manifest else [str(k) for k in range(largest + 1)]
        if largest >= len(self.classes):
            raise ResnetsError(f"{printable(str(path))} has label {largest}, past its {len(self.classes)} classes")
        if not self.classes:
            raise ResnetsError(f"no labelled samples in {printable(str(path))}")

    def _check_undeclared(self, largest: int) -> None:
        """Classes named by number must be backed by the data (:func:`check_class_number`)."""
        count = sum(len(labels) for _, labels in self._indexed.values())
        for split, (samples, labels) in self._indexed.items():
            if largest in labels:
                sample = samples[labels.index(largest)]
                where = f"{printable(str(self._split_shards[split][sample.shard]))}:{sample.name}"
                check_class_number(largest, count, where, f"declare the classes in {MANIFEST}")

    def _index(self, shards: list[Path]) -> tuple[list[Sample], list[int]]:
        samples: list[Sample] = []
        targets: list[int] = []
        for number, shard in enumerate(shards):
            for sample, label in _indexed_shard(shard, number):
                if label is None or not 0 <= label < MAX_CLASSES:
                    warnings.warn(f"skipped sample {printable(str(shard))}:{sample.name}: no readable "
                                  f".{LABEL_EXTENSION} label", BadImageWarning, stacklevel=3)
                    continue
                samples.append(sample)
                targets.append(label)
        return samples, targets

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name in self._split_shards if name)

    def dataset(self, split: str | None) -> WdsDataset:
        samples, targets = self._indexed[split or ""]
        source = printable(str(self.path)) + (f" [{split}]" if split else "")
        return WdsDataset(self._split_shards[split or ""], samples, targets, self.classes, source)


register_format(50, is_wds, WdsSource)


def check_class_number(label: int, samples: int, where: str, declare: str) -> None:
    """Refuse a class number the data cannot back, where no class list is declared: one of at least
    :data:`MIN_UNDECLARED_CLASSES` and 10 x the ``samples`` would size the model's head by one label."""
    limit = max(MIN_UNDECLARED_CLASSES, 10 * samples)
    if label >= limit:
        raise ResnetsError(f"{where} has label {label}, far past its {samples} labelled samples (classes named "
                           f"by number stop below {limit}); {declare}")


def _read_manifest(path: Path) -> dict[str, Any]:
    name = printable(str(path))
    try:
        record = load_json(read_limited(path, MAX_MANIFEST_BYTES), name)
    except (OSError, ValueError):  # ValueError: a ResnetsError of the bounded readers (FIFO, size, depth)
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ResnetsError(f"{name} is not a manifest written by `resnets data pack --format wds`")
    classes, splits = record.get("classes"), record.get("splits")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ResnetsError(f"{name} has no class names (a list of strings)")
    if not isinstance(splits, dict) or not splits or not all(
            isinstance(split, str) and isinstance(files, list) and all(isinstance(f, str) for f in files)
            for split, files in splits.items()):
        raise ResnetsError(f"{name}: its splits are not lists of shard file names")
    record["classes"] = [printable(c) for c in classes]
    return record


def _manifest_splits(folder: Path, manifest: dict[str, Any]) -> dict[str, list[Path]]:
    for file in itertools.chain.from_iterable(manifest["splits"].values()):
        if Path(file).is_absolute() or ".." in Path(file).parts or not (folder / file).is_file():
            raise ResnetsError(f"shard {printable(file)} named in {printable(str(folder / MANIFEST))} "
                               f"is missing (or not inside the folder)")
    return {split: [folder / file for file in files] for split, files in manifest["splits"].items()}


def _named_splits(path: Path) -> dict[str, list[Path]]:
    """One split per ``train-*.tar`` / ``val-*.tar`` ... name prefix, or all shards as one unsplit set."""
    shards = [path] if path.is_file() else sorted(p for p in path.glob("*.tar") if p.is_file())
    if not shards:
        raise ResnetsError(f"no .tar shards in {printable(str(path))}")
    named: dict[str, list[Path]] = {}
    for shard in shards:
        match = _SPLIT_NAME.match(shard.name)
        named.setdefault(match.group(1) if match else "", []).append(shard)
    if "" in named and len(named) > 1:
        unnamed = printable(named[""][0].name)
        raise ResnetsError(f"{printable(str(path))} mixes split-named shards with {unnamed}; name every shard "
                           f"train-*.tar, val-*.tar ... or none")
    return named


def write_shard(dst: Path, prefix: str, number: int, first: int, records: list[tuple[int, bytes]]) -> str:
    """Write one shard of (label, image bytes) ``records`` and its index, atomically; its name."""
    name = f"{prefix}-{number:06d}.tar"
    with atomic_paths(dst / name, _index_path(dst / name)) as (tmp, index):
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as archive:
            for offset, (label, data) in enumerate(records):
                key = f"{first + offset:09d}"
                _add_member(archive, f"{key}.{_extension(data)}", data)
                _add_member(archive, f"{key}.{LABEL_EXTENSION}", str(label).encode())
        samples = [[s.name, s.offset, s.size, label] for s, label in _index_shard(tmp, 0)]
        index.write_text(json.dumps({"shard_bytes": tmp.stat().st_size, "samples": samples}))
    return name


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    archive.addfile(info, io.BytesIO(data))


def _extension(data: bytes) -> str:
    """The file extension of encoded image ``data``, from its header (``jpg`` when unknown)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "JPEG").lower()
    except Exception:  # noqa: BLE001 - it decoded once already; any doubt keeps the default
        kind = "jpeg"
    extension = {"jpeg": "jpg", "tiff": "tif"}.get(kind, kind)
    return extension if is_image_name(f".{extension}") else "png"  # PIL decodes by content, not name
