"""Run folders under hostile conditions: two runs into one folder, old runs, --overwrite,
tampered resume files, diverging training. Each failure is one line, exit 2, and no good
file changes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_fixtures import TINY, tensor_data, tiny_config, write_folder_dataset
from resnets import ResnetsError
from resnets.train import train
from resnets.train.checkpoint import LOCK, OVERWRITTEN
from resnets.weights import load_weights_file

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != LOCK}


def one_line_error(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("resnets: error: ")
    return lines[0]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "resnet20", "--data", str(data), "--epochs", "1", "--batch-size", "8",
            "--img-size", "16", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


@pytest.fixture
def finished_run(folder_data, tmp_path, run_cli) -> Path:
    run = tmp_path / "run"
    assert run_cli(*train_args(folder_data, run))[0] == 0
    return run


def test_second_concurrent_run_is_refused_and_first_completes(folder_data, tmp_path, run_cli):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "resnets", *train_args(folder_data, run)[:-2],
                              "--epochs", "2", "--device", "cpu"],
                             env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "config.json").exists():  # the first run holds the folder from here on
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.05)
    status, out, err = run_cli(*train_args(folder_data, run, "--overwrite"))
    assert "in use by another training run" in one_line_error(status, err)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    # the lock died with its process: the folder can be resumed (nothing to do) or overwritten now
    assert run_cli(*train_args(folder_data, run, "--overwrite"))[0] == 0


def test_new_run_into_old_run_refused_and_nothing_changes(finished_run, folder_data, run_cli):
    before = hashes(finished_run)
    status, _, err = run_cli(*train_args(folder_data, finished_run, "--lr", "0.5"))
    line = one_line_error(status, err)
    assert "already holds a run" in line and "--overwrite" in line and "--resume" in line
    assert hashes(finished_run) == before


def test_overwrite_replaces_the_run_and_drops_old_files(finished_run, folder_data, run_cli):
    (finished_run / "interrupted.safetensors").write_bytes(b"old run's file")
    assert run_cli(*train_args(folder_data, finished_run, "--overwrite", "--seed", "7"))[0] == 0
    names = {p.name for p in finished_run.iterdir()}
    assert "interrupted.safetensors" not in names and OVERWRITTEN not in names
    assert json.loads((finished_run / "config.json").read_text())["seed"] == 7
    load_weights_file(finished_run / "weights.safetensors")


def test_overwrite_failing_early_keeps_old_files_aside(finished_run, folder_data, tmp_path, run_cli):
    before = hashes(finished_run)
    status, _, err = run_cli(*train_args(tmp_path / "missing", finished_run, "--overwrite"))
    one_line_error(status, err)
    assert hashes(finished_run / OVERWRITTEN) == before  # recoverable by hand; refused without --overwrite
    status, _, err = run_cli(*train_args(folder_data, finished_run))
    assert "already holds a run" in one_line_error(status, err)


def test_out_is_a_file(folder_data, tmp_path, run_cli):
    target = tmp_path / "file"
    target.write_text("keep")
    status, _, err = run_cli(*train_args(folder_data, target))
    assert "is a file" in one_line_error(status, err) and target.read_text() == "keep"


@pytest.mark.parametrize("damage", ["not json", "[1, 2]", '{"epochs": "ten"}', '{"lr": NaN}',
                                    '{"model_options": 3}', '{"amp": "yes"}'])
def test_tampered_config_on_resume_is_one_line(finished_run, run_cli, damage):
    config = json.loads((finished_run / "config.json").read_text())
    if damage.startswith("{"):
        config.update(json.loads(damage))
        text = json.dumps(config)
    else:
        text = damage
    (finished_run / "config.json").write_text(text)
    before = hashes(finished_run)
    status, _, err = run_cli("train", "--resume", str(finished_run), "--no-progress")
    assert "cannot resume" in one_line_error(status, err)
    assert hashes(finished_run) == before


@pytest.mark.parametrize("damage", ["garbage", "list", "missing_key", "wrong_shapes", "bad_epoch"])
def test_tampered_state_on_resume_is_one_line(finished_run, run_cli, damage):
    state = torch.load(finished_run / "state.pt", weights_only=True)
    config = json.loads((finished_run / "config.json").read_text())
    config["epochs"] = 3
    (finished_run / "config.json").write_text(json.dumps(config))
    if damage == "garbage":
        (finished_run / "state.pt").write_bytes(b"\x80\x04garbage")
    else:
        if damage == "list":
            state = [1, 2]
        elif damage == "missing_key":
            del state["optimizer"]
        elif damage == "wrong_shapes":
            state["model"] = {k: v[:1] if v.ndim else v for k, v in state["model"].items()}
        else:
            state["epoch"] = -5
        torch.save(state, finished_run / "state.pt")
    before = hashes(finished_run)
    status, _, err = run_cli("train", "--resume", str(finished_run), "--no-progress")
    assert str(finished_run) in one_line_error(status, err)
    assert hashes(finished_run) == before


def test_resume_of_missing_folder(tmp_path, run_cli):
    status, _, err = run_cli("train", "--resume", str(tmp_path / "nope"))
    assert "cannot resume" in one_line_error(status, err)


def test_diverging_run_stops_and_publishes_no_nan_weights(tmp_path):
    """A huge lr through the Python API (the CLI refuses nothing finite): the loss is checked on
    the logging all-reduce, so the run stops within log_interval steps."""
    data = tensor_data(n_train=96)
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1, lr=0.05), data=data)
    good = hashes(run)
    with pytest.raises(ResnetsError, match="diverged") as error:
        train(tiny_config(run, epochs=3, lr=1e30, log_interval=2, resume=None), data=data, overwrite=True)
    assert "\n" not in str(error.value) and "step 2" in str(error.value)
    # nothing of the diverged run was published; the earlier run's weights stay aside, intact
    assert not (run / "weights.safetensors").exists() and not (run / "state.pt").exists()
    assert hashes(run / OVERWRITTEN)["weights.safetensors"] == good["weights.safetensors"]


def test_diverged_weights_never_saved_even_if_loss_looks_finite(tmp_path, monkeypatch):
    """The last line of defence: weights are checked before every save_weights."""
    from resnets.train.engine import Trainer

    data = tensor_data()
    original = Trainer.train_epoch

    def poisoned(self, epoch):
        row = original(self, epoch)
        with torch.no_grad():
            next(self.setup.model.parameters()).fill_(float("inf"))
        return row

    monkeypatch.setattr(Trainer, "train_epoch", poisoned)
    with pytest.raises(ResnetsError, match="weights are no longer finite"):
        train(tiny_config(tmp_path / "run", epochs=1), data=data)
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_diverging_cli_run_exit_2(folder_data, tmp_path, run_cli):
    run = tmp_path / "run"
    status, _, err = run_cli(*train_args(folder_data, run, "--lr", "1e300"))
    assert "diverged" in one_line_error(status, err)
    assert not (run / "weights.safetensors").exists()


def test_lock_file_released_after_failure(folder_data, tmp_path, run_cli):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()  # the user's own empty folder stays
    assert run_cli(*train_args(tmp_path / "missing", run))[0] == 2
    with open(run / LOCK, "a") as handle:  # nobody holds it any more
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_that_fails_before_writing_leaves_no_folder(folder_data, tmp_path, run_cli):
    """A mistyped --weights (or data path) left an empty run folder holding only its lock, which
    the corrected command then refused as 'already holds a run'."""
    bad_weights = tmp_path / "weights.safetensors"
    bad_weights.write_bytes(b"not safetensors")
    run = tmp_path / "new" / "deeper" / "run"
    status, _, err = run_cli(*train_args(folder_data, run, "--weights", str(bad_weights)))
    one_line_error(status, err)
    assert not (tmp_path / "new").exists()  # every folder the command made is gone again
    assert run_cli(*train_args(folder_data, run))[0] == 0  # the corrected command just runs
    assert (run / "weights.safetensors").is_file()


def test_a_blown_up_run_with_a_nan_validation_is_not_published(tmp_path):
    """The review's case: --lr 1e9 made the validation loss NaN and the weights 5.7e8, and the run
    was published with 'best val top-1 33.33 %'."""
    with pytest.raises(ResnetsError, match="diverged in epoch 1: the (validation loss is nan|weights reach|loss is)"):
        train(tiny_config(tmp_path / "run", epochs=1, lr=1e9), data=tensor_data())
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_exploding_weights_end_the_run_even_with_finite_losses(tmp_path, monkeypatch):
    from resnets.train.engine import Trainer

    original = Trainer.train_epoch

    def inflated(self, epoch):
        row = original(self, epoch)
        with torch.no_grad():
            next(self.setup.model.parameters()).mul_(0).add_(5.7e8)  # BatchNorm keeps the loss finite
        return row

    monkeypatch.setattr(Trainer, "train_epoch", inflated)
    with pytest.raises(ResnetsError, match="the weights reach 5.7e\\+08"):
        train(tiny_config(tmp_path / "run", epochs=1), data=tensor_data())
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_metrics_are_strict_json(tmp_path):
    from resnets.train.checkpoint import METRICS, write_metrics

    write_metrics(tmp_path, [{"epoch": 1, "val_loss": float("nan"), "train_loss": float("inf"), "lr": 0.1}])

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    row = json.loads((tmp_path / METRICS).read_text(), parse_constant=refuse)
    assert row == {"epoch": 1, "val_loss": None, "train_loss": None, "lr": 0.1}
