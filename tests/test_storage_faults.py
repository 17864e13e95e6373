"""Storage faults during long work are one line and lose nothing (issue 24, item 7).

* an LMDB database truncated in place while it is read (``cp new.lmdb data.lmdb`` during
  ``train --stream``): one line naming it, exit 2, the last checkpoint intact, never SIGBUS;
* ``data pack`` under an address-space limit (``ulimit -v``): the LMDB map fits the data;
* a full disk at every file a run saves: one line, exit 2, the old file intact;
* a set of files replaced together: a failure while the backups are taken leaves nothing behind;
* the temporary files of a killed save are gone once the run resumes, however recent they are.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _train_fixtures import write_folder_dataset
from resnets.data import pack_lmdb
from resnets.fileio import atomic_paths
from resnets.train.checkpoint import load_state

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("resnets: error: "), err
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python (a fault there cannot take the test process with it)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [os.environ.get("PYTHONPATH"), str(ROOT / "tests")]))})


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lmdb")
    write_folder_dataset(root / "tree", {"train": 12, "val": 4}, size=64)
    pack_lmdb(root / "tree", root / "data.lmdb", progress=False)
    return root / "data.lmdb"


# -- an LMDB truncated while it is read ------------------------------------------------------

def test_a_database_truncated_between_reads_is_one_error_not_sigbus(packed, tmp_path):
    """On the old code the second read faulted the map: the child died of SIGBUS (-7)."""
    copy = tmp_path / "data.lmdb"
    copy.write_bytes(packed.read_bytes())
    child = run_child(f"""
        import os
        from resnets import ResnetsError
        from resnets.data import open_dataset
        dataset = open_dataset({str(copy)!r}, split="train")
        dataset[0]
        with open({str(copy)!r}, "r+b") as handle:
            handle.truncate(8192)
        try:
            dataset[len(dataset) - 1]
        except ResnetsError as error:
            print("ResnetsError:", error)
    """)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert "ResnetsError:" in child.stdout and "truncated in place while being read" in child.stdout


def test_a_fault_that_slips_past_the_checks_is_one_line_and_exit_2(packed, tmp_path):
    """A truncation between the check and the read still faults the map: the SIGBUS handler turns
    that into one line and status 2 (old code: killed by SIGBUS, no message)."""
    copy = tmp_path / "data.lmdb"
    copy.write_bytes(packed.read_bytes())
    child = run_child(f"""
        from resnets.data import open_dataset, lmdbstore
        lmdbstore._Opened.check_unchanged = lambda self: None  # the race: truncated after the check
        dataset = open_dataset({str(copy)!r}, split="train")
        dataset[0]
        with open({str(copy)!r}, "r+b") as handle:
            handle.truncate(8192)
        dataset[len(dataset) - 1]
        print("read a truncated page")
    """)
    line = one_line_error(child.returncode, child.stderr)
    assert str(copy) in line and "truncated in place" in line


def test_the_fault_line_names_the_first_of_two_databases_too(packed, tmp_path):
    """Train and val as two LMDB files: the line named only the one opened last, though the
    first one shrank."""
    first, second = tmp_path / "train.lmdb", tmp_path / "val.lmdb"
    for copy in (first, second):
        copy.write_bytes(packed.read_bytes())
    child = run_child(f"""
        from resnets.data import open_dataset, lmdbstore
        lmdbstore._Opened.check_unchanged = lambda self: None  # the race: truncated after the check
        train = open_dataset({str(first)!r}, split="train")
        train[0]
        open_dataset({str(second)!r}, split="train")[0]
        with open({str(first)!r}, "r+b") as handle:
            handle.truncate(8192)
        train[len(train) - 1]
        print("read a truncated page")
    """)
    line = one_line_error(child.returncode, child.stderr)
    assert str(first) in line and str(second) in line and "truncated in place" in line


@pytest.mark.serial  # races a truncation against a running training
@pytest.mark.parametrize("workers", [0, 2])
def test_train_stream_survives_its_database_truncated_in_place(packed, tmp_path, workers):
    """``cp new.lmdb data.lmdb`` while ``train --stream`` reads it: one line, exit 2, and the last
    checkpoint loads. Old code: exit -7 (SIGBUS, no message) with --workers 0, and with workers
    the line ``Caught ResnetsError in DataLoader worker process 0.``, which names nothing."""
    data = tmp_path / "data.lmdb"
    data.write_bytes(packed.read_bytes())
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "resnets", "train", "--model", "resnet20", "--data", str(data), "--stream",
         "--workers", str(workers), "--epochs", "10000", "--batch-size", "4", "--img-size", "16", "--out", str(run),
         "--no-progress", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        while not (run / "state.pt").exists() and process.poll() is None:
            time.sleep(0.05)
        with open(data, "r+b") as handle:  # what `cp` does first: truncate in place, then write
            handle.truncate(8192)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    lines = [line for line in err.strip().splitlines() if not line.startswith("epoch ")]
    assert process.returncode == 2 and "Traceback" not in err, (process.returncode, err[-3000:])
    assert lines and lines[0].startswith("resnets: error: ") and "truncated" in lines[0], err[-3000:]
    # one line; a second only if a worker faulted in the instant between its check and its read
    # (its own line, then the main process's "a data-loading process died")
    assert len(lines) == 1 or (workers and len(lines) == 2 and "data-loading process died" in lines[1]), err
    assert "epoch" in load_state(run)  # the last checkpoint is whole


# -- data pack under an address-space limit ----------------------------------------------------

PACK_UNDER_LIMIT = """
    import resource, sys
    from resnets.cli import main
    import resnets.cli.data, resnets.data.pack, lmdb, numpy, PIL.Image  # loaded before the limit
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, resource.RLIM_INFINITY))
    main(["data", "pack", {src!r}, {dst!r}])
"""


def test_pack_fits_under_an_address_space_limit(packed, tmp_path):
    """Old code: ``lmdb.MemoryError`` traceback (the map reserved a terabyte)."""
    dst = tmp_path / "limited.lmdb"
    child = run_child(PACK_UNDER_LIMIT.format(headroom=1 << 30, src=str(packed.parent / "tree"), dst=str(dst)))
    assert child.returncode == 0, child.stderr[-3000:]
    from resnets.data import open_dataset
    assert len(open_dataset(dst, split="train")) == 36 and len(open_dataset(dst, split="val")) == 12


def test_pack_with_too_little_address_space_is_one_line(packed, tmp_path):
    """Not even the first map fits: one line naming the limit, no file (old code: a traceback)."""
    dst = tmp_path / "small.lmdb"
    child = run_child(PACK_UNDER_LIMIT.format(headroom=32 << 20, src=str(packed.parent / "tree"), dst=str(dst)))
    err = "\n".join(line for line in child.stderr.splitlines() if line.strip() and not line.startswith("packing"))
    line = one_line_error(child.returncode, err)
    assert "address space is limited" in line, line
    assert not dst.exists() and not list(tmp_path.glob(".small.lmdb*"))


def test_pack_grows_the_map_through_many_windows(tmp_path, monkeypatch):
    from resnets.data import open_dataset
    from resnets.data import pack as pack_module

    monkeypatch.setattr(pack_module, "_FIRST_MAP_SIZE", 64 * 1024)
    monkeypatch.setattr(pack_module, "_WINDOW", 5)
    write_folder_dataset(tmp_path / "tree", {"train": 10}, size=96)
    pack_lmdb(tmp_path / "tree", tmp_path / "grown.lmdb", progress=False)
    dataset = open_dataset(tmp_path / "grown.lmdb")
    assert len(dataset) == 30 and dataset[29][0].size == (96, 96)


# -- a full disk at every save of a run -------------------------------------------------------

RUN_FILES = ["state.pt", "weights.safetensors", "config.json", "metrics.jsonl", "curves.png"]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "resnet20", "--data", str(data), "--epochs", "1", "--batch-size", "8",
            "--img-size", "16", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


class _FullDisk:
    """A handle whose writes fail as on a full disk (the file object atomic writers are given)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def _full_disk_for(monkeypatch, name: str) -> None:
    """Every write to the temporary file of ``name`` fails as on a full disk."""
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        written = os.readlink(f"/proc/self/fd/{fd}") if "w" in mode else ""
        return _FullDisk(handle) if os.path.basename(written).startswith(f".{name}.") else handle

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("name", ["state.pt", "metrics.jsonl", "curves.png"])
def test_a_full_disk_at_a_resumed_save_is_one_line_and_the_old_file_stays(folder_data, tmp_path, run_cli,
                                                                          monkeypatch, name):
    """The files every epoch rewrites: the old one stays byte for byte, and resuming again works."""
    run = tmp_path / "run"
    assert run_cli(*train_args(folder_data, run, "--epochs", "2", "--stop-after", "1"))[0] == 0
    before, epoch = {file: sha(run / file) for file in RUN_FILES}, load_state(run)["epoch"]
    _full_disk_for(monkeypatch, name)
    status, _, err = run_cli("train", "--resume", str(run), "--no-progress")
    monkeypatch.undo()
    line = one_line_error(status, err)
    assert "No space left on device" in line and name in line, line
    assert sha(run / name) == before[name]
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".bak"))]
    assert run_cli("train", "--resume", str(run), "--no-progress")[0] == 0  # nothing was lost
    assert load_state(run)["epoch"] > epoch


@pytest.mark.parametrize("name", ["config.json", "weights.safetensors", "state.pt"])
def test_a_full_disk_at_a_new_run_save_is_one_line_and_leaves_no_torn_file(folder_data, tmp_path, run_cli,
                                                                           monkeypatch, name):
    """config.json (written once, at the start) and the first weights: no torn file, no temporary."""
    run = tmp_path / "run"
    _full_disk_for(monkeypatch, name)
    status, _, err = run_cli(*train_args(folder_data, run))
    monkeypatch.undo()
    line = one_line_error(status, err)
    assert "No space left on device" in line and name in line, line
    if name == "config.json":  # the run wrote nothing else: the folder the command made is gone again
        assert not run.exists()
        return
    assert not (run / name).exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".bak"))]


# -- files replaced together ----------------------------------------------------------------

def _write_pair(first: Path, second: Path, text: str) -> None:
    with atomic_paths(first, second) as (a, b):
        a.write_text(f"{text} a")
        b.write_text(f"{text} b")


def test_a_backup_that_fails_leaves_both_files_and_no_backup(tmp_path, monkeypatch):
    """Old code: the first file's backup stayed behind as ``.a.txt.PID-RANDOM.bak``."""
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    _write_pair(first, second, "old")
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        if os.path.basename(str(src)) == "b.txt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr("shutil.copy2", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        _write_pair(first, second, "new")
    monkeypatch.undo()
    assert (first.read_text(), second.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_restore_that_fails_keeps_the_old_content_on_disk(tmp_path, monkeypatch):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    _write_pair(first, second, "old")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) >= 2:  # the second rename, and then the restore of the first
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        _write_pair(first, second, "new")
    monkeypatch.undo()
    backups = [p for p in tmp_path.iterdir() if p.name.endswith(".bak")]
    assert [p.read_text() for p in backups] == ["old a"] and second.read_text() == "old b"


# -- a killed save's temporary files ------------------------------------------------------------

def test_a_resume_right_after_a_kill_removes_the_killed_save_temporaries(folder_data, tmp_path, run_cli):
    """Old code: a leftover younger than a minute survived the resume (only abandoned ones older
    than ``fileio.ABANDONED_S`` were removed)."""
    run = tmp_path / "run"
    assert run_cli(*train_args(folder_data, run, "--epochs", "2", "--stop-after", "1"))[0] == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process that has ended: a killed writer's pid
    leftovers = [run / f".state.pt.{dead}-0123abcd.tmp", run / f".weights.safetensors.{dead}-89abcdef.tmp",
                 run / f".metrics.jsonl.{dead}-00ff00ff.bak"]
    for path in leftovers:
        path.write_bytes(b"half a save")
    assert run_cli("train", "--resume", str(run))[0] == 0
    assert not [path.name for path in leftovers if path.exists()]
    assert sorted(p.name for p in run.iterdir()) == sorted([".lock", *RUN_FILES])
