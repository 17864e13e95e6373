"""``python -m resnets``: the command line. Ctrl-C while it is imported is one line and 130, as
:mod:`resnets.cli` does for its own import (Python's KeyboardInterrupt is back once it is loaded)."""

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    print("resnets: interrupted", file=sys.stderr, flush=True)
    os._exit(130)  # not an exception: raised inside a C extension's import it becomes an ImportError


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored SIGINT stays ignored
    signal.signal(signal.SIGINT, _interrupted_while_starting)

from .cli import main  # noqa: E402

if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
    signal.signal(signal.SIGINT, signal.default_int_handler)

if __name__ == "__main__":  # not again in the processes that --procs spawns
    main()
