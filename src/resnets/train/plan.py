"""``--minutes``: a run's length planned from the step rate measured on this machine.

The plan counts from the command's start, so what was already spent (imports, decoding the
data, building the model) is off the budget. Training steps and a validation pass are timed on
a throwaway copy of the model and optimizer, with the random-number state saved and restored,
so planning changes nothing the run computes: a planned run equals an ``--epochs`` run of the
planned length, bit for bit. The schedule (warm-up and decay) is then built for the planned
epochs, so a one-cycle or cosine schedule always completes its anneal, where ``--max-minutes``
only cuts a run short. A resumed run keeps its plan: the schedule must stay the one it started.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..weights import save_weights

from . import checkpoint as ckpt
from .distributed import all_reduce_sum
from .engine import Meters, Trainer
from .setup import TrainingSetup, build_run_optimizer

# Reserved at the end of the budget: the last checkpoint, the weights file, the exit.
MARGIN_SECONDS = 5.0
MARGIN_FRACTION = 0.03
MAX_PLANNED_EPOCHS = 1000
TIMED_STEPS = 5  # after one untimed step (first-call allocations); their median is the step time


@dataclass(frozen=True)
class Plan:
    """How a budget was spent: the planned epochs and the measurements behind them."""

    minutes: float
    epochs: int
    steps_per_epoch: int
    step_s: float           # one optimizer step, measured
    val_s: float            # one validation pass, measured (0 without validation data)
    save_s: float           # an epoch's checkpoint, weights file, metrics and curves, measured
    spent_s: float          # already gone when planning (start-up, decoding)

    @property
    def planned_minutes(self) -> float:
        """When the run is expected to end, in minutes from the command's start."""
        per_epoch = self.steps_per_epoch * self.step_s + self.val_s + self.save_s
        return (self.spent_s + self.epochs * per_epoch) / 60

    def describe(self) -> str:
        return (f"{self.epochs} epoch(s) of {self.steps_per_epoch} steps, {self.step_s * 1000:.0f} ms a step"
                f"{f', {self.val_s:.1f} s a validation' if self.val_s else ''}, {self.save_s:.1f} s a checkpoint, "
                f"measured; "
                f"{self.spent_s / 60:.1f} min spent before training; about {self.planned_minutes:.1f} of "
                f"{self.minutes:g} minutes")


def plan_epochs(seconds_left: float, step_s: float, steps_per_epoch: int, val_s: float, val_every: int,
                save_s: float = 0.0) -> int:
    """The most epochs that fit in ``seconds_left`` (at least 1): every epoch's steps and checkpoint,
    a validation every ``val_every`` epochs and always after the last one, and the safety margin."""
    usable = seconds_left * (1 - MARGIN_FRACTION) - MARGIN_SECONDS
    per_epoch = steps_per_epoch * step_s + save_s + val_s / val_every
    epochs = math.floor((usable - val_s * (1 - 1 / val_every)) / per_epoch) if per_epoch > 0 else MAX_PLANNED_EPOCHS
    return int(min(max(epochs, 1), MAX_PLANNED_EPOCHS))


def make_plan(setup: TrainingSetup, minutes: float, started: float) -> Plan:
    """Time a few steps and a validation pass (rank 0; every rank follows its plan)."""
    rng = ckpt.rng_state()
    try:
        step_s = _step_seconds(setup)
        val_s = _validation_seconds(setup)
        save_s = _checkpoint_seconds(setup)
    finally:
        ckpt.set_rng_state(rng)
    steps_per_epoch = -(-len(setup.train_loader) // setup.config.accum_steps)
    spent = time.time() - started
    epochs = plan_epochs(minutes * 60 - spent, step_s, steps_per_epoch, val_s, setup.config.val_every, save_s)
    epochs = int(all_reduce_sum(torch.tensor(float(epochs if setup.ctx.is_main else 0)), setup.ctx).item())
    return Plan(minutes, epochs, steps_per_epoch, step_s, val_s, save_s, spent)


def _step_seconds(setup: TrainingSetup) -> float:
    """Seconds per optimizer step: forward, loss, backward and the run's own optimizer, on copies."""
    config = setup.config
    trainee = copy.deepcopy(setup.trainee)
    classifier = trainee[-1] if setup.use_feature_cache else trainee.get_classifier()
    optimizer = build_run_optimizer(config, trainee, classifier, setup.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trial = dataclasses.replace(setup, trainee=trainee, forward=trainee, net=trainee, optimizer=optimizer,
                                scheduler=scheduler, ema=None)
    trainer, meters = Trainer(trial, []), Meters(setup.device, setup.multi_label)
    setup.train_loader.set_epoch(0)
    batches = list(itertools.islice(iter(setup.train_loader), TIMED_STEPS + 1))
    trainer.train_step(*batches[0], meters)
    times = []
    for x, y in batches[1:] or batches:
        began = time.perf_counter()
        trainer.train_step(x, y, meters)
        meters.read(setup.ctx)  # waits for the device
        times.append(time.perf_counter() - began)
    return statistics.median(times) * config.accum_steps


def _validation_seconds(setup: TrainingSetup) -> float:
    """Seconds of one validation pass (rank 0 validates), from a few timed batches."""
    if setup.val_loader is None or not setup.ctx.is_main:
        return 0.0
    batches = len(setup.val_loader)
    model = setup.trainee.eval()
    began, timed = time.perf_counter(), 0
    with torch.no_grad(), torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.config.amp):
        for x, _ in itertools.islice(iter(setup.val_loader), TIMED_STEPS):
            if setup.config.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x).float().sum().item()
            timed += 1
    setup.trainee.train()
    return (time.perf_counter() - began) / max(timed, 1) * batches


def _checkpoint_seconds(setup: TrainingSetup) -> float:
    """Seconds to write an epoch's files (state, weights, metrics, curves), into a scratch folder."""
    if not setup.ctx.is_main:
        return 0.0
    row = {"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "val_loss": 1.0, "val_top1": 50.0}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        state = {"model": setup.model.state_dict(), "rng": ckpt.rng_state(), "history": [row, row]}
        ckpt.save_state(folder, state)
        save_weights(folder / ckpt.WEIGHTS, setup.model, preprocessing=setup.preprocessing)
        ckpt.write_metrics(folder, [row, row])
        ckpt.plot_curves(folder, [row, {**row, "epoch": 2}])
    return time.perf_counter() - began
