"""Faults: `kill -9` at random moments of train, export (every format), convert and data pack
leaves every output whole (the old file, the new file, or none), and the next complete run
removes the killed runs' temporary files; a full disk is one line, exit 2, nothing torn.

The killed commands run in processes forked from a forkserver that imported resnets once, so
the 30-odd kills fit in the test's time (a fresh interpreter would spend seconds importing torch).
``RESNETS_FAULT_KILLS=20`` runs the issue's full count.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import torchvision

from _train_fixtures import write_folder_dataset
from resnets.cli import main

KILLS = int(os.environ.get("RESNETS_FAULT_KILLS", "5"))
SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = [pytest.mark.slow, pytest.mark.serial]  # kills land by timing


@pytest.fixture(scope="module")
def forkserver():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchvision", "resnets.cli", "resnets.train", "resnets.export",
                                    "resnets.weights.convert", "resnets.data", "onnx", "safetensors.torch"])
    return context


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = write_folder_dataset(root / "data", {"train": 8, "val": 4})
    model = torchvision.models.resnet18(num_classes=10)
    torch.save(model.state_dict(), root / "r18.pth")
    return root, data


def _run(context, argv: list[str], kill_after: float | None) -> int | None:
    """Run `resnets ARGV` in a forked process; SIGKILL it after ``kill_after`` s. Its exit code."""
    process = context.Process(target=main, args=([str(a) for a in argv],))
    process.start()
    process.join(kill_after)
    if process.is_alive():
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended (and the forkserver reaped it) since is_alive()
            pass
        process.join()
    return process.exitcode


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.suffix in (".tmp", ".bak", ".partial") and p.is_file()]


def _age_leftovers(folder: Path) -> None:
    """Make the killed writers' files look old, as they would be at the next run a minute later."""
    old = time.time() - 3600
    for leftover in _leftovers(folder):
        os.utime(leftover, (old, old))


def _check_run_dir(run: Path) -> None:
    from resnets.train.checkpoint import load_state
    from resnets.weights import load_weights_file

    if (run / "weights.safetensors").exists():
        load_weights_file(run / "weights.safetensors")
    if (run / "state.pt").exists():
        assert isinstance(load_state(run)["epoch"], int)
    if (run / "config.json").exists():
        json.loads((run / "config.json").read_text())
    if (run / "metrics.jsonl").exists():
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _check_export(out: Path, fmt: str) -> None:
    if fmt == "prototxt":
        weights = out.with_suffix(".caffemodel")
        assert out.exists() == weights.exists(), "a torn prototxt/caffemodel pair"
        if out.exists():
            from resnets.weights.caffe.prototxt import parse_prototxt

            parse_prototxt(out)
            assert weights.stat().st_size > 0
        return
    if not out.exists():
        return
    if fmt == "onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(out)))
    elif fmt == "torchscript":
        torch.jit.load(str(out))
    else:
        from resnets.weights import load_weights_file

        load_weights_file(out)


def _check_lmdb(path: Path) -> None:
    if path.exists():
        from resnets.data import inspect_source

        assert inspect_source(path)["splits"]


def _kill_repeatedly(context, argv: list[str], folder: Path, check, kills: int = KILLS) -> dict[str, int]:
    """One complete run (timed), ``kills`` runs killed at random moments, each checked, then a
    complete run that must leave no temporary files. Returns how the killed runs ended."""
    assert _run(context, argv, None) == 0  # the first also warms the forkserver up: not timed
    check()
    began = time.perf_counter()
    assert _run(context, argv, None) == 0
    duration = time.perf_counter() - began
    outcomes = {"killed": 0, "finished": 0}
    rng = random.Random(kills)
    # kill times drawn from the reference run's duration; a run that happens to go faster than it
    # (a loaded machine at the reference) may finish first: then earlier times, a bounded number of times
    for attempt in range(3 * kills):
        if attempt >= kills and outcomes["killed"]:
            break
        window = duration if attempt < kills else duration / 2 ** (attempt - kills + 1)
        code = _run(context, argv, rng.uniform(0.0, window))
        outcomes["killed" if code == -signal.SIGKILL else "finished"] += 1
        check()
    _age_leftovers(folder)
    assert _run(context, argv, None) == 0
    check()
    assert _leftovers(folder) == [], _leftovers(folder)
    return outcomes


def test_kill_train(forkserver, workspace):
    root, data = workspace
    run = root / "run"
    argv = ["train", "--model", "resnet20", "--data", data, "--epochs", "1", "--batch-size", "8", "--img-size", "16",
            "--out", run, "--no-progress", "--device", "cpu", "--overwrite"]
    outcomes = _kill_repeatedly(forkserver, argv, run, lambda: _check_run_dir(run))
    assert outcomes["killed"] >= 1
    assert not (run / ".overwritten").exists()  # the last complete run dropped what it replaced


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors", "prototxt"])
def test_kill_export(forkserver, workspace, fmt):
    root, _ = workspace
    out = root / "export" / f"model.{ {'onnx': 'onnx', 'torchscript': 'pt', 'safetensors': 'safetensors', 'prototxt': 'prototxt'}[fmt] }"
    model = "resnet18" if fmt == "prototxt" else "resnet20"  # resnet20's option-A shortcut has no Caffe layer
    argv = ["export", model, "--format", fmt, "--out", out, "--input-size", "32"]
    outcomes = _kill_repeatedly(forkserver, argv, out.parent, lambda: _check_export(out, fmt))
    assert sum(outcomes.values()) >= KILLS


def test_kill_convert(forkserver, workspace):
    root, _ = workspace
    out = root / "convert" / "r18.safetensors"
    argv = ["convert", root / "r18.pth", out]
    _kill_repeatedly(forkserver, argv, out.parent, lambda: _check_export(out, "safetensors"))


def test_kill_data_pack(forkserver, workspace):
    root, data = workspace
    out = root / "pack" / "train.lmdb"
    argv = ["data", "pack", data, out]
    _kill_repeatedly(forkserver, argv, out.parent, lambda: _check_lmdb(out))


# -- a full disk: a small tmpfs, nearly filled -------------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})"
        print(reason)
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave: int) -> None:
    """Fill the file system until ``leave`` bytes are free."""
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    with open(mount / f"filler-{uuid.uuid4().hex}", "wb") as filler:
        filler.write(b"\0" * max(free - leave, 0))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_one_line_enospc(status: int, err: str, mount: Path) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("resnets: error: ")]
    assert len(errors) == 1 and errors == lines[-1:], err
    assert "No space left on device" in errors[0]
    assert not [p for p in mount.rglob(".*") if p.suffix in (".tmp", ".bak", ".partial")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


def test_convert_on_full_disk(full_disk, tmp_path, run_cli):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")  # 45 MB: cannot fit
    old = full_disk / "r18.safetensors"
    old.write_bytes(b"the older output")
    before = _sha(old)
    status, _, err = run_cli("convert", tmp_path / "r18.pth", old)
    _assert_one_line_enospc(status, err, full_disk)
    assert _sha(old) == before


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_on_full_disk(full_disk, run_cli, fmt):
    old = full_disk / f"model.{fmt}"
    old.write_bytes(b"the older output")
    before = _sha(old)
    _fill(full_disk, 64 * 1024)
    status, _, err = run_cli("export", "resnet56", "--format", fmt, "--out", old)
    _assert_one_line_enospc(status, err, full_disk)
    assert _sha(old) == before



def test_data_pack_on_full_disk(full_disk, data, run_cli):
    old = full_disk / "train.lmdb"
    old.write_bytes(b"the older output")
    before = _sha(old)
    _fill(full_disk, 16 * 1024)
    status, _, err = run_cli("data", "pack", data, old)
    _assert_one_line_enospc(status, err, full_disk)
    assert _sha(old) == before


def test_train_on_full_disk(full_disk, data, run_cli):
    run = full_disk / "run"
    _fill(full_disk, 48 * 1024)
    status, _, err = run_cli("train", "--model", "resnet56", "--data", data, "--epochs", "1", "--batch-size", "8",
                             "--img-size", "16", "--out", run, "--no-progress", "--device", "cpu")
    _assert_one_line_enospc(status, err, full_disk)
    for name in ("weights.safetensors", "state.pt"):  # nothing torn: absent, or whole
        assert not (run / name).exists() or (run / name).stat().st_size > 0
