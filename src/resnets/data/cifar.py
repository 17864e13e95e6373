"""CIFAR-10 / CIFAR-100 in the original "python version" pickles, as users download them.

Either the extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``) or the
``.tar.gz`` itself, read in place. The batches are pickles, and a pickle can run any code
while loading; these are loaded with :mod:`resnets.safepickle`, which resolves only the
numpy globals an array needs and refuses every other global, so a doctored file fails with
an error instead of running anything.
"""

from __future__ import annotations

import pickle
import stat
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ResnetsError, first_line
from ..safepickle import load_numpy_pickle
from .base import register_format
from .dataset import ImageDataset
from .images import printable

# No CIFAR file is larger (CIFAR-100's train pickle is 150 MiB); a bigger one is not read.
MAX_CIFAR_FILE_BYTES = 512 * 2**20

# file names (inside the folder or archive) of each layout: meta file, class-name key,
# label key, and the batches of each split.
_LAYOUTS = {
    "cifar10": ("batches.meta", "label_names", "labels",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}),
    "cifar100": ("meta", "fine_label_names", "fine_labels", {"train": ["train"], "test": ["test"]}),
}


def load_pickle(data: bytes, name: str) -> Any:
    """Unpickle ``data`` safely (:mod:`resnets.safepickle`); ResnetsError naming ``name`` on refusal."""
    try:
        return load_numpy_pickle(data, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ResnetsError(f"{name} is not a CIFAR batch that can be loaded safely: {error}") from None


class CifarDataset(ImageDataset):
    """One split of CIFAR-10/100, held decoded as a uint8 (N, 3, 32, 32) tensor."""

    def __init__(self, pixels: torch.Tensor, labels: list[int], names: list[str], classes: list[str],
                 source: str):
        self.pixels, self.targets, self.names = pixels, labels, names
        self.classes, self.source = classes, source

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.pixels[index].permute(1, 2, 0).numpy()), self.targets[index]

    def describe(self, index: int) -> str:
        return f"{self.source}:{self.names[index]}"

    def as_uint8(self) -> torch.Tensor:
        return self.pixels


class CifarSource:
    """CIFAR pickles in a folder or in the downloaded ``.tar.gz``."""

    format = "cifar-pickle"
    splits = ("train", "test")

    def __init__(self, path: Path):
        self.path = path
        files = _read_tar(path) if path.is_file() else _read_dir(path)
        kind = detect_layout(files)
        if kind is None:
            raise ResnetsError(f"{path} holds no CIFAR batches (expected data_batch_1..5 + "
                               f"batches.meta, or train + test + meta)")
        meta_name, names_key, self._label_key, self._batches = _LAYOUTS[kind]
        self._files = files
        where = f"{printable(str(path))}/{meta_name}"
        meta = _plain_keys(load_pickle(files[meta_name], where), where)
        names = meta.get(names_key)
        if not isinstance(names, (list, tuple)) or not names \
                or not all(isinstance(name, (str, bytes)) for name in names):
            raise ResnetsError(f"{where} has no class names: expected a list of names under {names_key!r}")
        self.classes = [printable(_text(name)) for name in names]

    def dataset(self, split: str | None) -> CifarDataset:
        pixels, labels, names = [], [], []
        for batch_name in self._batches[split]:
            where = f"{printable(str(self.path))}/{batch_name}"
            if batch_name not in self._files:
                raise ResnetsError(f"{where} is missing; the CIFAR download is incomplete")
            data, batch_labels, batch_names = self._batch(batch_name, where)
            pixels.append(data.reshape(-1, 3, 32, 32))
            labels.extend(batch_labels)
            names.extend(batch_names)
        return CifarDataset(torch.from_numpy(np.concatenate(pixels)), labels, names, self.classes,
                            f"{printable(str(self.path))} [{split}]")

    def _batch(self, batch_name: str, where: str) -> tuple[np.ndarray, list[int], list[str]]:
        """(uint8 (N, 3072) pixels, N labels, N names) of one batch, checked."""
        batch = _plain_keys(load_pickle(self._files[batch_name], where), where)
        data = np.asarray(batch.get("data"))
        raw_labels = batch.get(self._label_key)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or not isinstance(raw_labels, (list, tuple, np.ndarray)) or len(raw_labels) != len(data):
            raise ResnetsError(f"{where} is not a CIFAR batch: expected uint8 data of shape "
                               f"(N, 3072) and N labels")
        try:
            batch_labels = [int(label) for label in raw_labels]
        except (TypeError, ValueError):
            raise ResnetsError(f"{where} has labels that are not integers") from None
        if batch_labels and not 0 <= min(batch_labels) <= max(batch_labels) < len(self.classes):
            raise ResnetsError(f"{where} has labels outside 0..{len(self.classes) - 1}")
        names = batch.get("filenames")
        if not isinstance(names, (list, tuple)) or len(names) != len(data):
            names = [f"{batch_name}#{i}" for i in range(len(data))]
        return data, batch_labels, [printable(_text(name)) for name in names]


def detect_layout(files: dict[str, bytes] | set[str]) -> str | None:
    """"cifar10", "cifar100" or None, from the file names present."""
    for kind, (meta_name, _, _, batches) in _LAYOUTS.items():
        if meta_name in files and batches["train"][0] in files:
            return kind
    return None


def _cifar_names() -> set[str]:
    """Every file name a CIFAR layout reads; nothing else in a folder or archive is read."""
    return {name for meta, _, _, batches in _LAYOUTS.values()
            for name in (meta, *batches["train"], *batches["test"])}


def is_cifar_dir(path: Path) -> bool:
    return path.is_dir() and detect_layout(set(_regular_files(path))) is not None


def _tar_mode(path: Path) -> str | None:
    """tarfile's mode for a plain, gzip or bzip2 tar, by its first bytes; None for anything else.

    Not ``tarfile.is_tarfile``: it also tries LZMA, whose header may declare a dictionary of
    gigabytes that the probe allocates (a MemoryError under ``ulimit -v``). CIFAR ships as .tar.gz.
    """
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(b"\x1f\x8b"):
        return "r:gz"
    if head.startswith(b"BZh"):
        return "r:bz2"
    return "r:" if head[257:262] == b"ustar" else None


def is_cifar_tar(path: Path) -> bool:
    """Whether ``path`` is a tarball holding CIFAR batches; ResnetsError if it is a tar that cannot be read."""
    try:
        mode = _tar_mode(path) if path.is_file() else None
        if mode is None:
            return False
        with tarfile.open(path, mode) as archive:
            return detect_layout({Path(n).name for n in archive.getnames()}) is not None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ResnetsError(f"cannot read archive {printable(str(path))}: {first_line(error)}") from None


def _regular_files(path: Path) -> dict[str, Path]:
    """The regular files (or links to one) directly in folder ``path``, by name."""
    found = {}
    for child in path.iterdir():
        try:
            if stat.S_ISREG(child.stat().st_mode):
                found[child.name] = child
        except OSError:  # a broken link or a link loop
            continue
    return found


def _read_dir(path: Path) -> dict[str, bytes]:
    files = {}
    for name, child in _regular_files(path).items():
        if name in _cifar_names():
            try:
                if child.stat().st_size > MAX_CIFAR_FILE_BYTES:
                    raise ResnetsError(f"{printable(str(child))} is too large to be a CIFAR file")
                files[name] = child.read_bytes()
            except OSError as error:
                raise ResnetsError(f"cannot read {printable(str(child))}: {error.strerror or error}") from None
    return files


def _read_tar(path: Path) -> dict[str, bytes]:
    """The CIFAR files of a CIFAR tarball, by base name, read without extracting to disk."""
    files = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in _cifar_names():
                    if member.size > MAX_CIFAR_FILE_BYTES:
                        raise ResnetsError(f"{printable(str(path))}:{member.name} is too large to be a CIFAR file")
                    files[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ResnetsError(f"cannot read archive {printable(str(path))}: {first_line(error)}") from None
    return files


def _plain_keys(batch: Any, where: str) -> dict[str, Any]:
    if not isinstance(batch, dict):
        raise ResnetsError(f"{where} is not a CIFAR file: it must hold a dict")
    return {_text(key): value for key, value in batch.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


register_format(20, lambda path: is_cifar_dir(path) or is_cifar_tar(path), CifarSource)
