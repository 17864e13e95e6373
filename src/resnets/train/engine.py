"""The training engine: a small :class:`Trainer` loop and :class:`Callback` hooks around it, as
fastai's ``Learner`` is a loop with callbacks for everything else (:mod:`.callbacks`,
:mod:`resnets.lr_find`). The loop keeps its running sums on the device and reads them every
``log_interval`` steps (one host sync).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F

from ..metrics import collect_logits, topk_accuracy
from ..multilabel import counts_at, f1_scores, mean_average_precision
from .distributed import DistContext, all_reduce_sum
from .freeze import keep_frozen_in_eval
from .resize import resize_batch
from .setup import TrainingSetup


class StopTraining(Exception):
    """Raised by a callback to end :meth:`Trainer.fit` at once, normally (fastai's CancelFitException)."""


@dataclass
class LogStats:
    """What the loop read at a log step: all ranks' mean loss and score so far this epoch."""

    epoch: int
    step: int            # steps taken in this epoch
    steps: int           # steps in the epoch
    loss: float
    score: float         # accuracy, or micro F1 for multi-label, in %
    images_per_s: float


class Callback:
    """Hooks of :class:`Trainer`; each does nothing unless overridden."""

    def context(self, trainer: "Trainer") -> ContextManager:
        """Entered around the epochs (after :meth:`on_fit_start`)."""
        return contextlib.nullcontext()

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...

    def on_step_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        """After each optimizer step, with the loss of its last batch."""

    def on_batch_end(self, trainer: "Trainer", step: int) -> None: ...

    def on_log(self, trainer: "Trainer", stats: LogStats) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, Any]) -> None: ...

    def on_interrupt(self, trainer: "Trainer") -> str | None:
        """Ctrl-C ended the epochs: save what is worth keeping; return what to tell the user."""
        return None

    def stop_requested(self) -> bool:
        """Whether this process wants every rank to stop (read at each log step, all-reduced)."""
        return False


@dataclass
class Meters:
    """Running sums kept on the device; read (one sync) only when reported."""

    device: torch.device
    multi_label: bool = False  # the score is then micro F1 at 0.5: correct = 2 TP, judged = 2 TP + FP + FN
    loss: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)
    judged: torch.Tensor = field(init=False)
    seen: int = 0

    def __post_init__(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.judged = torch.zeros((), device=self.device, dtype=torch.long)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.detach().float() * len(labels)
        if self.multi_label:
            predicted, truth = logits.detach() >= 0, labels.bool()
            tp = (predicted & truth).sum()
            self.correct += 2 * tp
            self.judged += 2 * tp + (predicted ^ truth).sum()
        else:
            self.correct += (logits.detach().argmax(1) == labels).sum()
            self.judged += len(labels)
        self.seen += len(labels)

    def read(self, ctx: DistContext, stop: bool = False) -> tuple[float, float, bool]:
        """Mean loss and accuracy (multi-label: micro F1) in %, over all ranks, and whether any
        rank asked to stop."""
        counts = torch.tensor([float(self.seen), float(stop)], device=self.device)
        totals = torch.cat([self.loss.view(1), self.correct.float().view(1), self.judged.float().view(1), counts])
        loss, correct, judged, seen, stops = all_reduce_sum(totals, ctx).tolist()
        return loss / max(seen, 1), 100.0 * correct / max(judged, 1), stops > 0


class Trainer:
    """Runs epochs of a :class:`TrainingSetup`, calling its callbacks.

    State the callbacks read and write: ``epoch``, ``start_epoch``, ``history`` (one row per
    epoch), ``best_score``, ``saved_epoch`` (the epoch the last checkpoint holds), ``should_stop``,
    ``critical`` (a context in which Ctrl-C waits: a checkpoint being written).
    """

    def __init__(self, setup: TrainingSetup, callbacks: list[Callback]):
        self.setup, self.config, self.callbacks = setup, setup.config, list(callbacks)
        self.epoch = self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_score: float | None = None
        self.saved_epoch: int | None = None
        self.should_stop = False
        self.train_size = setup.img_size
        self.critical: Callable[[], ContextManager] = contextlib.nullcontext

    def emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def fit(self, last_epoch: int | None = None) -> list[dict[str, Any]]:
        """Train epochs ``start_epoch`` (set by a resuming callback) up to ``last_epoch`` (default:
        the config's), until a callback sets ``should_stop`` or raises :class:`StopTraining`."""
        self.emit("on_fit_start")
        last = self.config.epochs if last_epoch is None else last_epoch
        try:
            with contextlib.ExitStack() as stack:
                for callback in self.callbacks:
                    stack.enter_context(callback.context(self))
                for epoch in range(self.start_epoch, last):
                    self.run_epoch(epoch)
                    if self.should_stop:
                        break
        except StopTraining:
            pass
        except KeyboardInterrupt:
            messages = [m for m in (c.on_interrupt(self) for c in self.callbacks) if m]
            raise KeyboardInterrupt("; ".join(messages)) from None
        return self.history

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch: train, validate when due, note the best score, then the epoch-end callbacks."""
        self.epoch = epoch
        began = time.perf_counter()
        self.emit("on_epoch_start", epoch)
        row = self.train_epoch(epoch)
        if (epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.config.epochs:
            row.update(self.validate())
        row["epoch_s"] = time.perf_counter() - began
        row["finished_at"] = time.time()
        score = row.get("val_map" if self.setup.multi_label else "val_top1")
        self.improved = self._improved(score)
        if self.improved and score is not None:
            self.best_score = score
        self.history.append(row)
        self.emit("on_epoch_end", row)
        return row

    def _improved(self, score: float | None) -> bool:
        """Whether this epoch's weights are the ones to publish: the best validated so far, or
        (with no validation data) the latest."""
        if self.setup.val_loader is None:
            return True
        return score is not None and (self.best_score is None or score > self.best_score)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training loader; the epoch's row (loss, score, rate, lr)."""
        setup, config = self.setup, self.config
        setup.net.train()
        keep_frozen_in_eval(setup.model, setup.frozen_parts)
        setup.train_loader.set_epoch(epoch)
        self.train_size = setup.resize.size_at(epoch, config.epochs)
        meters = Meters(setup.device, setup.multi_label)
        steps, start = len(setup.train_loader), time.perf_counter()
        for i, (x, y) in enumerate(setup.train_loader):
            self.train_step(x, y, meters, step_now=(i + 1) % config.accum_steps == 0 or i + 1 == steps)
            if (i + 1) % config.log_interval == 0 or i + 1 == steps:
                self._read_and_log(meters, epoch, i + 1, steps, start)
            self.emit("on_batch_end", i + 1)
        loss, score, _ = meters.read(setup.ctx)
        seconds = time.perf_counter() - start
        return {"epoch": epoch + 1, "train_loss": loss, "train_f1" if setup.multi_label else "train_acc": score,
                "img_size": self.train_size, "lr": setup.optimizer.param_groups[0]["lr"],
                "images_per_s": meters.seen * setup.ctx.world_size / max(seconds, 1e-9), "train_s": seconds}

    def _read_and_log(self, meters: Meters, epoch: int, step: int, steps: int, start: float) -> None:
        """The log step: one all-reduce of the sums and of the callbacks' stop requests."""
        stop = any(callback.stop_requested() for callback in self.callbacks)
        loss, score, stopped = meters.read(self.setup.ctx, stop)
        if stopped:  # every rank learns it here, at the same step
            raise KeyboardInterrupt
        rate = meters.seen * self.setup.ctx.world_size / (time.perf_counter() - start)
        self.emit("on_log", LogStats(epoch, step, steps, loss, score, rate))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, meters: Meters, step_now: bool = True) -> torch.Tensor:
        """Forward and backward of one batch; with ``step_now`` the optimizer and schedule step too
        (gradient accumulation otherwise). Returns the batch's loss."""
        setup, config = self.setup, self.config
        if setup.resize.enabled:
            x = resize_batch(x, self.train_size)
        if config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if setup.batch_mix is not None:
            x, target = setup.batch_mix(x, y)
        sync = contextlib.nullcontext() if step_now or not setup.ctx.enabled else setup.net.no_sync()
        with sync:
            with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = setup.net(x)
                loss = self.loss(logits, target)
            scale = len(y) if config.loss_reduction == "sum" else 1  # the batch's sum = its mean x its size
            (loss * scale / config.accum_steps).backward()
        if step_now:
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(setup.trainee.parameters(), config.grad_clip)
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
            setup.scheduler.step()
            self.emit("on_step_end", loss)
        meters.add(loss, logits, y)
        return loss

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.setup.multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return F.cross_entropy(logits.float(), target, weight=self.setup.class_weight,
                               label_smoothing=self.config.label_smoothing)

    def validate(self) -> dict[str, Any]:
        """The validation row (rank 0; empty without validation data): loss and top-1/top-5, or mAP and F1."""
        setup = self.setup
        if setup.val_loader is None or not setup.ctx.is_main:
            return {}
        logits, labels = collect_logits(setup.eval_model, setup.val_loader, amp=self.config.amp,
                                        channels_last=self.config.channels_last)
        if setup.multi_label:
            return multi_label_scores(logits, labels)
        top1, top5 = topk_accuracy(logits, labels, (1, 5))
        return {"val_loss": F.cross_entropy(logits, labels).item(), "val_top1": top1, "val_top5": top5}


def multi_label_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """A multi-label epoch's validation row: BCE loss, mAP and micro F1 at 0.5 (both in %)."""
    probs = logits.float().sigmoid()
    micro, _ = f1_scores(*counts_at(probs, labels, 0.5))
    return {"val_loss": F.binary_cross_entropy_with_logits(logits.float(), labels.float()).item(),
            "val_map": 100 * mean_average_precision(probs, labels), "val_f1": 100 * micro}
