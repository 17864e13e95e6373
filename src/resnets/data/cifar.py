"""CIFAR-10 / CIFAR-100 in the original "python version" pickles, as users download them.

Either the extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``) or the
``.tar.gz`` itself, read in place. The batches are pickles, and a pickle can run any code
while loading; these are loaded with :class:`RestrictedUnpickler`, which resolves only the
numpy globals an array needs and refuses every other global, so a doctored file fails with
an error instead of running anything.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ResnetsError
from .dataset import ImageDataset

# file names (inside the folder or archive) of each layout: meta file, class-name key,
# label key, and the batches of each split.
_LAYOUTS = {
    "cifar10": ("batches.meta", "label_names", "labels",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}),
    "cifar100": ("meta", "fine_label_names", "fine_labels", {"train": ["train"], "test": ["test"]}),
}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals an unpickled CIFAR batch may name: numpy's array reconstruction."""
    try:
        multiarray = np._core.multiarray  # numpy >= 2
        numeric = np._core.numeric
    except AttributeError:  # numpy 1.x
        multiarray = np.core.multiarray
        numeric = np.core.numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("_codecs", "encode")] = _latin1_bytes
    return allowed


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles written by Python 3 rebuild ``bytes``; only latin-1 is accepted."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing to decode bytes with codec {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; any other global is refused before it is resolved."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def load_pickle(data: bytes, name: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; ResnetsError naming ``name`` on refusal."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ResnetsError(f"{name} is not a CIFAR batch that can be loaded safely: {error}") from None


class CifarDataset(ImageDataset):
    """One split of CIFAR-10/100, held decoded as a uint8 (N, 3, 32, 32) tensor."""

    def __init__(self, pixels: torch.Tensor, labels: list[int], names: list[str], classes: list[str],
                 source: str):
        self.pixels = pixels
        self.targets = labels
        self.names = names
        self.classes = classes
        self.source = source

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
        meta = _plain_keys(load_pickle(files[meta_name], f"{path}/{meta_name}"))
        self.classes = [_text(name) for name in meta[names_key]]

    def dataset(self, split: str | None) -> CifarDataset:
        pixels, labels, names = [], [], []
        for batch_name in self._batches[split]:
            where = f"{self.path}/{batch_name}"
            if batch_name not in self._files:
                raise ResnetsError(f"{where} is missing; the CIFAR download is incomplete")
            batch = _plain_keys(load_pickle(self._files[batch_name], where))
            data = np.asarray(batch.get("data"))
            batch_labels = [int(label) for label in batch.get(self._label_key, [])]
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                    or len(batch_labels) != len(data):
                raise ResnetsError(f"{where} is not a CIFAR batch: expected uint8 data of shape "
                                   f"(N, 3072) and N labels")
            if batch_labels and not 0 <= min(batch_labels) <= max(batch_labels) < len(self.classes):
                raise ResnetsError(f"{where} has labels outside 0..{len(self.classes) - 1}")
            pixels.append(data.reshape(-1, 3, 32, 32))
            labels.extend(batch_labels)
            names.extend(_text(n) for n in batch.get("filenames", [f"{batch_name}#{i}" for i in
                                                                    range(len(data))]))
        return CifarDataset(torch.from_numpy(np.concatenate(pixels)), labels, names, self.classes,
                            f"{self.path} [{split}]")


def detect_layout(files: dict[str, bytes] | set[str]) -> str | None:
    """"cifar10", "cifar100" or None, from the file names present."""
    for kind, (meta_name, _, _, batches) in _LAYOUTS.items():
        if meta_name in files and batches["train"][0] in files:
            return kind
    return None


def is_cifar_dir(path: Path) -> bool:
    return path.is_dir() and detect_layout({p.name for p in path.iterdir()}) is not None


def is_cifar_tar(path: Path) -> bool:
    if not path.is_file() or not tarfile.is_tarfile(path):
        return False
    with tarfile.open(path) as archive:
        return detect_layout({Path(n).name for n in archive.getnames()}) is not None


def _read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def _read_tar(path: Path) -> dict[str, bytes]:
    """The regular files of a CIFAR tarball, by base name, read without extracting to disk."""
    files = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    files[Path(member.name).name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ResnetsError(f"cannot read archive {path}: {error}") from None
    return files


def _plain_keys(batch: Any) -> dict[str, Any]:
    if not isinstance(batch, dict):
        raise ResnetsError("a CIFAR batch must be a dict")
    return {_text(key): value for key, value in batch.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
