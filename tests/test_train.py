"""Training loop: end to end, resume equality, freezing, feature cache, checkpoints, interrupts."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_fixtures import tensor_data, tiny_config, write_folder_dataset
from resnets import create_model
from resnets.cli import main
from resnets.train import train
from resnets.train.checkpoint import load_state
from resnets.weights import load_weights_file, save_weights

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_cli_train_evaluate_predict_end_to_end(folder_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "--model", "resnet20", "--data", str(folder_data), "--epochs", "2",
                    "--batch-size", "8", "--img-size", "16", "--out", str(run), "--no-progress"]) == 0
    assert {"config.json", "metrics.jsonl", "curves.png", "weights.safetensors", "state.pt"} <= \
        {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"} <= set(rows[0])
    record = load_weights_file(run / "weights.safetensors")
    assert record.class_names == ["class0", "class1", "class2"] and record.preprocessing.input_size == 16
    capsys.readouterr()

    assert run_cli(["evaluate", str(run), "--data", str(folder_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 12 and len(report["per_class"]) == 3 and Path(report["confusion_png"]).is_file()

    image = folder_data / "val" / "class1" / "0.png"
    assert run_cli(["predict", str(run), str(image), "--topk", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["path"] == str(image) and len(result[0]["top"]) == 2
    assert abs(sum(t["probability"] for t in result[0]["top"]) - 1) < 1 + 1e-6


def test_resume_reaches_the_same_weights(tmp_path):
    data = tensor_data()
    options = dict(epochs=4, augment="cifar", mixup=0.2, ema=0.9, sched="onecycle")
    full = train(tiny_config(tmp_path / "full", **options), data=data)
    train(tiny_config(tmp_path / "split", **options), data=data, stop_after=2)
    assert len(load_state(tmp_path / "split")["history"]) == 2
    resumed = train(tiny_config(tmp_path / "ignored", resume=str(tmp_path / "split")), data=data)
    a, b = load_state(tmp_path / "full"), load_state(tmp_path / "split")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 4


def _pretrained(tmp_path: Path) -> Path:
    """A weights file of another (4-class) task, as a transfer-learning starting point."""
    from resnets import create_model
    from _train_fixtures import TINY

    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=4, **TINY)
    model.train()
    with torch.no_grad():  # move BN statistics away from their initial values
        model(torch.randn(16, 3, 16, 16) * 3 + 1)
    return save_weights(tmp_path / "pre.safetensors", model, class_names=list("abcd"))


@pytest.mark.parametrize("spec, frozen_prefixes, trained_prefix", [
    ("backbone", ("conv1", "bn1", "layer1", "layer2", "layer3"), "fc."),
    ("stem,layer1", ("conv1", "bn1", "layer1"), "layer2."),
])
def test_frozen_parts_stay_bit_identical(tmp_path, spec, frozen_prefixes, trained_prefix):
    pre = _pretrained(tmp_path)
    result = train(tiny_config(tmp_path / "run", model=None, weights=str(pre), freeze=spec, feature_cache=False,
                               augment="cifar"), data=tensor_data())
    assert not result.used_feature_cache
    before, after = load_weights_file(pre).state_dict, load_weights_file(result.weights).state_dict
    frozen = [k for k in after if k.startswith(frozen_prefixes)]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert after["fc.weight"].shape == (3, 8)
    changed = [k for k in after if k.startswith(trained_prefix) and k in before and before[k].shape == after[k].shape]
    if trained_prefix != "fc.":
        assert any(not torch.equal(before[k], after[k]) for k in changed)


def test_feature_cache_is_used_and_matches_the_slow_path(tmp_path):
    pre = _pretrained(tmp_path)
    data = tensor_data(n_train=60, n_val=30)
    common = dict(model=None, weights=str(pre), freeze="backbone", epochs=6, lr=0.2)
    fast = train(tiny_config(tmp_path / "fast", **common), data=data)
    slow = train(tiny_config(tmp_path / "slow", feature_cache=False, **common), data=data)
    assert fast.used_feature_cache and not slow.used_feature_cache
    assert fast.best_top1 > 50 and abs(fast.best_top1 - slow.best_top1) <= 20
    fast_sd, pre_sd = load_weights_file(fast.weights).state_dict, load_weights_file(pre).state_dict
    assert all(torch.equal(fast_sd[k], pre_sd[k]) for k in fast_sd if not k.startswith("fc."))


KILL_LOOP = """
import sys, torch
from pathlib import Path
from resnets.train.checkpoint import save_state
run = Path(sys.argv[1]); i = 0
while True:
    i += 1
    save_state(run, {"step": i, "weights": torch.full((256, 1024), float(i))})
    print(i, flush=True)
"""


@pytest.mark.slow
def test_checkpoint_survives_kill_9_at_random_moments(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one checkpoint exists
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        state = load_state(tmp_path)
        assert torch.equal(state["weights"], torch.full((256, 1024), float(state["step"])))


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130(folder_data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", "--model", "resnet20", "--data",
                             str(folder_data), "--epochs", "500", "--batch-size", "8", "--img-size", "16",
                             "--out", str(run), "--no-progress"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (run / "interrupted.safetensors").is_file() and load_state(run)["epoch"] >= 0
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("resnets:")]  # said once
    # the epoch of the checkpoint on disk, which is the one a resume continues from
    assert line.startswith("resnets: interrupted ") and "resume" in line, line
    assert line.endswith(f"continues from the checkpoint of epoch {load_state(run)['epoch'] + 1}"), line


def _stderr_until(proc: subprocess.Popen, text: bytes, timeout_s: float) -> bytes:
    """What ``proc`` wrote on stderr until ``text`` appeared (a progress bar has no newline to wait for)."""
    seen, deadline = b"", time.time() + timeout_s
    while text not in seen and time.time() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096)
    return seen


@pytest.mark.slow
@pytest.mark.serial  # the signal must land while decoding
def test_ctrl_c_while_decoding_exits_130_without_a_traceback(tmp_path):
    data = write_folder_dataset(tmp_path / "data", {"train": 200}, size=64)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "train", "--model", "resnet20", "--data", str(data),
                             "--img-size", "16", "--out", str(tmp_path / "run"), "--workers", "1"], env=env,
                            stderr=subprocess.PIPE)
    before = _stderr_until(proc, b"decoding", timeout_s=120)
    assert b"decoding" in before, before
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    err = (before + rest).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1].endswith("resnets: interrupted"), err
    assert not (tmp_path / "run" / "state.pt").exists()


def test_cli_errors_are_one_line_and_exit_2(folder_data, tmp_path, capsys):
    from resnets import create_model

    other = save_weights(tmp_path / "r32.safetensors", create_model("resnet32"))
    bad_image = tmp_path / "broken.png"
    bad_image.write_bytes(b"not a png")
    cases = [
        ["train", "--model", "resnet20", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "a")],
        ["train", "--model", "resnet20", "--weights", str(other), "--data", str(folder_data),
         "--out", str(tmp_path / "b")],
        ["train", "--model", "resnet20", "--num-classes", "5", "--data", str(folder_data), "--img-size", "16",
         "--out", str(tmp_path / "c")],
        ["predict", str(other), str(bad_image)],
        ["train", "--model", "resnet20", "--data", str(folder_data), "--progressive-resize", "0",
         "--out", str(tmp_path / "d")],
        ["train", "--model", "resnet20", "--data", str(folder_data), "--val-every", "0", "--out", str(tmp_path / "e")],
        ["train", "--model", "resnet20", "--data", str(folder_data), "--device", "tpu", "--out", str(tmp_path / "f")],
        ["predict", str(other), str(bad_image), "--device", "cuda:64"],
        ["evaluate", str(other), "--data", str(folder_data), "--device", "xla"],
    ]
    for args in cases:
        capsys.readouterr()
        assert run_cli(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("resnets: error:"), err
        assert sum(line.startswith("resnets: error:") for line in err) == 1, err
        assert not any("Traceback" in line for line in err), err


def test_grad_clip_bounds_each_step_and_is_a_flag_and_recipe_key(folder_data, tmp_path, capsys):
    """--grad-clip (declared once in TrainConfig): from the command line and from a recipe; a tiny
    norm keeps the weights where they started, no clipping moves them."""
    def trained_change(name: str, *flags: str) -> float:
        out = tmp_path / name
        args = ["train", "--model", "resnet20", "--data", str(folder_data), "--out", str(out), "--epochs", "1",
                "--batch-size", "8", "--weight-decay", "0", "--momentum", "0", "--no-progress", *flags]
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0
        torch.manual_seed(0)  # the run's own seed: its freshly built model is the start
        start = create_model("resnet20").state_dict()["conv1.weight"]
        return (load_state(out)["model"]["conv1.weight"] - start).abs().max().item()

    assert trained_change("clipped", "--grad-clip", "1e-9") < 1e-7
    assert trained_change("free") > 1e-4
    recipe = tmp_path / "r.yaml"
    recipe.write_text("grad-clip: 0.5\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(recipe), "--model", "resnet20", "--print-config"])
    assert "grad-clip: 0.5" in capsys.readouterr().out


def test_data_without_a_validation_split_gets_one_by_default(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "flat", {"train": 10})  # three class folders, no val/
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--data", str(data / "train"), "--out", str(out), "--epochs", "1",
            "--batch-size", "8"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    assert "no validation split: holding out 10% of each class (--val-split 0 trains on everything)" \
        in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["val_split"] == 0.1  # evaluate reproduces it
    assert "val_top1" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    with pytest.raises(SystemExit):
        main([*args[:6], str(tmp_path / "all"), *args[7:], "--val-split", "0"])
    assert "val_top1" not in json.loads((tmp_path / "all" / "metrics.jsonl").read_text().splitlines()[-1])


def test_a_batch_size_that_leaves_many_images_out_is_said(tmp_path):
    with pytest.warns(UserWarning, match="each epoch leaves out 7 of 15 training images"):
        train(tiny_config(tmp_path / "run", epochs=1, batch_size=8), data=tensor_data(n_train=15))
