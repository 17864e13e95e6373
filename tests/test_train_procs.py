"""``--procs N``: a run started in N data-parallel processes by resnets itself, and ``--max-minutes``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_fixtures import tensor_data, tiny_config, write_folder_dataset
from resnets.errors import ResnetsError
from resnets.train import train
from resnets.train.checkpoint import load_state
from resnets.train.distributed import launch
from resnets.weights import load_weights_file
from test_train_ddp import _config


@pytest.mark.slow
def test_procs_two_match_one_process(tmp_path):
    """Same check as the torchrun-style DDP test, with the processes started by ``procs=2``."""
    from test_train import _pretrained

    weights = str(_pretrained(tmp_path))
    single = train(_config(tmp_path / "single", weights), data=tensor_data())
    config = _config(tmp_path / "procs", weights)
    config.procs = 2
    both = train(config, data=tensor_data())
    assert both.weights == tmp_path / "procs" / "weights.safetensors"
    assert len(both.history) == 1 and "val_top1" in both.history[0]
    a = load_weights_file(single.weights).state_dict
    b = load_weights_file(both.weights).state_dict
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_an_error_in_the_processes_is_one_resnets_error(tmp_path):
    with pytest.raises(ResnetsError, match="unknown model"):
        train(tiny_config(tmp_path, model="resnet21", model_options={}, procs=2), data=tensor_data())


def test_cli_procs_errors_are_one_line(tmp_path, run_cli):
    data = write_folder_dataset(tmp_path / "data", {"train": 4, "val": 2})
    for model, extra in (("resnet20", ["--procs", "0"]), ("resnet20", ["--procs", "3", "--batch-size", "8"]),
                         ("resnet21", ["--procs", "2"])):
        status, _, err = run_cli("train", "--data", data, "--out", tmp_path / "run", "--model", model,
                                 "--device", "cpu", *extra)
        lines = err.strip().splitlines()
        assert status == 2, (extra, err)
        assert lines[-1].startswith("resnets: error:") and "Traceback" not in err, err


def test_launch_refuses_to_nest_inside_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ResnetsError, match="torchrun"):
        launch(print, 2)


def test_max_minutes_stops_after_an_epoch_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    stopped = train(tiny_config(out, epochs=3, max_minutes=1e-4), data=tensor_data())
    assert [row["epoch"] for row in stopped.history] == [1]
    finished = train(tiny_config(out, resume=str(out)), data=tensor_data())
    assert [row["epoch"] for row in finished.history] == [1, 2, 3]
    times = [row["finished_at"] for row in finished.history]
    assert times == sorted(times)


def test_max_minutes_far_away_changes_nothing(tmp_path):
    result = train(tiny_config(tmp_path / "run", epochs=2, max_minutes=60), data=tensor_data())
    assert [row["epoch"] for row in result.history] == [1, 2]


@pytest.mark.slow
@pytest.mark.serial  # the signal must land mid-training, which another worker's load can delay past the timeout
@pytest.mark.parametrize("to_group", [True, False], ids=["terminal-ctrl-c", "parent-only"])
def test_ctrl_c_stops_all_processes_saves_and_exits_130(tmp_path, to_group):
    """A terminal's Ctrl-C reaches every process; ``kill -INT`` only the parent, which passes it
    on. Either way the ranks stop at the same step, rank 0 saves, and the exit status is 130."""
    data = write_folder_dataset(tmp_path / "data", {"train": 16, "val": 4})
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", "--model", "resnet20", "--data", str(data),
                             "--epochs", "500", "--batch-size", "16", "--img-size", "16", "--procs", "2",
                             "--out", str(run), "--no-progress"], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert (run / "interrupted.safetensors").is_file() and load_state(run)["epoch"] >= 0
