"""Atomic writes: single files and sets of files, file modes under the umask, leftovers of killed writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time

import pytest
import torch

from resnets import ResnetsError
from resnets.fileio import atomic_path, atomic_paths, atomic_write_text
from resnets.weights import save_weights


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, expected):
    model = torch.nn.Linear(3, 2)
    with umask(mask):
        save_weights(tmp_path / "w.safetensors", model)  # safetensors' own writer makes 0600
        atomic_write_text(tmp_path / "notes.txt", "hello")
    assert mode(tmp_path / "w.safetensors") == expected
    assert mode(tmp_path / "notes.txt") == expected


def test_a_failing_body_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def _write_pair(first, second, text: str) -> None:
    with atomic_paths(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text(f"{text} a")
        tmp_b.write_text(f"{text} b")


def test_a_failure_between_the_renames_restores_the_old_set(tmp_path, monkeypatch):
    first, second = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    _write_pair(first, second, "old")
    before = (digest(first), digest(second))
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append(str(dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        _write_pair(first, second, "new")
    monkeypatch.undo()
    assert calls[:2] == [str(first), str(second)]  # the first file had been replaced
    assert (digest(first), digest(second)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.caffemodel", "net.prototxt"]
    _write_pair(first, second, "new")
    assert (first.read_text(), second.read_text()) == ("new a", "new b")


def test_a_failure_in_a_fresh_set_leaves_no_partial_set(tmp_path, monkeypatch):
    first, second = tmp_path / "x.json", tmp_path / "y.json"
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("boom")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        _write_pair(first, second, "new")
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_are_one_file_are_refused(tmp_path):
    with pytest.raises(ResnetsError, match="same file") as error:
        with atomic_paths(tmp_path / "a.bin", tmp_path / "sub" / ".." / "a.bin"):
            pass
    assert "\n" not in str(error.value)
    (tmp_path / "real.bin").write_text("x")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(ResnetsError, match="same file"):
        with atomic_paths(tmp_path / "real.bin", tmp_path / "link.bin"):
            pass
    assert (tmp_path / "real.bin").read_text() == "x"


def test_leftovers_of_killed_writes_are_removed_by_the_next_write_only_when_abandoned(tmp_path):
    target = tmp_path / "w.safetensors"
    gone = dead_pid()
    abandoned = tmp_path / f".w.safetensors.{gone}-0123abcd.tmp"
    nested = tmp_path / f"..w.safetensors.{gone}-0123abcd.tmp.{gone}-4567cdef.tmp"
    old_mkstemp = tmp_path / ".w.safetensors.k2j4_x9q.tmp"
    just_killed = tmp_path / f".w.safetensors.{gone}-89abcdef.tmp"  # could be another host's, mid-write
    live = tmp_path / f".w.safetensors.{os.getpid()}-fedcba98.tmp"  # a writer still running
    foreign = tmp_path / ".w.safetensors.editor-swap.tmp"
    other_target = tmp_path / f".other.bin.{gone}-0123abcd.tmp"
    old_backup = tmp_path / f".w.safetensors.{gone}-0badc0de.bak"  # the old file of a commit killed midway
    for path in (abandoned, nested, old_mkstemp, just_killed, live, foreign, other_target, old_backup):
        path.write_text("partial")
    for path in (abandoned, nested, live, foreign, other_target, old_backup):
        age(path, 3600)
    age(old_mkstemp, 3 * 24 * 3600)
    save_weights(target, torch.nn.Linear(2, 2))
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {target.name, just_killed.name, live.name, foreign.name, other_target.name}


def test_a_locked_run_folder_keeps_the_only_old_copy_and_a_live_writers_file(tmp_path):
    """remove_leftovers (a resumed run's folder): a backup whose file is missing is the only old copy
    (kept); a temporary file of a live process (resnets evaluate drawing into the run) is kept; a
    user's dotfile that merely ends in .bak is not ours; the abandoned rest goes."""
    from resnets.fileio import remove_leftovers

    gone = dead_pid()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / "weights.safetensors").write_text("new")
            kept = [tmp_path / f".state.pt.{gone}-0badc0de.bak",          # state.pt itself is missing
                    tmp_path / f".confusion.png.{other.pid}-0123abcd.tmp",  # a live writer's
                    tmp_path / ".notes.20240101.bak"]                       # the user's own file
            removed = [tmp_path / f".weights.safetensors.{gone}-0badc0de.bak",  # its file is back
                       tmp_path / f".state.pt.{gone}-0123abcd.tmp",
                       tmp_path / ".metrics.jsonl.k2j4_x9q.tmp"]
            for path in kept + removed:
                path.write_text("old")
            remove_leftovers(tmp_path)
        finally:
            other.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["weights.safetensors"] + [p.name for p in kept])
