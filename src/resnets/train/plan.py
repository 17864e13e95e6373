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
from typing import Callable

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
TIMED_STEPS = 5  # their median is the step time
# Untimed steps first: the first steps of a process at a new size run slower while the allocator and
# oneDNN settle (measured: Imagenette at 64 px planned on 1,544 ms a step after one untimed step and
# ran at 1,050 ms; after 3 untimed steps it measured 1,219 ms against the run's median of 1,136).
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Plan:
    """How a budget was spent: the planned epochs and the measurements behind them."""

    minutes: float
    epochs: int
    steps_per_epoch: int
    step_s: float           # one optimizer step at the full input size, measured
    val_s: float            # one validation pass, measured (0 without validation data)
    save_s: float           # an epoch's checkpoint, weights file, metrics and curves, measured
    spent_s: float          # already gone when planning (start-up, decoding)
    train_s: float = 0.0    # every planned epoch's steps (sizes vary with progressive resizing)
    small_step_s: float | None = None  # one step at the smallest progressive size, measured
    val_every: int = 1      # a validation every val_every epochs and after the last

    @property
    def planned_minutes(self) -> float:
        """When the run is expected to end, in minutes from the command's start."""
        train_s = self.train_s or self.epochs * self.steps_per_epoch * self.step_s
        validations = self.epochs // self.val_every + (self.epochs % self.val_every > 0)
        return (self.spent_s + train_s + self.epochs * self.save_s + validations * self.val_s) / 60

    def describe(self) -> str:
        return (f"{self.epochs} epoch(s) of {self.steps_per_epoch} steps, {self.step_s * 1000:.0f} ms a step"
                f"{f' ({self.small_step_s * 1000:.0f} ms at the smallest size)' if self.small_step_s else ''}"
                f"{f', {self.val_s:.1f} s a validation' if self.val_s else ''}, {self.save_s:.1f} s a checkpoint, "
                f"measured; "
                f"{self.spent_s / 60:.1f} min spent before training; about {self.planned_minutes:.1f} of "
                f"{self.minutes:g} minutes")


def plan_epochs(seconds_left: float, step_s: float, steps_per_epoch: int, val_s: float, val_every: int,
                save_s: float = 0.0, step_s_at: Callable[[int, int], float] | None = None) -> int:
    """The most epochs that fit in ``seconds_left`` (at least 1): every epoch's steps and checkpoint,
    a validation every ``val_every`` epochs and always after the last one, and the safety margin.

    ``step_s_at(epoch, epochs)``, when given, is the step time of each epoch of a run of that
    length (progressive resizing makes early epochs cheaper, and where they end depends on the
    length); otherwise every step takes ``step_s``."""
    usable = seconds_left * (1 - MARGIN_FRACTION) - MARGIN_SECONDS
    fixed = val_s * (1 - 1 / val_every)
    per_epoch_extra = save_s + val_s / val_every
    if step_s_at is None:
        per_epoch = steps_per_epoch * step_s + per_epoch_extra
        epochs = math.floor((usable - fixed) / per_epoch) if per_epoch > 0 else MAX_PLANNED_EPOCHS
        return int(min(max(epochs, 1), MAX_PLANNED_EPOCHS))
    best = 1
    for epochs in range(1, MAX_PLANNED_EPOCHS + 1):
        total = fixed + sum(steps_per_epoch * step_s_at(e, epochs) + per_epoch_extra for e in range(epochs))
        if total > usable:
            break
        best = epochs
    return best


def size_scaled_step_seconds(full_s: float, small_s: float, full: int, small: int) -> Callable[[int], float]:
    """Step seconds at any input size, interpolated on the image area between the two measured
    sizes (a convolution's work grows with the area; the per-step overhead does not)."""
    if full <= small:
        return lambda size: full_s
    return lambda size: small_s + (full_s - small_s) * (size * size - small * small) / (full * full - small * small)


def make_plan(setup: TrainingSetup, minutes: float, started: float) -> Plan:
    """Time a few steps and a validation pass (rank 0; every rank follows its plan). With
    progressive resizing, steps are timed at the smallest size too, and each epoch of the plan
    is costed at its own size."""
    rng = ckpt.rng_state()
    resize = setup.resize
    try:
        step_s = _step_seconds(setup)
        small = resize.size_at(0, 1) if resize.enabled else setup.img_size
        small_step_s = _step_seconds(setup, small) if small < setup.img_size else None
        val_s = _validation_seconds(setup)
        save_s = _checkpoint_seconds(setup)
    finally:
        ckpt.set_rng_state(rng)
    steps_per_epoch = -(-len(setup.train_loader) // setup.config.accum_steps)
    step_s_at = None
    if small_step_s is not None:
        at_size = size_scaled_step_seconds(step_s, small_step_s, setup.img_size, small)
        step_s_at = lambda epoch, epochs: at_size(resize.size_at(epoch, epochs))  # noqa: E731
    spent = time.time() - started
    epochs = plan_epochs(minutes * 60 - spent, step_s, steps_per_epoch, val_s, setup.config.val_every, save_s,
                         step_s_at)
    epochs = int(all_reduce_sum(torch.tensor(float(epochs if setup.ctx.is_main else 0)), setup.ctx).item())
    train_s = sum(steps_per_epoch * (step_s_at(e, epochs) if step_s_at else step_s) for e in range(epochs))
    return Plan(minutes, epochs, steps_per_epoch, step_s, val_s, save_s, spent, train_s, small_step_s,
                setup.config.val_every)


def _step_seconds(setup: TrainingSetup, size: int | None = None) -> float:
    """Seconds per optimizer step: forward, loss, backward and the run's own optimizer, on copies
    (at ``size`` when given: a progressive-resizing epoch's input size)."""
    config = setup.config
    trainee = copy.deepcopy(setup.trainee)
    classifier = trainee[-1] if setup.use_feature_cache else trainee.get_classifier()
    optimizer = build_run_optimizer(config, trainee, classifier, setup.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trial = dataclasses.replace(setup, trainee=trainee, forward=trainee, net=trainee, optimizer=optimizer,
                                scheduler=scheduler, ema=None)
    trainer, meters = Trainer(trial, []), Meters(setup.device, setup.multi_label)
    trainer.train_size = size or setup.img_size
    setup.train_loader.set_epoch(0)
    first = list(itertools.islice(iter(setup.train_loader), WARMUP_STEPS + TIMED_STEPS))
    batches = list(itertools.islice(itertools.cycle(first), WARMUP_STEPS + TIMED_STEPS))  # small sets: reused
    for x, y in batches[:WARMUP_STEPS]:
        trainer.train_step(x, y, meters)
    times = []
    for x, y in batches[WARMUP_STEPS:]:
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
