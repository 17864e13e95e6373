"""The ``resnets`` command line: argument parsing and error reporting only.

Each command lives in its own module here (``resnets.cli.<command>``) exposing
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the
parsed arguments and returning an exit status. The work itself is done by the library API.

Exit status: 0 done, 2 user error (one line ``resnets: error: ...`` on stderr), 1 internal
failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from ..errors import ResnetsError

# Command modules, in the order `resnets --help` lists them.
COMMANDS: tuple[str, ...] = ("models", "summary", "data", "train", "evaluate", "predict", "demo",
                            "convert", "export", "bench", "compare", "serve")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with the project's one-line format and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(message)


def _fail(message: str, status: int = 2) -> None:
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    print(f"resnets: error: {first_line}", file=sys.stderr)
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
    print(f"resnets: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the status."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        status = args.handler(args)
    except ResnetsError as error:
        _fail(str(error))
    except FileNotFoundError as error:
        _fail(f"no such file: {error.filename or error}")
    except KeyboardInterrupt:
        print("resnets: interrupted", file=sys.stderr)
        raise SystemExit(130)
    raise SystemExit(status or 0)
