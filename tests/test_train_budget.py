"""train --minutes: the planner's arithmetic, a planned run that keeps to its budget and completes
its schedule, and planning that changes nothing the run computes (equal to --epochs, resumable)."""

from __future__ import annotations

import json
import math
import time

import pytest

from _train_fixtures import tensor_data, tiny_config
from resnets.train import train
from resnets.train.callbacks import OVERRUN_FRACTION, OVERRUN_SECONDS
from resnets.train.checkpoint import load_state
from resnets.train.plan import (MARGIN_FRACTION, MARGIN_SECONDS, MAX_PLANNED_EPOCHS, plan_epochs,
                                size_scaled_step_seconds)

pytestmark = pytest.mark.serial  # it measures step rates and keeps to a wall-clock budget


def test_plan_fills_the_budget_with_steps_and_validations():
    # 600 s: 3 % and 5 s margin leave 577 s; an epoch is 10 steps of 1 s plus a 5 s validation
    usable = 600 * (1 - MARGIN_FRACTION) - MARGIN_SECONDS
    assert plan_epochs(600, 1.0, 10, 5.0, 1) == math.floor(usable / 15) == 38
    # validating every 4th epoch (and after the last): 10 + 5/4 s an epoch, plus the last validation's rest
    assert plan_epochs(600, 1.0, 10, 5.0, 4) == math.floor((usable - 5 * 0.75) / 11.25) == 50
    # and a 2 s checkpoint after every epoch
    assert plan_epochs(600, 1.0, 10, 5.0, 1, save_s=2.0) == math.floor(usable / 17) == 33


def test_the_planned_end_counts_the_validations_the_run_makes():
    from resnets.train.plan import Plan

    # 14 epochs of 10 s steps, a 30 s validation every 2nd epoch (7 of them) and a 1 s checkpoint each
    plan = Plan(60, 14, 10, 1.0, 30.0, 1.0, 12.0, val_every=2)
    assert plan.planned_minutes == pytest.approx((12 + 14 * 10 + 14 * 1 + 7 * 30) / 60)
    assert Plan(60, 15, 10, 1.0, 30.0, 1.0, 12.0, val_every=2).planned_minutes == pytest.approx(
        (12 + 15 * 10 + 15 * 1 + 8 * 30) / 60)  # and after the last, odd one


def test_plan_bounds():
    assert plan_epochs(1, 10.0, 100, 0.0, 1) == 1                  # nothing fits: one epoch
    assert plan_epochs(1e6, 1e-6, 1, 0.0, 1) == MAX_PLANNED_EPOCHS  # everything fits: the cap


def test_plan_costs_each_epoch_at_its_own_size():
    # a step time per epoch that never changes plans what the closed form plans
    assert plan_epochs(600, 1.0, 10, 5.0, 4, 2.0, step_s_at=lambda e, n: 1.0) == plan_epochs(600, 1.0, 10, 5.0, 4, 2.0)
    # the first half of any run's epochs at a quarter of the step cost (progressive resizing):
    # 51 epochs = 26 at 2.5 + 5 s and 25 at 10 + 5 s = 570 s of the 577 usable; 52 would be 585
    cheap_first_half = lambda epoch, epochs: 0.25 if epoch < epochs / 2 else 1.0  # noqa: E731
    assert plan_epochs(600, 1.0, 10, 5.0, 1, step_s_at=cheap_first_half) == 51
    assert plan_epochs(600, 1.0, 10, 5.0, 1) == 38  # the same steps all at full size


def test_step_time_follows_the_image_area_between_the_measured_sizes():
    at_size = size_scaled_step_seconds(full_s=1.0, small_s=0.4, full=64, small=32)
    assert at_size(64) == pytest.approx(1.0) and at_size(32) == pytest.approx(0.4)
    assert at_size(48) == pytest.approx(0.4 + 0.6 * (48**2 - 32**2) / (64**2 - 32**2))
    assert size_scaled_step_seconds(1.0, 0.4, 32, 32)(32) == 1.0  # one size: nothing to interpolate


def test_a_progressive_planned_run_fits_more_epochs_and_keeps_its_budget(tmp_path):
    """With progressive resizing the early epochs are cheaper: the plan measures both ends and
    fits more epochs than at full size, and the run still ends inside its budget."""
    data = tensor_data(n_train=1000, n_val=100, size=32)
    minutes, plans = 0.4, {}
    for name, scale in (("full", 1.0), ("progressive", 0.5)):
        started = time.time()
        result = train(tiny_config(tmp_path / name, minutes=minutes, batch_size=64, progressive_resize=scale,
                                   progressive_delay=0.8, progressive_finetune=0.2), data=data, started=started)
        elapsed = time.time() - started
        assert elapsed <= minutes * 60 * (1 + OVERRUN_FRACTION) + OVERRUN_SECONDS + 5, (name, elapsed)
        plans[name] = json.loads((tmp_path / name / "config.json").read_text())["epochs"]
        assert plans[name] == len(result.history)
        if scale < 1:
            assert result.history[0]["img_size"] == 16 and result.history[-1]["img_size"] == 32
    assert plans["progressive"] > plans["full"], plans


def test_a_planned_run_keeps_to_its_budget_and_completes_its_schedule(tmp_path):
    data = tensor_data(n_train=2000, n_val=200)
    minutes, started = 0.5, time.time()
    result = train(tiny_config(tmp_path / "run", minutes=minutes, epochs=1, batch_size=64), data=data,
                   started=started)
    elapsed = time.time() - started
    # planned to end before the budget; a machine slowed after the measurement may overrun by the
    # documented tolerance, and the final save comes after the guard's last look
    assert elapsed <= minutes * 60 * (1 + OVERRUN_FRACTION) + OVERRUN_SECONDS + 5, elapsed
    planned = json.loads((tmp_path / "run" / "config.json").read_text())["epochs"]
    assert planned == len(result.history) > 1  # the plan ran whole (more epochs than --epochs 1 said)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule reached its end
    assert result.history[-1]["planned_minutes"] <= minutes
    assert result.history[-1]["minutes"] == pytest.approx(elapsed / 60, abs=0.1)


def test_planning_changes_nothing_and_resume_keeps_the_plan(tmp_path):
    """A planned run equals an --epochs run of the planned length bit for bit, and a planned run
    stopped after one epoch and resumed reaches those weights too."""
    data = tensor_data(n_train=96, n_val=24)
    options = dict(minutes=0.25, sched="onecycle")
    train(tiny_config(tmp_path / "planned", **options), data=data, stop_after=1)
    epochs = json.loads((tmp_path / "planned" / "config.json").read_text())["epochs"]
    assert epochs > 1
    # the rest of the plan, with a budget that cannot cut it short on a loaded machine
    train(tiny_config(tmp_path / "ignored", resume=str(tmp_path / "planned"), minutes=30), data=data)
    train(tiny_config(tmp_path / "fixed", epochs=epochs, sched="onecycle"), data=data)
    resumed, fixed = load_state(tmp_path / "planned"), load_state(tmp_path / "fixed")
    assert resumed["epoch"] == fixed["epoch"] == epochs - 1
    for name, tensor in fixed["model"].items():
        assert tensor.equal(resumed["model"][name]), name
