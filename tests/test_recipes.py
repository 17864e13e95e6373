"""Recipes as YAML: --config FILE|NAME, --print-config round trip, shipped recipes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _train_fixtures import write_folder_dataset
from resnets.cli import main
from resnets.train import TrainConfig
from resnets.train.recipes import list_recipes
from resnets.train.schedule import warmup_step


def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code)


def printed_config(args: list[str], capsys) -> dict:
    capsys.readouterr()
    assert run_cli(["train", *args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_file_values_apply_and_the_command_line_wins_wherever_it_stands(tmp_path, capsys):
    recipe = write(tmp_path / "r.yaml", "model: resnet32\nbatch_size: 64\nlr: 0.3\nchannels-last: true\n"
                   "no-progress: true\nsched: onecycle\n")
    before = printed_config(["--lr", "0.01", "--config", recipe], capsys)
    after = printed_config(["--config", recipe, "--lr", "0.01"], capsys)
    assert before == after
    assert after["lr"] == 0.01 and after["model"] == "resnet32" and after["batch-size"] == 64
    assert after["channels-last"] is True and after["no-progress"] is True and after["sched"] == "onecycle"
    assert printed_config(["--config", write(tmp_path / "s.yaml", "no-stream: true\n")], capsys)["stream"] is False
    assert printed_config(["--config", write(tmp_path / "s.yaml", "no_progress: false\n")], capsys)["no-progress"] \
        is False
    # a flag given with its default value still overrides the file
    assert printed_config(["--config", recipe, "--batch-size", "128"], capsys)["batch-size"] == 128


def test_print_config_round_trips(tmp_path, capsys):
    args = ["--model", "resnet20", "--lr", "0.2", "--epochs", "7", "--ema", "--no-feature-cache", "--stream",
            "--augment", "none", "--max-minutes", "1.5", "--weight-decay", "0"]
    first = printed_config(args, capsys)
    again = printed_config(["--config", write(tmp_path / "r.yaml", yaml.safe_dump(first))], capsys)
    assert again == first
    assert first["ema"] == 0.999 and first["no-feature-cache"] is True and first["stream"] is True
    assert first["epochs"] == 7 and first["weight-decay"] == 0.0


@pytest.mark.parametrize("name", list_recipes())
def test_shipped_recipes_are_valid_train_settings(name, capsys):
    values = printed_config(["--config", name], capsys)
    config = TrainConfig.from_dict({k.replace("-", "_"): v for k, v in values.items()})
    assert config.model and config.lr and config.epochs >= 1


def test_shipped_recipes_say_what_they_promise(capsys):
    assert set(list_recipes()) >= {"cifar10-resnet-paper", "cifar10-resnet20-fast", "imagenet-resnet50-torchvision-v2"}
    paper = printed_config(["--config", "cifar10-resnet-paper"], capsys)
    assert (paper["lr"], paper["momentum"], paper["weight-decay"], paper["epochs"], paper["sched"]) == \
        (0.1, 0.9, 1e-4, 164, "step")
    tv = printed_config(["--config", "imagenet-resnet50-torchvision-v2"], capsys)
    assert (tv["lr"], tv["epochs"], tv["warmup-epochs"], tv["label-smoothing"], tv["mixup"], tv["cutmix"],
            tv["weight-decay"], tv["img-size"]) == (0.5, 600, 5.0, 0.1, 0.2, 1.0, 2e-5, 176)
    fast = printed_config(["--config", "cifar10-resnet20-fast"], capsys)
    assert (fast["model"], fast["batch-size"], fast["lr"], fast["sched"], fast["channels-last"],
            fast["max-minutes"]) == ("resnet20", 256, 0.4, "onecycle", True, 60.0)


def test_step_schedule_divides_by_ten_at_epochs_82_and_123_of_164():
    steps_per_epoch = 10
    total = 164 * steps_per_epoch
    factor = {epoch: warmup_step(epoch * steps_per_epoch, total, 0) for epoch in (0, 81, 82, 122, 123, 163)}
    assert factor == pytest.approx({0: 1.0, 81: 1.0, 82: 0.1, 122: 0.1, 123: 0.01, 163: 0.01})


def test_train_runs_the_recipe(tmp_path):
    data = write_folder_dataset(tmp_path / "data", {"train": 6, "val": 3})
    recipe = write(tmp_path / "r.yaml", f"model: resnet20\ndata: {data}\nepochs: 1\nbatch-size: 6\n"
                   "lr: 0.02\nsched: step\ndevice: cpu\nno-progress: true\nlabel_smoothing: 0.1\n")
    out = tmp_path / "run"
    assert run_cli(["train", "--config", recipe, "--out", str(out), "--epochs", "2"]) == 0
    stored = json.loads((out / "config.json").read_text())
    assert (stored["epochs"], stored["batch_size"], stored["lr"], stored["sched"], stored["label_smoothing"]) == \
        (2, 6, 0.02, "step", 0.1)


@pytest.mark.parametrize("text, expected", [
    ("lr: 0.1\nbogus-flag: 3\n", "'bogus-flag' is not a flag"),
    ("lr: 0.1\nepochs: [1, 2\n", "line 2"),
    ("lr: 0.1\nepochs: 2\n  bad: indent: 1\n", "line 3"),
    ("epochs: ten\n", "epochs: must be an integer"),
    ("epochs: 2.5\n", "epochs: must be an integer"),
    ("lr: -1\n", "lr: must be a finite number > 0"),
    ("momentum: 1.5\n", "momentum: must be"),
    ("sched: exponential\n", "sched: must be one of"),
    ("amp: 3\n", "amp: must be true or false"),
    ("model: 3\n", "model: must be text"),
    ("epochs: null\n", "epochs: needs a value"),
    ("- lr\n- 0.1\n", "a recipe is a mapping"),
])
def test_bad_recipes_are_one_line_naming_the_key(tmp_path, capsys, text, expected):
    recipe = write(tmp_path / "bad.yaml", text)
    assert run_cli(["train", "--config", recipe, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnets: error: ") and expected in err, err


def test_unknown_recipe_name_lists_the_shipped_ones(capsys):
    assert run_cli(["train", "--config", "no-such-recipe", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar10-resnet-paper" in err
