"""The callbacks of a training run, one concern each around :class:`resnets.train.engine.Trainer`'s
loop (:func:`standard_callbacks` lists them in the order they run)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn
from tqdm import tqdm

from ..errors import ResnetsError, first_line
from ..weights import save_weights
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DeferredInterrupt, all_reduce_sum, barrier
from .engine import Callback, LogStats, Trainer
from .freeze import unfreeze
from .optim import zero_missing_momentum

# No tqdm monitor thread in a training process (its bars, tqdm.auto's too, read this class
# attribute). tqdm starts the thread even for a disabled bar, and its atexit hook wakes it, never
# joined, while the interpreter finalises: an intermittent "Fatal Python error: PyThreadState_Get
# ... the GIL is released" (exit -6) after a Ctrl-C had saved everything.
tqdm.monitor_interval = 0

MAX_WEIGHT = 1e6  # a parameter this large is a run that blew up, even where BatchNorm hides it from the loss
OVERRUN_FRACTION, OVERRUN_SECONDS = 0.10, 10.0  # what a --minutes run may overrun before it is stopped


def all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite (one sync)."""
    values = [t.detach() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in values]).all()) if values else True


def largest_weight(model: nn.Module) -> float:
    """The largest magnitude among ``model``'s trainable parameters (BatchNorm statistics aside)."""
    values = [p.detach().abs().max() for p in model.parameters() if p.numel()]
    return float(torch.stack(values).max()) if values else 0.0


def _published(trainer: Trainer) -> nn.Module:
    """The model whose weights are published: the EMA when enabled."""
    setup = trainer.setup
    return setup.ema.module if setup.ema is not None else setup.model


class Checkpointer(Callback):
    """``config.json`` at the start; at each epoch's end ``state.pt`` (everything a resume needs),
    the best weights, metrics and curves, replaced atomically; resuming restores ``state.pt``."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_fit_start(self, trainer: Trainer) -> None:
        config, setup = trainer.config, trainer.setup
        if config.resume:
            self._restore(trainer)
        elif setup.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_config(self.run_dir, {**config.to_dict(), "model_name": setup.model.model_name})
        trainer.saved_epoch = trainer.start_epoch - 1 if config.resume else None

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        with trainer.critical():  # a Ctrl-C waits until the checkpoint is whole
            if trainer.setup.ctx.is_main:
                self._save(trainer, trainer.epoch, trainer.improved)
            trainer.saved_epoch = trainer.epoch
        barrier(trainer.setup.ctx)

    def _save(self, trainer: Trainer, epoch: int, improved: bool) -> None:
        setup = trainer.setup
        if improved:
            save_weights(self.run_dir / ckpt.WEIGHTS, _published(trainer), class_names=setup.data.class_names,
                         preprocessing=setup.preprocessing, source=f"resnets train ({self.run_dir})",
                         extra={"epoch": epoch, "val_top1": trainer.history[-1].get("val_top1")})
        ckpt.save_state(self.run_dir, self.state(trainer, epoch))
        ckpt.drop_overwritten(self.run_dir)  # the new run has a checkpoint: the replaced one can go
        ckpt.write_metrics(self.run_dir, trainer.history)
        ckpt.plot_curves(self.run_dir, trainer.history)

    @staticmethod
    def state(trainer: Trainer, epoch: int) -> dict[str, Any]:
        setup = trainer.setup
        return {"epoch": epoch, "model": setup.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
                "scheduler": setup.scheduler.state_dict(),
                "ema": setup.ema.state_dict() if setup.ema is not None else None,
                "rng": ckpt.rng_state(), "history": trainer.history, "best_top1": trainer.best_score}

    def _restore(self, trainer: Trainer) -> None:
        """Continue from ``state.pt``; one line if it does not belong to this run's config."""
        resume = trainer.config.resume
        state = ckpt.load_state(resume)
        try:
            self._load_state(trainer, state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            raise ResnetsError(f"cannot resume {resume}: its {ckpt.STATE} does not match its "
                               f"{ckpt.CONFIG} ({type(error).__name__}: {first_line(error, 200)})") from None

    @staticmethod
    def _load_state(trainer: Trainer, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a dict was expected, found {type(state).__name__}")
        setup = trainer.setup
        setup.model.load_state_dict(state["model"])
        setup.optimizer.load_state_dict(state["optimizer"])
        setup.scheduler.load_state_dict(state["scheduler"])
        if setup.ema is not None and state["ema"] is not None:
            setup.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        trainer.history, trainer.best_score = list(state["history"]), state["best_top1"]
        trainer.start_epoch = int(state["epoch"]) + 1
        if not 1 <= trainer.start_epoch <= trainer.config.epochs:
            raise ValueError(f"epoch {state['epoch']} is outside the run's {trainer.config.epochs} epochs")


class InterruptHandler(Callback):
    """Ctrl-C: noted (never inside a checkpoint), every rank stops at the same log step, rank 0
    saves the weights so far and says from which checkpoint a resume continues."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.interrupt: DeferredInterrupt | None = None

    def context(self, trainer: Trainer) -> ContextManager:
        self.interrupt = DeferredInterrupt(trainer.setup.ctx)
        trainer.critical = self.interrupt.held
        return self.interrupt

    def stop_requested(self) -> bool:
        return self.interrupt is not None and self.interrupt.requested

    def on_interrupt(self, trainer: Trainer) -> str | None:
        setup = trainer.setup
        if not setup.ctx.is_main:
            return None
        epoch, path = trainer.epoch, self.run_dir / "interrupted.safetensors"
        save_weights(path, _published(trainer), class_names=setup.data.class_names,
                     preprocessing=setup.preprocessing, source=f"resnets train ({self.run_dir}), interrupted",
                     extra={"epoch": epoch})
        when = "after" if trainer.saved_epoch == epoch else "in"  # after: stopped between epochs
        resume = "no epoch had finished, so there is no checkpoint to resume from" if trainer.saved_epoch is None \
            else f"`resnets train --resume {self.run_dir}` continues from the checkpoint of epoch {trainer.saved_epoch + 1}"
        return f"interrupted {when} epoch {epoch + 1} of {trainer.config.epochs}; weights so far in {path}; {resume}"


class DivergenceGuard(Callback):
    """A loss that stops being finite ends the run with one line (the same all-reduced value on
    every rank, so all stop together), and non-finite weights are never saved. Runs before the
    :class:`Checkpointer`."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_log(self, trainer: Trainer, stats: LogStats) -> None:
        if not math.isfinite(stats.loss):
            raise self.diverged(trainer, f"the loss is {stats.loss} at step {stats.step}")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        setup = trainer.setup
        if not math.isfinite(row["train_loss"]):
            raise self.diverged(trainer, f"the loss is {row['train_loss']}")
        if setup.ctx.is_main:  # rank 0 validates and saves
            models = [setup.model] + ([setup.ema.module] if setup.ema is not None else [])
            if not all(all_finite(model) for model in models):
                raise self.diverged(trainer, "the weights are no longer finite")
            largest = max(largest_weight(model) for model in models)
            if largest > MAX_WEIGHT:
                raise self.diverged(trainer, f"the weights reach {largest:.3g}")
            if not math.isfinite(row.get("val_loss", 0.0)):
                raise self.diverged(trainer, f"the validation loss is {row['val_loss']}")

    def diverged(self, trainer: Trainer, what: str) -> ResnetsError:
        """The one-line error that ends a diverged run (exit status 2: the settings need changing)."""
        group = trainer.setup.optimizer.param_groups[0]
        lr = group.get("initial_lr", group["lr"])
        kept = f"; {self.run_dir} keeps the checkpoint of epoch {trainer.saved_epoch + 1}" \
            if trainer.saved_epoch is not None else ""
        return ResnetsError(f"training diverged in epoch {trainer.epoch + 1}: {what}; no weights of it were saved"
                            f"{kept}; lower the learning rate (peak {lr:g}) or add --warmup-epochs")


class EmaUpdater(Callback):
    """The weight EMA follows the trained weights after every optimizer step."""

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        trainer.setup.ema.update_parameters(trainer.setup.trainee)


class WhiteningBias(Callback):
    """``--whiten-bias-epochs N`` (airbench): the whitening layer's bias, in its own parameter group,
    trains at a rate falling linearly to zero over the first N epochs' steps, then not at all."""

    def __init__(self, epochs: float):
        self.epochs, self.step, self.steps, self.group = epochs, 0, 1, None

    def on_fit_start(self, trainer: Trainer) -> None:
        setup = trainer.setup
        self.group = next(g for g in setup.optimizer.param_groups if g.get("name") == "whiten_bias")
        self.group.setdefault("initial_lr", self.group["lr"])
        self.steps = max(1, round(self.epochs * setup.steps_per_epoch))
        self.step = trainer.start_epoch * setup.steps_per_epoch  # resumed: the steps already taken
        self._set()

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        self.step += 1
        self._set()

    def _set(self) -> None:
        self.group["lr"] = self.group["initial_lr"] * max(0.0, 1 - self.step / self.steps)
        if self.step >= self.steps:
            for param in self.group["params"]:
                param.requires_grad_(False)
                param.grad = None


class Unfreezer(Callback):
    """``--unfreeze-after N``: everything trains from epoch N on (a fresh DDP wrapper)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        setup, after = trainer.setup, trainer.config.unfreeze_after
        if setup.frozen_parts and after is not None and epoch >= after:
            unfreeze(setup.model, setup.frozen_parts)
            zero_missing_momentum(setup.optimizer)
            setup.frozen_parts = []
            setup.wrap()


class ProgressLogger(Callback):
    """A progress bar per epoch (loss, score, images/s) and one line per finished epoch, on rank 0."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def _shown(self, trainer: Trainer) -> bool:
        return trainer.config.progress and trainer.setup.ctx.is_main

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.bar = tqdm(total=len(trainer.setup.train_loader), desc=f"epoch {epoch + 1}/{trainer.config.epochs}",
                        unit="batch", disable=not self._shown(trainer), file=sys.stderr, leave=False)

    def on_log(self, trainer: Trainer, stats: LogStats) -> None:
        self.bar.set_postfix({"loss": f"{stats.loss:.3f}", "f1" if trainer.setup.multi_label else "acc":
                              f"{stats.score:.1f}", "img_s": f"{stats.images_per_s:.0f}"}, refresh=False)

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        self.bar.update(1)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.bar.close()
        if self._shown(trainer):
            tqdm.write(epoch_line(row, trainer.config.epochs, trainer.setup.resize.enabled), file=sys.stderr)


def epoch_line(row: dict[str, Any], epochs: int, show_size: bool) -> str:
    """``epoch 3/10: train loss ... acc ..., val loss ... top1 ..., lr ..., N img/s, S s``."""
    val = f", val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% top5 {row['val_top5']:.2f}%" \
        if "val_top1" in row else ""
    if "val_map" in row:
        val = f", val loss {row['val_loss']:.4f} mAP {row['val_map']:.2f}% F1@0.5 {row['val_f1']:.2f}%"
    train_score = f"F1@0.5 {row['train_f1']:.2f}%" if "train_f1" in row else f"acc {row['train_acc']:.2f}%"
    size = f" at {row['img_size']}px" if show_size else ""
    return (f"epoch {row['epoch']}/{epochs}{size}: train loss {row['train_loss']:.4f} {train_score}{val}, "
            f"lr {row['lr']:.4g}, {row['images_per_s']:.0f} img/s, {row['train_s']:.1f} s")


class EpochLimit(Callback):
    """``--stop-after N``: stop (resumable) after N epochs of this session."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.epoch + 1 - trainer.start_epoch >= self.epochs:
            trainer.should_stop = True


class RunClock(Callback):
    """Each epoch's row records the minutes since the command started (earlier sessions of a resumed
    run included) and, for a planned run, the minutes its plan foresaw."""

    def __init__(self, started: float, planned_minutes: float | None):
        self.started, self.planned_minutes, self.before = started, planned_minutes, 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.before = trainer.history[-1].get("minutes", 0.0) if trainer.history else 0.0

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        row["minutes"] = self.before + (time.time() - self.started) / 60
        if self.planned_minutes is not None:
            row["planned_minutes"] = self.planned_minutes


class TimeBudget(Callback):
    """``--max-minutes M``: stop (resumable) before an epoch that would end more than M minutes
    after ``started``, judged from this session's mean epoch time. Rank 0 decides for all ranks,
    so that no rank waits for a collective the others left."""

    def __init__(self, minutes: float, started: float, run_dir: Path):
        self.minutes, self.started, self.run_dir = minutes, started, run_dir
        self.epochs_began = time.time()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.epochs_began = time.time()
        if trainer.history:  # a resumed run: what earlier sessions spent is off the budget
            self.started -= 60 * trainer.history[-1].get("minutes", 0.0)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.should_stop or trainer.epoch + 1 >= trainer.config.epochs:
            return
        now = time.time()
        next_epoch_ends = now + (now - self.epochs_began) / (trainer.epoch + 1 - trainer.start_epoch)
        late = trainer.setup.ctx.is_main and next_epoch_ends > self.started + 60 * self.minutes
        if all_reduce_sum(torch.tensor(float(late)), trainer.setup.ctx).item() == 0:
            return
        trainer.should_stop = True
        if trainer.config.progress and trainer.setup.ctx.is_main:
            tqdm.write(f"time limit: stopping after epoch {row['epoch']} of {trainer.config.epochs} "
                       f"(--max-minutes {self.minutes:g}); --resume {self.run_dir} continues", file=sys.stderr)


def standard_callbacks(config: TrainConfig, run_dir: Path, started: float, ema: bool,
                       planned_minutes: float | None = None) -> list[Callback]:
    """A training run's callbacks, in the order they run: divergence before the checkpoint it
    guards (and before the progress bar shows a loss), the epoch line after the checkpoint, the
    session's limits last."""
    callbacks: list[Callback] = [Unfreezer(), InterruptHandler(run_dir)]
    if ema:
        callbacks.append(EmaUpdater())
    callbacks += [RunClock(started, planned_minutes), DivergenceGuard(run_dir), Checkpointer(run_dir),
                  ProgressLogger()]
    if config.whiten_bias_epochs is not None:  # after the Checkpointer: a resumed run's step count
        callbacks.append(WhiteningBias(config.whiten_bias_epochs))
    if config.stop_after is not None:
        callbacks.append(EpochLimit(config.stop_after))
    # A planned run ends inside its budget; the guard, there for a machine slower than measured,
    # tolerates a documented overrun so that a passing slowdown does not cut the schedule short.
    planned_limit = None if config.minutes is None else config.minutes * (1 + OVERRUN_FRACTION) + OVERRUN_SECONDS / 60
    limit = min(m for m in (config.max_minutes, planned_limit, math.inf) if m is not None)
    if limit < math.inf:
        callbacks.append(TimeBudget(limit, started, run_dir))
    return callbacks
