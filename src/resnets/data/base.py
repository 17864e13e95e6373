"""What every format module shares: the :class:`DataSource` it opens, the held-out split names, and
the registry it joins for :func:`~.sources.open_source` (which imports the formats) to detect it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from .dataset import ImageDataset

# Preferred order when a tree has several held-out splits.
VAL_SPLITS = ("val", "validation", "valid", "test")


class DataSource(Protocol):
    """A data set on disk: its format, class names and splits (empty for one unsplit tree)."""

    format: str
    path: Path
    classes: list[str]

    @property
    def splits(self) -> tuple[str, ...]: ...

    def dataset(self, split: str | None) -> ImageDataset: ...


# (rank, detect, opener) of each format: the first, by rank, whose detect(path) holds opens the path.
FORMATS: list[tuple[int, Callable[[Path], bool], Callable[[Path], DataSource]]] = []


def register_format(rank: int, detect: Callable[[Path], bool], opener: Callable[[Path], DataSource]) -> None:
    """Add a format to detection; one that another's files could pass for (an image-folder tree,
    which any folder is) takes a higher ``rank``, to be tried after it."""
    FORMATS.append((rank, detect, opener))
    FORMATS.sort(key=lambda entry: entry[0])
