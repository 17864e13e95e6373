"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): ``resnets lr-find``.

The rate grows exponentially over the steps of ``resnets train``'s own set-up and engine (the
:class:`LRFinder` callback replacing the schedule) until the smoothed loss exceeds 4x its minimum;
the suggestions are read where it still falls. The model's weights are thrown away.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .errors import ResnetsError
from .fileio import save_figure
from .settings import Bound
from .train.config import TrainConfig
from .train.distributed import DistContext, local_device
from .train.engine import Callback, StopTraining, Trainer
from .train.setup import prepare

# The sweep's own numbers, checked as the training settings are (resnets.train.config.Bound).
SWEEP_RULES = {"start": Bound(float, 0, 1e3, low_open=True), "end": Bound(float, 0, 1e6, low_open=True),
               "steps": Bound(int, 10, 100_000)}
SMOOTHING = 0.98      # fastai's beta
DIVERGENCE = 4.0      # stop when the smoothed loss exceeds this multiple of its minimum


@dataclass
class LRFindResult:
    """The sweep: the rate and smoothed loss of every step taken, and the two suggestions."""

    lrs: list[float]
    losses: list[float]           # smoothed, debiased
    raw_losses: list[float]
    steepest: float               # rate where the smoothed loss falls fastest (per log-rate), before its minimum
    minimum_over_10: float        # rate of the smoothed loss's minimum, / 10
    valley: float                 # fastai's valley rule
    diverged_at: float | None     # rate at which the sweep stopped (None: it reached ``end``)
    final_over_minimum: float     # the last smoothed loss / its minimum (the stop rule is 4)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_sweep(start: float, end: float, steps: int) -> None:
    """One-line errors for a sweep that cannot run."""
    for name, value in (("start", start), ("end", end), ("steps", steps)):
        problem = SWEEP_RULES[name].problem(value)
        if problem is not None:
            raise ResnetsError(f"--{name} {problem}")
    if end <= start:
        raise ResnetsError(f"--end {end:g} must be larger than --start {start:g}")


def lr_find(config: TrainConfig, start: float = 1e-7, end: float = 10.0, steps: int = 200) -> LRFindResult:
    """Sweep the learning rate over ``steps`` training steps of ``config``'s set-up (one process)."""
    check_sweep(start, end, steps)
    device = local_device(config.device)
    setup = prepare(config, None, device, DistContext())
    if len(setup.train_loader) == 0:
        raise ResnetsError("the training data yields no batch; lower --batch-size")
    sweep = LRFinder(start, end, steps)
    try:
        Trainer(setup, [sweep]).fit(last_epoch=-(-steps // len(setup.train_loader)))
    finally:
        if sweep.bar is not None:
            sweep.bar.close()
    return _result(sweep.lrs, sweep.smoothed, sweep.raw, sweep.diverged_at, steps)


class LRFinder(Callback):
    """The sweep as a training callback: the rate grows by a constant factor each optimizer step,
    the loss is smoothed, and training stops at ``steps`` steps or once the smoothed loss exceeds
    :data:`DIVERGENCE` times its minimum."""

    def __init__(self, start: float, end: float, steps: int):
        self.start, self.steps = start, steps
        self.growth = (end / start) ** (1 / (steps - 1))
        self.lrs: list[float] = []
        self.raw: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.best = 0.0, math.inf
        self.diverged_at: float | None = None
        self.bar: tqdm | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=self.steps, desc="lr-find", unit="step", file=sys.stderr, leave=False,
                        disable=not trainer.config.progress)
        optimizer = trainer.setup.optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.start
        trainer.setup.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.growth ** step)

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        lr = self.start * self.growth ** len(self.lrs)  # the rate this step used (LambdaLR's own product)
        value = loss.detach().float().item()
        self.bar.update(1)
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * value
        smooth = self.average / (1 - SMOOTHING ** (len(self.lrs) + 1))
        if not math.isfinite(smooth) or (self.lrs and smooth > DIVERGENCE * self.best):
            self.diverged_at = lr
            raise StopTraining
        self.lrs.append(lr)
        self.raw.append(value)
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        if len(self.lrs) == self.steps:
            raise StopTraining


def _result(lrs: list[float], smoothed: list[float], raw: list[float], diverged_at: float | None,
            steps: int) -> LRFindResult:
    """The suggestions, read as fastai does past the first 10 % of the sweep (the smoothed loss
    is still settling there) and before its last 5 steps (already climbing), and only up to the
    smoothed loss's minimum: past it the loss rises, whether or not it reached the stop rule."""
    first, last = steps // 10, len(lrs) - 5
    if last - first < 3:
        raise ResnetsError(f"the loss diverged after {len(lrs)} of {steps} steps, at lr {diverged_at:g}; "
                           "lower --start or --end, or raise --steps")
    lrs_read, losses_read = lrs[first:last], smoothed[first:last]
    lowest = int(np.argmin(losses_read))
    descent = slice(0, max(lowest, 2) + 1)
    return LRFindResult(lrs, smoothed, raw, steepest_descent(lrs_read[descent], losses_read[descent]),
                        lrs_read[lowest] / 10, valley(lrs_read, losses_read), diverged_at,
                        smoothed[-1] / min(smoothed))


def steepest_descent(lrs: list[float], losses: list[float]) -> float:
    """The rate where ``losses`` fall fastest against log(rate)."""
    slope = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slope))])


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's default suggestion: the longest run of decreasing losses (longest decreasing
    subsequence), and the rate a third plus a sixth of the way into it."""
    longest = [1] * len(losses)
    end = 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end]
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """The smoothed loss against the rate (log axis), the suggestions marked; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.raw_losses, color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.losses, label="smoothed loss")
    marks = ((result.valley, "-.", "valley", "C3"), (result.steepest, "--", "steepest", "C1"),
             (result.minimum_over_10, ":", "minimum / 10", "C2"))
    for lr, style, name, colour in marks:
        ax.axvline(lr, linestyle=style, color=colour, label=f"{name}: {lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    bottom = min(result.raw_losses) * 0.95
    ax.set_ylim(bottom, max(min(max(result.raw_losses), DIVERGENCE * min(result.losses) * 1.1), bottom + 1e-3))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
