"""resnets lr-find: the exponential sweep, divergence stop, suggestions, plot, one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from _train_fixtures import tiny_config, write_folder_dataset
from resnets.cli import main
from resnets.errors import ResnetsError
from resnets.lr_find import lr_find, steepest_descent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("lrdata"), {"train": 16}, size=16)


def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code)


def test_sweep_is_exponential_stops_at_divergence_and_suggests_inside(data, tmp_path):
    start, end, steps = 1e-6, 1e4, 80
    config = tiny_config(tmp_path / "unused", data=str(data), batch_size=12, workers=0)
    result = lr_find(config, start, end, steps)
    ratios = np.asarray(result.lrs[1:]) / np.asarray(result.lrs[:-1])
    assert result.lrs[0] == pytest.approx(start)
    assert ratios == pytest.approx((end / start) ** (1 / (steps - 1)))
    assert result.diverged_at is not None and len(result.lrs) < steps  # lr 1e4 on SGD blows up
    assert result.losses[-1] <= 4 * min(result.losses)
    for suggestion in (result.steepest, result.minimum_over_10):
        assert start < suggestion < result.diverged_at <= end
    assert not (tmp_path / "unused").exists()  # nothing of the run is written


def test_a_sweep_that_diverges_at_once_is_one_line(data, tmp_path):
    config = tiny_config(tmp_path / "unused", data=str(data), batch_size=12, workers=0)
    with pytest.raises(ResnetsError, match="the loss diverged after .* lower --start"):
        lr_find(config, 1e2, 1e6, 20)


def test_steepest_descent_finds_the_middle_of_a_drop():
    lrs = np.logspace(-6, 0, 61)
    losses = 2.0 - np.tanh(3 * (np.log10(lrs) + 2.5))  # falls fastest at 10^-2.5
    assert math.log10(steepest_descent(list(lrs), list(losses))) == pytest.approx(-2.5, abs=0.05)


def test_cli_writes_the_plot_and_prints_json(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "lr.png"
    assert run_cli(["lr-find", "--model", "resnet20", "--data", str(data), "--out", str(out), "--steps", "20",
                    "--start", "1e-4", "--end", "1", "--batch-size", "12", "--device", "cpu", "--workers", "0",
                    "--no-progress", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["lrs"]) == len(document["losses"]) <= 20
    assert 1e-4 <= document["steepest"] <= 1 and 1e-5 <= document["minimum_over_10"] <= 0.1
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]  # no weights, no run folder


@pytest.mark.parametrize("flags, expected", [
    (["--steps", "3"], "--steps: must be an integer in [10, 100000]"),
    (["--start", "0"], "--start: must be a finite number in (0, 1000]"),
    (["--start", "abc"], "--start: must be a number"),
    (["--start", "1", "--end", "0.1"], "--end 0.1 must be larger than --start 1"),
    (["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (["--opt", "lion"], "--opt: invalid choice"),
])
def test_bad_flags_are_one_line(data, tmp_path, capsys, flags, expected):
    args = ["lr-find", "--model", "resnet20", "--data", str(data), "--out", str(tmp_path / "lr.png"),
            "--device", "cpu", *flags]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnets: error: ") and expected in err, err
    assert not (tmp_path / "lr.png").exists()


def _fastai_valley(lrs, losses):
    """fastai's published valley rule, written out independently of resnets.lr_find."""
    n = len(losses)
    lds, max_start, max_end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return lrs[max_start + int(sections) + int(sections / 2)]


def test_suggestions_stay_before_a_rise_that_never_reaches_the_stop_rule():
    """The review's case: the smoothed loss doubled (below the 4x stop) and the steepest point was
    read past the blow-up. Suggestions now come from the falling part only, and match fastai's rules."""
    from resnets.lr_find import _result

    steps = 100
    lrs = list(np.logspace(-6, 1, steps))
    log_lr = np.log10(lrs)
    falling = 2.0 - 0.8 / (1 + np.exp(-(log_lr + 3) * 3))         # drops around 1e-3
    rising = np.where(log_lr > -1, (log_lr + 1) ** 2 * 0.9, 0.0)    # climbs to about 2x past 0.1
    noise = np.where(log_lr > 0, 0.6 * np.sin(40 * log_lr), 0.0)   # a steep noisy wiggle past 1
    smoothed = list(falling + rising + noise)
    result = _result(lrs, smoothed, smoothed, None, steps)
    lowest = lrs[10:-5][int(np.argmin(smoothed[10:-5]))]
    assert result.steepest < lowest and result.valley < lowest and result.minimum_over_10 < lowest
    assert result.valley == pytest.approx(_fastai_valley(lrs[10:-5], smoothed[10:-5]))
    assert math.log10(result.steepest) == pytest.approx(-3, abs=0.3)
    assert result.final_over_minimum > 1.5
