"""The run directory: config, metrics, curves, best weights and the resumable training state.

``state.pt`` holds only tensors, dicts, lists and primitives, so it loads with
``torch.load(weights_only=True)``; every file is written atomically, so a kill at any instant
leaves the previous good checkpoint in place.

A run directory belongs to one run at a time (:func:`own_run_dir`): ``RUN/.lock`` is held with
``flock`` for as long as the run lasts, so a second ``train`` into the same folder is refused
with one line instead of mixing one run's weights with the other's state. The kernel drops the
lock when its process ends, however it ends (``kill -9`` included), so a stale lock never
needs clearing by hand. A new run refuses a folder that already holds files, unless it resumes
them or is told to overwrite them; ``--overwrite`` first moves the old files into
``RUN/.overwritten/`` and deletes them only once the new run has written its first checkpoint
(:func:`drop_overwritten`), so a new run that fails or is killed early costs nothing: the old
files can still be moved back from there. Once the lock is held, the temporary files and backups
of a save that was killed are removed at once (:func:`~resnets.fileio.remove_leftovers`): no other
process can be writing them, however recent they are.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ResnetsError
from ..fileio import atomic_path, atomic_write_text, open_for_writing, open_no_follow, remove_leftovers, save_figure

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
WEIGHTS = "weights.safetensors"
STATE = "state.pt"
LOCK = ".lock"
OVERWRITTEN = ".overwritten"


@contextlib.contextmanager
def own_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Hold ``run_dir`` for one run: locked against other runs, checked (or cleared) for this one.

    A new run (``resume`` false) wants an empty folder; with ``overwrite`` the old content is
    moved aside into ``.overwritten`` first. The lock is released on every exit path. A folder
    this call made is removed again when the run fails before writing anything into it (a
    mistyped ``--weights`` leaves no empty run folder that the next try would have to clear).
    """
    run_dir = Path(run_dir)
    if resume and not run_dir.is_dir():
        raise ResnetsError(f"cannot resume {run_dir}: no such run directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise ResnetsError(f"--out {run_dir} is a file, not a run directory")
    made = [folder for folder in (run_dir, *run_dir.parents) if not os.path.lexists(folder)]
    run_dir.mkdir(parents=True, exist_ok=True)
    with _flock(run_dir) as lock_fd:
        remove_leftovers(run_dir)  # a killed save's temporary files: no other writer can be in here now
        if not resume:
            _claim_for_new_run(run_dir, overwrite)
        try:
            yield run_dir
        except BaseException:
            if made:
                _remove_if_unused(made, lock_fd)
            raise


def _remove_if_unused(made: list[Path], lock_fd: int) -> None:
    """Remove the folders ``own_run_dir`` made (innermost first) if the run left nothing but its
    lock there. The lock file goes while still held, so no other run can take it in between."""
    run_dir = made[0]
    if [entry.name for entry in run_dir.iterdir()] != [LOCK]:
        return
    with contextlib.suppress(OSError):
        if lock_fd >= 0 and os.path.samestat(os.fstat(lock_fd), os.lstat(run_dir / LOCK)):
            os.unlink(run_dir / LOCK)
        for folder in made:
            folder.rmdir()  # an OSError (not empty, gone) stops here: what others wrote stays


@contextlib.contextmanager
def _flock(run_dir: Path) -> Iterator[int]:
    """Hold ``run_dir``'s lock file; yields its descriptor (-1 where there is no flock)."""
    if sys.platform == "win32":  # no flock: the folder checks still apply
        yield -1
        return
    import fcntl

    fd = open_no_follow(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # a copied run's link: refused
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResnetsError(f"{run_dir} is in use by another training run (locked: {run_dir / LOCK}); "
                               f"wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for people: which process holds it
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _claim_for_new_run(run_dir: Path, overwrite: bool) -> None:
    entries = [entry for entry in run_dir.iterdir() if entry.name not in (LOCK, OVERWRITTEN)]
    if not overwrite:
        if entries or (run_dir / OVERWRITTEN).exists():
            raise ResnetsError(f"{run_dir} already holds a run ({len(entries)} file(s)); continue it with "
                               f"--resume {run_dir}, start over with --overwrite, or choose another --out")
        return
    aside = run_dir / OVERWRITTEN
    if aside.exists() and entries:  # files of a run older than the one being replaced
        shutil.rmtree(aside)
    aside.mkdir(exist_ok=True)
    for entry in entries:
        os.replace(entry, aside / entry.name)


def drop_overwritten(run_dir: Path) -> None:
    """Delete the files ``--overwrite`` moved aside, now that the new run has a checkpoint."""
    shutil.rmtree(run_dir / OVERWRITTEN, ignore_errors=True)


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    # through a Python file object: torch's own file writer reports a full disk as a RuntimeError
    with atomic_path(run_dir / STATE) as tmp, open_for_writing(tmp) as handle:
        torch.save(state, handle)


def load_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE
    if not path.is_file():
        raise ResnetsError(f"{run_dir} holds no training state ({STATE}); is it a run directory?")
    try:
        with warnings.catch_warnings():  # torch's notes about a foreign file's pickle protocol
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign or damaged file: the user's to fix, not a crash
        why = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0][:200]
        raise ResnetsError(f"cannot read {path}: damaged or not a resnets training state ({why})") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl (one JSON line per epoch) whole, so a resumed run never duplicates lines."""
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(strict_json(row), allow_nan=False) + "\n"
                                                  for row in history))


def strict_json(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with non-finite numbers as null: strict JSON parsers reject a bare NaN."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """curves.png: loss (train, val) and accuracy (train, val top-1; multi-label: train F1, val mAP) against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, title in ((ax_loss, ("train_loss", "val_loss"), "loss"),
                            (ax_acc, ("train_acc", "val_top1", "train_f1", "val_map"), "accuracy (%)")):
        for key in keys:
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, run_dir / CURVES)
