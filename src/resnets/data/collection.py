"""Collections of images without classes: what ``predict``, ``explain``, ``embed`` and ``search`` read.

An input is a folder (recursive) or a zip archive, read as :mod:`.imagetree` reads class trees
(the same rules for links, hidden files and unsafe members); a list file (``.txt`` or ``.lst``:
one image path per line, relative to the list file's folder, ``#`` comments); or an image file
(any name: the bytes decide). An unreadable image fails as :class:`~.images.BadImageError` when
read, and readers skip it with one warning (:class:`~.images.SkippedImages`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import ResnetsError
from . import sources  # noqa: F401 - every format registered before FORMATS is read
from .base import FORMATS
from .dataset import ConcatDataset, EncodedImageDataset
from .images import BadImageWarning, is_image_name, printable, read_image_file
from .imagetree import (FolderDataset, FolderSource, ZipDataset, ZipSource, hidden, is_zip, layout_tree,
                        walk_files, zip_image_names)

LIST_SUFFIXES = (".txt", ".lst")
NO_CLASS = ""  # the one "class" of a collection: its images carry no label
MAX_LIST_BYTES = 64 * 2**20


class ImageCollection(ConcatDataset):
    """Images without classes, from the inputs in the order given (each folder's files sorted).

    ``classes`` is ``[NO_CLASS]`` and every target 0, so the readers' machinery (``dataset[i]``,
    ``describe``, ``encoded``, :class:`~.images.SkippedImages`) applies unchanged; they are no label.
    """

    labelled = False

    def __init__(self, parts: Sequence[EncodedImageDataset], where: str):
        super().__init__(list(parts) or [_files_part(Path(""), [])])
        self.source = where

    def files(self) -> list[Path]:
        """The collection's files on disk (folders and list files expanded; zip members are not files)."""
        return [part.root / name for part in self.parts if isinstance(part, FolderDataset) for name in part.files]


def is_list_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in LIST_SUFFIXES and Path(path).is_file()


def open_collection(inputs: Iterable[str | os.PathLike]) -> ImageCollection:
    """The images of ``inputs`` (folders, zips, list files, image files; see the module docstring).

    An input that is missing, or neither a folder nor a regular file (a FIFO would block the
    read, a device never end), is skipped with a warning naming it. The collection may be empty.
    """
    inputs = [Path(item) for item in inputs]
    parts: list[EncodedImageDataset] = []
    loose: list[str] = []
    for item in inputs:
        if item.is_dir() or is_zip(item) or is_list_file(item):
            if loose:
                parts.append(_files_part(Path(""), loose))
                loose = []
            part = _folder_part(item) if item.is_dir() else _zip_part(item) if is_zip(item) else _list_part(item)
            if len(part):
                parts.append(part)
        elif not item.is_file():
            why = "not a regular file" if item.exists() else "no such file"
            warnings.warn(f"skipped {printable(str(item))}: {why}", BadImageWarning, stacklevel=2)
        else:
            loose.append(str(item))
    if loose:
        parts.append(_files_part(Path(""), loose))
    return ImageCollection(parts, ", ".join(printable(str(item)) for item in inputs) or "no input")


def is_collection(path: str | os.PathLike) -> bool:
    """Whether the data at ``path`` is images without classes rather than a data set with classes:
    a list file, or a folder or zip with images that :func:`~.imagetree.layout_tree` would not
    read whole (some outside class folders) or would read as one class (a class means something
    only next to another). Looking is quiet: the reader that opens ``path`` warns about skips.
    """
    path = Path(path)
    if is_list_file(path):
        return True
    opener = next((opener for _, detect, opener in FORMATS if detect(path)), None)
    if opener not in (FolderSource, ZipSource):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        names = zip_image_names(path) if opener is ZipSource else _tree_images(path)
    if not names:
        return False
    try:
        layout, classes = layout_tree(names, str(path))
    except ResnetsError:  # images, but none in a class folder
        return True
    return len(classes) < 2 or sum(len(items) for items in layout.values()) < len(names)


# -- parts ----------------------------------------------------------------------------------------
def _files_part(root: Path, files: list[str]) -> FolderDataset:
    return FolderDataset(root, [(name, NO_CLASS) for name in files], [NO_CLASS], None)


def _folder_part(root: Path) -> FolderDataset:
    part = _files_part(root, _tree_images(root))
    part.source = printable(str(root))
    return part


def _zip_part(archive: Path) -> ZipDataset:
    return ZipDataset(archive, [(name, NO_CLASS) for name in zip_image_names(archive)], [NO_CLASS], None)


def _list_part(path: Path) -> FolderDataset:
    """The paths a list file names, relative ones from the list file's folder."""
    name = printable(str(path))
    size = path.stat().st_size
    if size > MAX_LIST_BYTES:
        raise ResnetsError(f"image list {name} has {size} bytes, more than the {MAX_LIST_BYTES} a list may have")
    lines = (os.fsdecode(raw.strip()) for raw in read_image_file(path, MAX_LIST_BYTES).splitlines())
    files = [line for line in lines if line and not line.startswith("#")]
    part = _files_part(path.parent, files)
    part.source = name
    return part


def _tree_images(root: Path) -> list[str]:
    """The image files under ``root`` (relative "/"-separated paths, sorted), hidden ones left out."""
    return [name for name in walk_files(root) if is_image_name(name) and not hidden(name)]


__all__ = ["ImageCollection", "LIST_SUFFIXES", "NO_CLASS", "is_collection", "is_list_file", "open_collection"]
