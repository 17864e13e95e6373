"""Small data sets fabricated in a temporary folder for the data-package tests."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The real data sets some tests read (cifar10-jpeg.zip, imagenette-224-train.zip): the folder
# $RESNETS_SHARED_DATA names, else ../shared/data beside the repository. Absent files skip.
SHARED_DATA = Path(os.environ.get("RESNETS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def shared_file(name: str, purpose: str = "") -> Path:
    """``SHARED_DATA / name``, or skip saying what to set to find it."""
    path = SHARED_DATA / name
    if not path.is_file():
        why = f" ({purpose})" if purpose else ""
        pytest.skip(f"{path} is absent{why}: set RESNETS_SHARED_DATA to the folder holding {name} "
                    "(default: ../shared/data beside the repository)")
    return path


def random_rgb(rng: np.random.Generator, height: int = 12, width: int = 10) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_tree(
    root: Path,
    splits: tuple[str | None, ...] = ("train", "val"),
    classes: tuple[str, ...] = ("cat", "dog", "emu"),
    per_class: int = 5,
    size: tuple[int, int] = (12, 10),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write ``root/[split/]class/i.png`` (lossless); return the pixels of each file by relative path."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in splits:
        for cls in classes:
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = random_rgb(rng, *size)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
                written[(folder / f"{i:03d}.png").relative_to(root).as_posix()] = pixels
    return written


def zip_tree(root: Path, archive: Path, wrapper: str = "") -> Path:
    """Zip every file under ``root`` into ``archive``, under folder ``wrapper`` if given."""
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                handle.write(path, f"{wrapper}{path.relative_to(root).as_posix()}")
    return archive


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_cifar10(
    folder: Path, batch_size: int = 4, protocol: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """A miniature ``cifar-10-batches-py`` folder; return the (N, 3072) data of train and test."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = ["plane", "car", "bird"]
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=protocol)
    )
    data = {"train": [], "test": []}
    for split, batch_names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        for name in batch_names:
            pixels = rng.integers(0, 256, (batch_size, 3072), dtype=np.uint8)
            labels = rng.integers(0, len(names), batch_size).tolist()
            batch = {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": pixels,
                b"filenames": [f"{name}_{i}.png".encode() for i in range(batch_size)],
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
            data[split].append((pixels, labels))
    return {
        split: (np.concatenate([p for p, _ in parts]), sum((labels for _, labels in parts), []))
        for split, parts in data.items()
    }
