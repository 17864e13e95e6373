"""Image-folder trees, on disk or inside a zip archive (read in place, never unpacked).

Both are the layout torchvision's ``ImageFolder`` reads, ``root/<class>/<file>``, optionally
one level deeper per split: ``root/train/<class>/...`` and ``root/val/<class>/...`` (or
``test/``). A zip whose entries all sit under one wrapper folder (``cifar10/train/...``) is
read as if the wrapper were the root. Class labels are the sorted union of the class folders
of all splits, so a label means the same class in every split.

Hostile trees and archives are read without harm: symbolic links to folders are not followed
(they can loop, ``cat/up -> ..``, or reach another class's images under this class's name), each
named in a warning, as are FIFOs and devices, which are left out; zip members with an absolute
path or a ``.``/``..``/empty part are skipped with a warning; unreadable members (bad CRC,
encrypted, too large) fail like corrupt images; class names are ``printable``.
"""

from __future__ import annotations

import os
import threading
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable

from ..errors import ResnetsError, first_line
from ..fileio import escapes_folder
from .base import register_format
from .dataset import EncodedImageDataset
from .images import (MAX_IMAGE_BYTES, BadImageError, BadImageWarning, is_image_name, printable,
                     read_image_file)

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")

# (relative path with "/" separators, class name) per split; split None for an unsplit tree.
Layout = dict[str | None, list[tuple[str, str]]]


def layout_tree(paths: list[str], where: str) -> tuple[Layout, list[str]]:
    """Group image file paths (relative, "/"-separated) by split and class; return (layout, classes).

    The paths in the layout are the given ones, unchanged (wrapper folders included).
    """
    named = [(p, p.split("/")) for p in sorted(paths) if is_image_name(p) and not hidden(p)]
    depth = _wrapper_depth([parts for _, parts in named])
    named = [(p, parts[depth:]) for p, parts in named]
    tops = {parts[0] for _, parts in named if len(parts) >= 3}
    layout: Layout = {}
    if tops and tops <= set(SPLIT_NAMES) and all(len(parts) >= 3 for _, parts in named):
        for path, parts in named:
            layout.setdefault(parts[0], []).append((path, printable(parts[1])))
    else:
        layout[None] = [(path, printable(parts[0])) for path, parts in named if len(parts) >= 2]
    layout = {split: items for split, items in layout.items() if items}
    if not layout:
        raise ResnetsError(f"no images found in {printable(where)}: expected class folders "
                           f"(root/<class>/*.jpg or root/train/<class>/*.jpg)")
    return layout, sorted({cls for items in layout.values() for _, cls in items})


def walk_files(root: Path) -> list[str]:
    """The regular files under ``root``, as sorted "/"-separated paths relative to it (see the
    module docstring for what is left out, with a warning)."""
    files: list[str] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(root / folder) as listing:
                entries = list(listing)
        except OSError as error:
            if not folder:
                raise ResnetsError(f"cannot list {printable(str(root))}: {error.strerror or error}") from None
            _skip(root / folder, f"cannot list it: {error.strerror or error}")
            continue
        for entry in entries:
            rel = f"{folder}/{entry.name}" if folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append(rel)
            elif entry.is_symlink() and _follows(entry.is_dir):
                _skip(root / rel, "symbolic links to folders are not followed")
            elif _follows(entry.is_file):
                files.append(rel)
            elif is_image_name(entry.name):
                _skip(root / rel, "not a regular file")
    return sorted(files)


def _follows(test: Callable[[], bool]) -> bool:
    """``entry.is_dir`` or ``entry.is_file`` through a link; False where the link cannot be followed."""
    try:
        return test()
    except OSError:  # a link loop, or a target that cannot be looked at
        return False


def _skip(path: Path | str, why: str) -> None:
    warnings.warn(f"skipped {printable(str(path))}: {why}", BadImageWarning, stacklevel=3)


def unsafe_member(name: str) -> bool:
    """A zip member name that leaves the archive's root (:func:`resnets.fileio.escapes_folder`, the
    rule label-file rows are held to), or has any empty, ``.`` or ``..`` part at all: member names
    are also the layout's class and split folders, which such parts would garble."""
    return escapes_folder(name) or any(part in ("", ".", "..") for part in name.split("/"))


def hidden(path: str) -> bool:
    """A dot-file or dot-folder, or macOS's ``__MACOSX`` resource folder in a zip: never an image."""
    return "/." in f"/{path}" or "__MACOSX/" in path


def _wrapper_depth(parts: list[list[str]]) -> int:
    """How many leading folders all paths share as a mere wrapper (not a split or class level)."""
    depth = 0
    while parts:
        firsts = {p[depth] for p in parts}
        if (len(firsts) != 1 or next(iter(firsts)) in SPLIT_NAMES
                or any(len(p) - depth < 3 for p in parts)):
            break
        depth += 1
    return depth


class _TreeDataset(EncodedImageDataset):
    """One split (or the whole) of an image-folder tree at ``root`` (a folder, or a zip archive);
    ``items`` are (path in the tree, class name)."""

    def __init__(self, root: Path, items: list[tuple[str, str]], classes: list[str], split: str | None):
        self.root, self.classes = root, classes
        self.files = [path for path, _ in items]
        index = {name: k for k, name in enumerate(classes)}
        self.targets = [index[cls] for _, cls in items]
        self.source = printable(str(root)) + (f" [{split}]" if split else "")

    def describe(self, index: int) -> str:
        return printable(self.item_name(index))


class FolderDataset(_TreeDataset):
    """One split (or the whole) of an image-folder tree on disk."""

    def encoded(self, index: int) -> bytes:
        return read_image_file(self.root / self.files[index])

    def item_name(self, index: int) -> str:
        return str(self.root / self.files[index])


# One open archive per file and process (reading the central directory of a 60,000-file
# zip takes a second); reads are serialised by its lock and are quick next to decoding.
_ARCHIVES: dict[tuple[int, str, int, int], tuple[zipfile.ZipFile, threading.Lock]] = {}
_ARCHIVES_LOCK = threading.Lock()


def _open_zip(archive: Path) -> tuple[zipfile.ZipFile, threading.Lock]:
    stat = archive.stat()
    key = (os.getpid(), str(archive.resolve()), stat.st_ino, stat.st_mtime_ns)
    with _ARCHIVES_LOCK:
        if key not in _ARCHIVES:
            try:
                _ARCHIVES[key] = (zipfile.ZipFile(archive), threading.Lock())
            except (zipfile.BadZipFile, OSError) as error:
                raise ResnetsError(f"cannot read zip archive {printable(str(archive))}: {error}") from None
        return _ARCHIVES[key]


class ZipDataset(_TreeDataset):
    """One split (or the whole) of an image-folder tree inside the zip archive ``root``, read in place.

    The archive is opened again after a fork, so the dataset can be pickled to DataLoader
    worker processes and shared by threads.
    """

    _handle: tuple[int, zipfile.ZipFile, threading.Lock] | None = None

    def encoded(self, index: int) -> bytes:
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), *_open_zip(self.root))
        _, handle, lock = self._handle
        member = self.files[index]
        try:
            with lock:
                info = handle.getinfo(member)
                if info.file_size > MAX_IMAGE_BYTES:
                    raise BadImageError(f"cannot read image {self.describe(index)}: {info.file_size} bytes, "
                                        f"more than the {MAX_IMAGE_BYTES} an image file may have")
                return handle.read(info)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error, OSError) as error:
            # bad CRC, encrypted member, unknown compression method, truncated data
            raise BadImageError(f"cannot read image {self.describe(index)}: {first_line(error)}") from None

    def item_name(self, index: int) -> str:
        return f"{self.root}:{self.files[index]}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}


class _TreeSource:
    """An image-folder tree, its images grouped by split and class; ``reader`` reads a split."""

    reader: type[_TreeDataset]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.layout if s is not None)

    def dataset(self, split: str | None) -> _TreeDataset:
        return self.reader(self.path, self.layout[split], self.classes, split)


class FolderSource(_TreeSource):
    """An image-folder tree on disk."""

    format = "folder"
    reader = FolderDataset

    def __init__(self, root: Path):
        self.path = root
        self.layout, self.classes = layout_tree(walk_files(root), str(root))


class ZipSource(_TreeSource):
    """An image-folder tree inside a zip archive."""

    format = "zip"
    reader = ZipDataset

    def __init__(self, archive: Path):
        self.path = archive
        self.layout, self.classes = layout_tree(zip_image_names(archive), str(archive))


def zip_image_names(archive: Path) -> list[str]:
    """The image members of ``archive``, sorted, hidden ones left out; those with an unsafe name
    (:func:`unsafe_member`) are skipped with a warning."""
    handle, lock = _open_zip(archive)
    with lock:
        names = [info.filename for info in handle.infolist() if not info.is_dir()]
    for name in [n for n in names if unsafe_member(n) and is_image_name(n)]:
        _skip(f"{archive}:{name}", "zip member with an absolute path or a '.', '..' or empty part")
    return sorted(n for n in names if is_image_name(n) and not hidden(n) and not unsafe_member(n))


def is_zip(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path))


register_format(30, is_zip, ZipSource)
register_format(90, Path.is_dir, FolderSource)  # last: any folder is an image tree
