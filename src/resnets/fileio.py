"""Safe file writing: nothing already on disk is lost if a write is interrupted.

Every file is first written to a temporary file beside its target, named
``.NAME.PID-RANDOM.tmp`` (PID: the writer's process id), then renamed over the target. A write
that was killed leaves its temporary file behind; the next write to the same target removes it
once it is provably abandoned (see :func:`_abandoned`). Files get the mode a plain ``open()``
would give under the current umask, whatever the library that filled them did to it.

This module owns every open of a user's path for writing: :func:`open_no_follow` never writes
through a symbolic link (a run folder or output folder from someone else may hold one, pointing
anywhere), and :func:`check_output_is_not_input` keeps a command from overwriting what it reads.
Renaming a finished file over a link replaces the link itself, which is safe.

It also owns the two guards on what a user's file may make us read: :func:`open_regular` opens a
file for reading only if it is a regular file (a FIFO, device, socket or folder is refused without
blocking: ``/dev/zero`` would never end, a FIFO would wait forever), and :func:`escapes_folder` is
the one rule for a name read from a file (a label row, a zip member, a manifest entry) that must
stay inside the folder it is relative to.

A file read through a memory map (an LMDB database) that shrinks under the reader faults with
SIGBUS, which Python cannot turn into an exception: :func:`exit_on_bus_error` makes that fault one
line on stderr and exit status 2 (files written before are intact: every write is atomic).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import time
from pathlib import Path, PurePath
from typing import IO, Any, Iterator

from .errors import ResnetsError
from .terminal import printable

# A temporary file of a writer that is gone is removed once untouched this long; one whose
# writer may still run (its pid is alive here, or it was not written by this scheme) only
# after STALE_S: a pid can be reused, and a file on a shared disk may belong to another host.
ABANDONED_S = 60.0
STALE_S = 24 * 3600.0
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows: the lstat/fstat comparison stands in
# A FIFO opened without O_NONBLOCK waits for a writer; O_NOCTTY: a terminal never becomes ours.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | \
    getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """``open(path, "rb")`` for a regular file only (links to one are followed).

    The open never blocks (``O_NONBLOCK``: a FIFO without a writer cannot hang it) and the type
    is checked on the opened descriptor, so what is checked is what is read: a folder, FIFO,
    device or socket is a one-line :class:`ResnetsError`; a missing file, the usual ``OSError``.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise ResnetsError(f"{printable(os.fspath(path))} is {kind}, not a regular file; refusing to read it")
        if os.name != "nt" and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def escapes_folder(name: str) -> bool:
    """Whether ``name``, a path read from a file and meant relative to a folder, leaves that folder:
    it is absolute (or has a drive or UNC anchor on Windows), or a ``..`` climbs above its start.
    Judged on the text alone (``a/../b`` stays inside, ``a/../../b`` does not); readers then open
    the normalised name (:func:`os.path.normpath`), so the operating system never resolves a ``..``
    through a linked folder."""
    path = PurePath(name)
    if path.anchor:
        return True
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def open_no_follow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags, mode)`` that never follows a symbolic link at ``path``'s last part.

    A link there (to a file, to a folder, or dangling) is refused with a one-line error and left
    alone: checked before (``lstat``), by the open itself (``O_NOFOLLOW``), and after (the file
    opened must be the one the name holds), so a link swapped in meanwhile is refused too.
    """
    path = Path(path)
    if path.is_symlink():
        raise _link_refused(path)
    try:
        fd = os.open(path, flags | _NO_FOLLOW, mode)
    except OSError:
        if path.is_symlink():
            raise _link_refused(path) from None
        raise
    if not _same_stat(fd, path):
        os.close(fd)
        raise _link_refused(path)
    return fd


def open_for_writing(path: str | os.PathLike, text: bool = False) -> IO[Any]:
    """``open(path, "wb")`` (``"w"``, UTF-8, with ``text``) through :func:`open_no_follow`."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    return os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")


def _same_stat(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except OSError:
        return False


def _link_refused(path: Path) -> ResnetsError:
    return ResnetsError(f"{path} is a symbolic link; refusing to write through it")


def check_output_is_not_input(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse, before anything is written, an ``output`` that is one of the ``inputs``: the same
    file by name, through a symbolic link or by a hard link (inputs that are no file: ignored)."""
    for source in inputs:
        if source is not None and _same_file(Path(output), Path(source)):
            raise ResnetsError(f"{output} is the input {source}: writing it would destroy it; "
                               f"choose another output")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or kill at any instant leaves either the old file or the new one, never a torn
    one. The temporary file is removed if the body raises.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Yield one temporary path per target; on success all targets are replaced as a set.

    The body fills every temporary file. Then each existing target is kept as a backup (a
    hard link) and the temporary files are renamed over their targets one by one; if any
    rename fails, the targets already replaced get their old content back, so an exception at
    any point leaves either the complete old set or the complete new set. (A kill of the
    process between two renames cannot be undone by it: the old files then stay beside the
    new ones as ``.NAME.PID-RANDOM.bak``, until the next complete write of the set removes
    them.) Targets that would overwrite each other are refused.
    """
    targets = _distinct_targets(paths)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(target, ".tmp")
    temps: list[Path] = []
    try:
        modes = [_create_temp(target, temps) for target in targets]
        try:
            yield tuple(temps)
        except OSError as error:  # a writer that was handed a file object names no file
            if error.filename is None:
                error.filename = str(targets[0]) if len(targets) == 1 else str(targets[0].parent)
            raise
        for tmp, mode in zip(temps, modes):
            _finish(tmp, mode)
        _replace_all(temps, targets)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    for target in targets:
        _remove_abandoned(target, ".bak")


def _distinct_targets(paths: tuple[str | os.PathLike, ...]) -> list[Path]:
    """The targets as paths; a one-line error if two of them name the same file."""
    if not paths:
        raise ValueError("atomic_paths needs at least one path")
    targets = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for target in targets:
        key = target.resolve()
        clash = seen.get(key) or next((other for other in seen.values() if _same_file(other, target)), None)
        if clash is not None:
            raise ResnetsError(f"{clash} and {target} are the same file: give each output its own name")
        seen[key] = target
    return targets


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _temp_name(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _create_temp(target: Path, temps: list[Path]) -> int:
    """Create an empty temporary file for ``target`` (appended to ``temps``); return its mode.

    The file is created as ``open()`` would create it (0666 less the umask), so its mode is
    the one the finished file must have, learnt without touching the process umask.
    """
    tmp = _temp_name(target, ".tmp")
    fd = open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    temps.append(tmp)
    try:
        return os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)


def _finish(tmp: Path, mode: int) -> None:
    """Give ``tmp`` its intended mode back (safetensors' writer makes 0600) and flush it to disk;
    a temporary file that a link replaced meanwhile is refused, its target untouched."""
    fd = open_no_follow(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows syncs writable files only
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # Windows before Python 3.13
            os.chmod(tmp, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_all(temps: list[Path], targets: list[Path]) -> None:
    """Rename every temp over its target; on any failure put the old targets back, then raise.

    Every backup is taken before the first rename (a backup that fails leaves every target as it
    was). A backup is deleted only once it is no longer needed: if restoring fails too, the old
    content stays on disk as ``.NAME.PID-RANDOM.bak``.
    """
    backups: list[Path | None] = []
    done = 0
    try:
        for target in targets:
            backups.append(_backup(target))
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
            done += 1
    except BaseException:
        _restore(targets[:done], backups[:done])
        backups = [None] * done + backups[done:]  # moved back, or kept on disk where that failed
        raise
    finally:
        for directory in {target.parent for target in targets}:
            _fsync_dir(directory)
        for backup in backups:
            if backup is not None:
                backup.unlink(missing_ok=True)


def _restore(targets: list[Path], backups: list[Path | None]) -> None:
    """Put each backup back over its target (a target that had none is removed); a backup that
    cannot be put back stays on disk beside the new file."""
    for target, backup in zip(targets, backups):
        try:
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        except OSError:
            pass  # the old content stays as the backup file, beside the new one


def _backup(target: Path) -> Path | None:
    """A second name for what is at ``target`` (a hard link, a copy where links fail).

    A symbolic link there is what gets replaced, so it is kept as itself, never followed: a link
    to ``/dev/zero`` would otherwise be copied forever, a link to a big file copied whole."""
    if not os.path.lexists(target):
        return None
    backup = _temp_name(target, ".bak")
    try:
        os.link(target, backup, follow_symlinks=False)
    except (OSError, NotImplementedError):
        shutil.copy2(target, backup, follow_symlinks=False)
    return backup


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (best effort: not every system can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_abandoned(target: Path, suffix: str) -> None:
    """Remove the temporary files (``suffix`` .tmp) or backups (.bak) that killed writes to
    ``target`` left beside it; only names this module makes, and only abandoned ones."""
    pattern = _leftover_pattern(target.name, suffix)
    for entry in os.scandir(target.parent):
        match = pattern.match(entry.name)
        if match is None or not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
            continue  # a link is removed itself: the backup of a link that stood at the target
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if _abandoned(entry.stat(follow_symlinks=False).st_mtime, match.group("pid")):
                os.unlink(entry.path)


def remove_leftovers(folder: str | os.PathLike) -> None:
    """Remove the leftovers of killed writes in ``folder`` (a run folder this process has locked)
    at once, whatever their age: temporary files whose writer is gone (this process's own, and a
    live one's, such as ``resnets evaluate`` drawing a figure into the run, are kept), and backups
    whose file is back in place (one whose file is missing is the only old copy: kept). Only
    names this module makes."""
    patterns = [_leftover_pattern(r"(?P<name>[^/]+)", suffix, literal=False) for suffix in (".tmp", ".bak")]
    for entry in os.scandir(folder):
        match = next((m for m in (p.match(entry.name) for p in patterns) if m), None)
        if match is None or not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
            continue
        pid = match.group("pid")
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        if entry.name.endswith(".bak") and not os.path.lexists(os.path.join(folder, match.group("name"))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _leftover_pattern(name: str, suffix: str, literal: bool = True) -> re.Pattern[str]:
    """``.NAME.PID-HEX8`` + suffix (``..NAME...tmp.PID-HEX8.tmp``: a temp of a temp, as a
    writer that writes atomically itself makes), or the ``.NAME.XXXXXXXX.tmp`` of mkstemp (only
    temporary files: a backup always carries its writer's pid)."""
    ours = r"(?P<pid>\d+)-[0-9a-f]{8}" + (r"|[a-z0-9_]{8}" if suffix == ".tmp" else "")
    nested = r"(?:\.tmp\.\d+-[0-9a-f]{8})?" if suffix == ".tmp" else ""
    return re.compile(rf"^\.\.?{re.escape(name) if literal else name}\.(?:{ours}){nested}{re.escape(suffix)}$")


def _abandoned(mtime: float, pid: str | None) -> bool:
    """True when no writer can still be using a leftover file.

    Its name carries the pid of its writer: once that process is gone here and the file has
    not changed for ABANDONED_S, it is abandoned. Otherwise (a live pid, possibly reused; a
    name without one) only files untouched for STALE_S are.
    """
    age = time.time() - mtime
    if pid is not None and not _pid_alive(int(pid)):
        return age > ABANDONED_S
    return age > STALE_S


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (signal 0 checks, sends nothing)."""
    if os.name == "nt":  # os.kill would terminate it there: assume alive, rely on STALE_S
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's; anything else: assume alive
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open_for_writing(tmp, text=True) as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open_for_writing(tmp) as handle:
        handle.write(data)


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it (figures hold memory)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp, open_for_writing(tmp) as handle:
        figure.savefig(handle, format="png", dpi=dpi)
    plt.close(figure)
    return Path(path)


# The SIGBUS handler (a ctypes callback, kept alive here) and the line it prints.
_BUS_ERROR: dict[str, Any] = {}


def exit_on_bus_error(message: str) -> None:
    """On SIGBUS (a page of a memory-mapped file past its new end), print ``resnets: error:
    <message>`` and exit with status 2 instead of dying silently (135).

    The fault cannot be resumed: the handler, run on the faulting thread through ctypes (Python's
    own handlers run only between bytecodes, after the faulting instruction, which would fault
    forever), writes the line and ends the process with ``os._exit``. Checks before each read
    (:class:`~resnets.data.lmdbstore.LmdbDataset`) catch almost every truncation first; this is the
    net for the one that lands between a check and the read. Not on Windows (no SIGBUS there)."""
    _BUS_ERROR["line"] = f"resnets: error: {printable(message)}\n".encode("utf-8", "replace")
    if "handler" in _BUS_ERROR or not hasattr(signal, "SIGBUS") or sys.platform == "win32":
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
        libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, handler_type]
    except (OSError, AttributeError):  # no C library to ask: the default death stays
        return
    _BUS_ERROR["handler"] = handler = handler_type(_on_bus_error)
    libc.signal(signal.SIGBUS, handler)


def _on_bus_error(signum: int) -> None:
    os.write(2, _BUS_ERROR["line"])
    os._exit(2)
