"""The ``resnets`` command line: argument parsing and error reporting only.

Each command's module here (``resnets.cli.<command>``) has ``register(subparsers)``, which adds
its parser with a ``handler`` that calls the library and returns an exit status. Only the module
of the command being run is imported (:data:`COMMANDS`), so ``resnets --help`` loads no torch.

Exit status: 0 done, 1 a bug (with its traceback), 2 a user error, 130 interrupted, 141 a closed
pipe (``resnets predict ... | head``). User errors, environment ones included (a full or read-only
disk, a missing permission: ``resnets: error: <path>: <cause>``), are one line on stderr; files are
written to a temporary name and renamed (:mod:`resnets.fileio`), so what is on disk stays whole.
Ctrl-C exits 130 at any moment; a training run first saves what it has
(:mod:`resnets.train.callbacks`).
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while Python imports the command line, before :func:`main` handles it: one line, 130.
    ``os._exit``, not an exception: one raised inside a C extension's import (numpy's) comes out
    as an ImportError traceback."""
    print("resnets: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


# Installed first, so that Ctrl-C in the first fifth of a second, while the imports below run, is
# one line, not a KeyboardInterrupt traceback; Python's own handler is back once they are done (a
# process that imports this module without running main(), a spawned worker, keeps its usual
# KeyboardInterrupt). A SIGINT that was ignored (a command started in the background) stays so.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    try:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:  # imported off the main thread (a library user's worker): nothing to install
        pass

import argparse  # noqa: E402
import difflib  # noqa: E402
import errno  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

from ..errors import ResnetsError, first_line  # noqa: E402

# Every command, in the order `resnets --help` lists them: name -> (module, one-line help). The
# top-level parser is built from this table alone, so `resnets --help` imports no command (nor
# torch); a command's module, which registers its full parser, is imported only for the command
# that runs. tests/test_cli_startup.py checks these helps against the ones the modules register.
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list the models with parameters and GMACs"),
    "summary": ("summary", "per-layer table: shapes, parameters, mult-adds"),
    "data": ("data", "inspect data sets, pack them into LMDB or WebDataset shards"),
    "train": ("train", "train or fine-tune a model on an image data set"),
    "lr-find": ("lr_find", "find a learning rate: sweep it over a few hundred training steps"),
    "evaluate": ("evaluate", "evaluate a trained model on a data set"),
    "predict": ("predict", "classify image files with a trained model"),
    "demo": ("demo", "train a ResNet on built-in handwritten digits, end to end"),
    "convert": ("convert", "convert foreign weights to a self-describing safetensors file"),
    "export": ("export", "export a model to ONNX, TorchScript, safetensors or prototxt"),
    "bench": ("bench", "measure inference (and training) speed on this machine"),
    "compare": ("compare", "compare CNNs: size, MACs, speed, published accuracy"),
    "explain": ("explain", "class-activation maps (Grad-CAM...) of a model's predictions"),
    "embed": ("embed", "embed a data set's images (pooled pre-logit features) into an index"),
    "search": ("embed", "nearest indexed images to query images (cosine, FAISS)"),
    "serve": ("serve", "serve a model over HTTP (TorchServe-style, KServe v2, web page, metrics)"),
    "weights": ("weights", "list or download pretrained weights"),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default, as ``ArgumentDefaultsHelpFormatter`` does, unless its
    text already says it (train's generated options do) or it is None, suppressed or an on/off
    switch's False/True."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or not _shows_default(action):
            return action.help
        return f"{text} (default: %(default)s)".strip()


def _shows_default(action: argparse.Action) -> bool:
    if action.default is None or action.default is argparse.SUPPRESS or action.help is argparse.SUPPRESS:
        return False
    if action.nargs == 0 and isinstance(action.default, bool):  # --flag: False means "not given"
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with the project's one-line format and status 2, shows
    defaults in its help, and suggests the nearest command, choice or flag for a misspelt one."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:  # noqa: ANN002, ANN003
        action = super().add_argument(*args, **kwargs)
        if action.help is None and _shows_default(action):  # else argparse prints no help for it
            action.help = "(default: %(default)s)"
        return action

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(message)

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            _fail(f"unrecognized arguments: {_with_suggestions(extras, _chosen_parser(self, parsed))}")
        return parsed

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices or ()], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (did you mean {close[0]}?)") from None


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)parser that ``args`` went through: ``data pack``'s for ``resnets data pack ...``."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps no public list
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def _with_suggestions(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """``--batchsize (did you mean --batch-size?)``: each unknown flag with its nearest option; a
    word right after an unknown flag is taken for its value and left out."""
    options = list(parser._option_string_actions)  # noqa: SLF001
    words = []
    for index, extra in enumerate(extras):
        if not extra.startswith("-"):
            if index == 0 or not extras[index - 1].startswith("-") or "=" in extras[index - 1]:
                words.append(extra)
            continue
        close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1)
        words.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
    return " ".join(words)


def add_command(subparsers: argparse._SubParsersAction, name: str, handler: Callable[[argparse.Namespace], int] | None,
                **options: object) -> argparse.ArgumentParser:
    """The parser of command ``name``, run by ``handler`` (None: by its actions' own), its one-line help
    taken from :data:`COMMANDS`."""
    parser = subparsers.add_parser(name, help=COMMANDS[name][1], **options)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_model_argument(parser: argparse.ArgumentParser, dest: str = "model", pretrained: bool = True) -> None:
    """The ``MODEL`` argument, as every command takes it (see :mod:`resnets.factory`)."""
    bare = "its ImageNet weights" if pretrained else "the architecture; NAME:imagenet for its weights"
    parser.add_argument(dest, metavar="MODEL",
                        help=f"run directory, weights file (any format), NAME:TAG, or NAME ({bare})")


def print_json(document: Any, indent: int | None = None) -> int:
    """``--json``: the command's result as one JSON document on stdout; returns the exit status, 0."""
    print(json.dumps(document, indent=indent))
    return 0


def _fail(message: str, status: int = 2) -> None:
    from ..terminal import printable

    print(f"resnets: error: {printable(first_line(message))}", file=sys.stderr)
    raise SystemExit(status)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``resnets`` parser. With ``argv``, only the command it names gets its full parser (its
    module imported); the others are names and one-line helps. Without, every command's is built."""
    parser = _Parser(prog="resnets", description="The ResNet family: build, inspect, train, "
                     "convert, export, benchmark.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    wanted = {module for module, _ in COMMANDS.values()} if argv is None else _named_modules(argv)
    registered = set()
    for name, (module, help_line) in COMMANDS.items():
        if module not in wanted:
            subparsers.add_parser(name, help=help_line)
        elif module not in registered:  # registers every command the module declares (embed, search)
            importlib.import_module(f"{__name__}.{module}").register(subparsers)
            registered.add(module)
    return parser


def _named_modules(argv: Sequence[str]) -> set[str]:
    """The module of the command ``argv`` names (its first word not an option), if any."""
    name = next((word for word in argv if not word.startswith("-")), None)
    return {COMMANDS[name][0]} if name in COMMANDS else set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings (a skipped corrupt image...) as one ``resnets: warning: ...`` line on stderr."""
    from ..terminal import printable

    print(f"resnets: warning: {printable(message)}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the status."""
    started = time.time()  # budgets (train --minutes) count from here
    command_line = argv is None  # the console script, not a caller in Python
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if command_line and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted_while_starting)  # while the command's module is imported
        args = build_parser(argv).parse_args(argv)
        if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        args.started = started
        import tqdm  # no monitor thread: see resnets.train.callbacks

        tqdm.tqdm.monitor_interval = 0
        warnings.showwarning = _show_warning
        status = args.handler(args)
    except ResnetsError as error:
        _fail(_worker_message(str(error)))
    except KeyboardInterrupt as interrupt:  # training says what it saved: "interrupted in epoch 3 ..."
        print(f"resnets: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        _exit(130, command_line)
    except BrokenPipeError:
        _quiet_broken_pipe()
    except OSError as error:
        _fail(os_error_line(error))
    except RuntimeError as error:
        if not str(error).startswith(_WORKER_DIED):
            raise
        _fail(f"a data-loading process died ({first_line(error)}); files written before are intact, "
              f"and --resume continues from the last checkpoint")
    _exit(status or 0, command_line)


# torch's DataLoader: a worker killed (the out-of-memory killer, a signal) or one that raised.
_WORKER_DIED = "DataLoader worker (pid"
_WORKER_RAISED = "Caught "


def _worker_message(message: str) -> str:
    """The error a DataLoader worker process raised, whose text torch wraps as ``Caught
    ResnetsError in DataLoader worker process 0.`` + its traceback: the last line, its message."""
    if not message.startswith(_WORKER_RAISED) or "Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last


def _exit(status: int, command_line: bool) -> None:
    """Exit with ``status``. From the console script, a Ctrl-C while the interpreter then shuts down
    (threads joined, files closed) ends it at once with 130 instead of an "Exception ignored" traceback."""
    if command_line and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_ending)
    raise SystemExit(status)


def _interrupted_while_ending(signum: int, frame: object) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.write(2, b"resnets: interrupted\n")  # the one line every interrupted command ends with
    except OSError:
        pass
    os._exit(130)


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


if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:  # the imports above are done
    signal.signal(signal.SIGINT, signal.default_int_handler)
