"""The ``resnets`` command line: argument parsing and error reporting only.

Each command lives in its own module here (``resnets.cli.<command>``) exposing
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the
parsed arguments and returning an exit status. The work itself is done by the library API.

Exit status: 0 done, 2 user error (one line ``resnets: error: ...`` on stderr), 1 internal
failure, 130 interrupted.

Errors of the environment are the user's to fix too, so they also get one line and status 2:
a read-only or full disk, a missing permission, a folder given where a file is expected or the
reverse (``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError``, ``OSError`` with
``ENOSPC``, ``EROFS``, ``EDQUOT``...) print ``resnets: error: <path>: <cause>``. Nothing already
on disk is damaged by such a failure: every file is written to a temporary name and renamed
(:mod:`resnets.fileio`), so the old file stays. Status 1 with a traceback stays for bugs.
Ctrl-C at any moment of :func:`main`, parsing and imports included, exits 130 with one line;
a training run first saves what it has (see :mod:`resnets.train.loop`). Output cut short by a
closed pipe (``resnets predict ... | head``) ends quietly with 141, as a shell tool does.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time
import warnings
from typing import Sequence

from ..errors import ResnetsError, first_line

# Command modules, in the order `resnets --help` lists them.
COMMANDS: tuple[str, ...] = ("models", "summary", "data", "train", "lr_find", "evaluate", "predict", "demo",
                            "convert", "export", "bench", "compare", "explain", "embed", "serve", "weights")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with the project's one-line format and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(message)


def add_model_argument(parser: argparse.ArgumentParser, dest: str = "model", pretrained: bool = True) -> None:
    """The ``MODEL`` argument, as every command takes it (see :mod:`resnets.factory`)."""
    bare = "its ImageNet weights" if pretrained else "the architecture; NAME:imagenet for its weights"
    parser.add_argument(dest, metavar="MODEL",
                        help=f"run directory, weights file (any format), NAME:TAG, or NAME ({bare})")


def _fail(message: str, status: int = 2) -> None:
    from ..terminal import printable

    print(f"resnets: error: {printable(first_line(message))}", file=sys.stderr)
    raise SystemExit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnets", description="The ResNet family: build, inspect, train, "
                     "convert, export, benchmark.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings (a skipped corrupt image...) as one ``resnets: warning: ...`` line on stderr."""
    from ..terminal import printable

    print(f"resnets: warning: {printable(message)}", file=sys.stderr if file is None else file)


def _no_progress_monitor_thread() -> None:
    """tqdm starts a monitor thread for every bar (disabled ones too) and never joins it; woken
    while the interpreter finalises it can abort the process ("PyThreadState_Get: the GIL is
    released"). Progress bars refresh on each update anyway."""
    import tqdm

    tqdm.tqdm.monitor_interval = 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the status."""
    started = time.time()  # budgets (train --minutes) count from here
    _no_progress_monitor_thread()
    try:
        args = build_parser().parse_args(argv)
        args.started = started
        warnings.showwarning = _show_warning
        status = args.handler(args)
    except ResnetsError as error:
        _fail(str(error))
    except KeyboardInterrupt as interrupt:  # training says what it saved: "interrupted in epoch 3 ..."
        print(f"resnets: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        raise SystemExit(130)
    except BrokenPipeError:
        _quiet_broken_pipe()
    except OSError as error:
        _fail(os_error_line(error))
    raise SystemExit(status or 0)


def os_error_line(error: OSError) -> str:
    """``<path>: <cause>`` of an OS error (``no such file: <path>`` for a missing one)."""
    from ..terminal import printable

    if isinstance(error, FileNotFoundError):
        return f"no such file: {printable(str(error.filename or error))}"
    cause = error.strerror or (os.strerror(error.errno) if error.errno else "") or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause += " (free some space and run again; files written before are intact)"
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{printable(' -> '.join(paths))}: {cause}" if paths else cause


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (``| head``): stop without a traceback, as a shell tool does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
    except (OSError, ValueError):
        pass
    raise SystemExit(141)
