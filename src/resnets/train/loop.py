"""The training loop: :func:`train` runs a :class:`TrainConfig` and returns a :class:`RunResult`.

Speed: the data lives in memory as uint8 and is augmented per batch on the training device;
losses and accuracy are summed on the device and read once per log interval (no host sync
per step); channels-last, bf16 autocast, torch.compile and fused optimizers are options.
Reproducibility: every random draw derives from ``seed`` and the epoch, and the RNG state is
checkpointed at epoch ends, so ``--resume`` reaches bitwise the weights of an unbroken run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import ResnetsError
from ..models import ResNet, create_model
from ..preprocessing import Preprocessing
from ..weights import save_weights
from ..weights.resolve import load_model
from . import checkpoint as ckpt
from .config import RunResult, TrainConfig, check_number
from .distributed import (DeferredInterrupt, DistContext, all_reduce_sum, barrier, in_launched_group,
                          init_from_env, launch, local_device, shutdown, wrap_model)
from .ema import build_ema
from .freeze import freeze, keep_frozen_in_eval, parse_freeze, set_requires_grad
from .inputs import FeatureLoader, InMemoryData, StreamingData, StreamLoader, open_training_data
from .mixup import build_batch_mix
from .optim import DEFAULT_WEIGHT_DECAY, build_optimizer, default_lr, param_groups
from .resize import ResizeSchedule, resize_batch
from .schedule import build_scheduler

# No tqdm monitor thread in a training process (its bars, tqdm.auto's too, read this class
# attribute). tqdm starts the thread even for a disabled bar, and its atexit hook wakes it, never
# joined, while the interpreter finalises: an intermittent "Fatal Python error: PyThreadState_Get
# ... the GIL is released" (exit -6) after a Ctrl-C had saved everything.
tqdm.monitor_interval = 0

# Settings a resumed run may change; everything else comes from the run's config.json.
WHITENING_IMAGES = 5000  # training images whose patches --patch-whitening fits (airbench uses 5,000)
RESUME_OVERRIDES = ("device", "progress", "workers", "log_interval", "val_every", "max_minutes")


def train(config: TrainConfig, data: InMemoryData | None = None, stop_after: int | None = None,
          overwrite: bool = False) -> RunResult:
    """Train (or fine-tune, or resume) a model as ``config`` says.

    Args:
        config: the run's settings; ``config.resume`` names a run directory to continue.
        data: decoded images to train on instead of reading ``config.data`` (the Python API,
            the demo); must be given again when resuming such a run.
        stop_after: stop (checkpointed, resumable) after this many epochs of this session.
        overwrite: start a new run in ``config.out`` even if it holds an older run's files (they
            are deleted once this run has its first checkpoint); otherwise such a folder is refused.

    The run directory is locked for the whole call (a second run into it is refused). With
    ``config.procs > 1`` the run happens in that many new processes (DDP), and the result of
    rank 0 is returned; ``config.max_minutes`` counts from this call. A run whose loss stops
    being finite ends with a :class:`ResnetsError` and publishes none of its non-finite weights.
    """
    started = time.time()
    if stop_after is not None:
        check_number("stop_after", stop_after)
    run_dir = Path(config.resume or config.out or "runs/train")
    with _own_run_dir(run_dir, bool(config.resume), overwrite):
        if config.resume:
            config = _resumed_config(config)
        if config.procs > 1 and not in_launched_group():
            return launch(_train_in_group, config.procs, (config, data, stop_after, started))
        return _train_in_group(config, data, stop_after, started)


def _own_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> contextlib.AbstractContextManager:
    """The run directory's lock, taken by the process that writes it (rank 0 under torchrun)."""
    if in_launched_group() and os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext(run_dir)
    return ckpt.own_run_dir(run_dir, resume, overwrite)


def _train_in_group(config: TrainConfig, data: InMemoryData | None, stop_after: int | None,
                    started: float) -> RunResult:
    """One process's part of a run (the whole run when there is one process)."""
    device = local_device(config.device)
    ctx = init_from_env(device)
    try:
        return _Run(config, data, device, ctx, started).fit(stop_after)
    finally:
        shutdown(ctx)


def _resumed_config(requested: TrainConfig) -> TrainConfig:
    """The stored settings of the run to continue; a damaged or hand-edited config.json is one line."""
    run_dir = Path(requested.resume)
    config_path = run_dir / ckpt.CONFIG
    if not config_path.is_file():
        raise ResnetsError(f"cannot resume {run_dir}: no {ckpt.CONFIG} there; is it a run directory?")
    try:
        stored = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError(f"a JSON object was expected, found {type(stored).__name__}")
    except ValueError as error:  # not JSON, not UTF-8
        raise ResnetsError(f"cannot resume {run_dir}: {config_path} is damaged ({str(error).splitlines()[0]})") \
            from None
    stored.update({k: getattr(requested, k) for k in RESUME_OVERRIDES if hasattr(requested, k)})
    stored.update(resume=str(run_dir), out=str(run_dir))
    try:
        return TrainConfig.from_dict(stored)
    except (ResnetsError, TypeError) as error:
        raise ResnetsError(f"cannot resume {run_dir}: {config_path} holds a bad setting: "
                           f"{str(error).splitlines()[0]}") from None


def all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite (one sync)."""
    values = [t.detach() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in values]).all()) if values else True


@dataclass
class _Meters:
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

    def read(self, ctx: DistContext, interrupted: bool = False) -> tuple[float, float, bool]:
        """Mean loss and accuracy (multi-label: micro F1) in %, over all ranks, and whether any
        rank was interrupted."""
        counts = torch.tensor([float(self.seen), float(interrupted)], device=self.device)
        totals = torch.cat([self.loss.view(1), self.correct.float().view(1), self.judged.float().view(1), counts])
        loss, correct, judged, seen, interrupts = all_reduce_sum(totals, ctx).tolist()
        return loss / max(seen, 1), 100.0 * correct / max(judged, 1), interrupts > 0


@dataclass
class _Run:
    config: TrainConfig
    data: InMemoryData | StreamingData | None
    device: torch.device
    ctx: DistContext
    started: float  # time.time() when train() was called: --max-minutes counts from it
    history: list[dict[str, Any]] = field(default_factory=list)

    # -- setup --------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.run_dir = Path(cfg.out or "runs/train")
        self.model = self._build_model()
        self.preset, self.preprocessing = self._training_preprocessing(cfg.img_size)
        self._check_input_size(self.img_size)
        if self.data is None:
            if not cfg.data:
                raise ResnetsError("no training data: pass --data PATH")
            self.data = open_training_data(cfg.data, self.img_size, cfg.val_split, cfg.seed, cfg.workers,
                                           cfg.stream, cfg.progress, val_preprocessing=self.preprocessing)
        elif cfg.img_size is None:  # images handed in: their size is the input size
            self.preset, self.preprocessing = self._training_preprocessing(int(self.data.train_images.shape[-1]))
            self._check_input_size(self.img_size)
        self._fit_classes()
        self._whiten_first_conv()
        self.multi_label = self._set_up_multi_label()
        self.class_weight = self._class_weight()
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.frozen_parts = parse_freeze(cfg.freeze, self.model)
        freeze(self.model, self.frozen_parts)
        self.use_feature_cache = self._can_cache_features()
        self.resize = self._resize_schedule()
        self._build_loaders()
        self.trainee = nn.Sequential(self.model.dropout, self.model.get_classifier()) \
            if self.use_feature_cache else self.model
        self.forward = self.trainee if not cfg.compile else torch.compile(self.trainee)
        self.net = wrap_model(self.forward, self.ctx, self.device, cfg.sync_bn)
        self._build_optimizer()
        self.ema = build_ema(self.trainee, cfg.ema) if cfg.ema > 0 and not self.use_feature_cache else None
        self.batch_mix = build_batch_mix(cfg.mixup, cfg.cutmix, self.data.num_classes)
        self.start_epoch, self.best_top1 = 0, None
        self.interrupt = DeferredInterrupt(self.ctx)

    def _build_model(self) -> ResNet:
        """The model to train, with its record: ``--weights`` is a run directory, a weights file of
        any format, or a pretrained tag (``imagenet``, ``IMAGENET1K_V2``) of ``--model``."""
        cfg = self.config
        if cfg.weights:
            from ..weights.resolve import weights_path

            path = weights_path(cfg.weights)
            if path is None and not cfg.model:
                return load_model(cfg.weights).train()  # NAME:TAG, or one line naming what it is not
            return create_model(cfg.model, weights=str(path or cfg.weights), **cfg.model_options)
        if not cfg.model:
            raise ResnetsError("no model: pass --model NAME (see `resnets models`) or --weights FILE")
        return create_model(cfg.model, **cfg.model_options)

    def _training_preprocessing(self, img_size: int | None) -> tuple[str, Preprocessing]:
        """(augmentation preset, the run's record): the start model's pixel values (a converted
        Keras or Caffe model keeps BGR 0-255), the geometry of this run's evaluation."""
        from ..data.augment import training_preprocessing

        base = self.model.preprocessing
        preset = "cifar" if base.input_size <= 64 else "imagenet"
        preset = self.config.augment or ("none" if self.config.freeze == "backbone" else preset)
        return preset, training_preprocessing(base, preset, img_size or base.input_size)

    def _whiten_first_conv(self) -> None:
        """``--patch-whitening``: the first convolution's filters from the training images' patch
        covariance (:mod:`resnets.models.whitening`). A resumed run's checkpoint replaces them."""
        if not self.config.patch_whitening:
            return
        from ..models.whitening import fit_patch_whitening

        if isinstance(self.data, StreamingData):
            raise ResnetsError("--patch-whitening fits the first layer to images held in memory; drop --stream")
        first = self.model.conv1
        if not isinstance(first, nn.Conv2d):
            raise ResnetsError(f"--patch-whitening needs a single first convolution; {self.model.model_name}'s stem "
                               "has several")
        sample = self.data.train_images[:WHITENING_IMAGES]
        with torch.no_grad():
            fit_patch_whitening(first, self._augment(train=False)(sample))  # normalised as the model sees them

    def _check_input_size(self, size: int) -> None:
        """Inputs smaller than the network's total stride train on nothing (NaN weights): refused."""
        smallest = self.model.min_input_size
        if size < smallest:
            raise ResnetsError(f"--img-size {size} is smaller than {self.model.model_name}'s total stride; "
                               f"use at least {smallest}")

    @property
    def img_size(self) -> int:
        return self.preprocessing.input_size

    def _fit_classes(self) -> None:
        """A new head when the data's classes are not the model's (transfer learning)."""
        n = self.data.num_classes
        if self.config.num_classes is not None and self.config.num_classes != n:
            raise ResnetsError(f"--num-classes {self.config.num_classes} disagrees with the data, which has "
                               f"{n} classes; drop --num-classes or fix the data")
        if self.model.num_classes != n:
            self.model.reset_classifier(n)

    def _set_up_multi_label(self) -> bool:
        """Whether this run is multi-label (``--multi-label``, or multi-hot labels from a label file);
        if so the model is marked (its weights file will say so) and single labels become one-hot."""
        from ..multilabel import is_multi_label, mark_multi_label

        cfg, data = self.config, self.data
        multi_hot = isinstance(data, InMemoryData) and data.train_labels.ndim == 2
        if isinstance(data, StreamingData) and (cfg.multi_label or _has_multi_hot(data.train)):
            raise ResnetsError("multi-label training reads its images into memory; drop --stream "
                               "(or use fewer or smaller images)")
        if not (cfg.multi_label or multi_hot):
            if is_multi_label(self.model):
                self.model.task_record = {}  # fine-tuned on single labels: softmax from now on
            return False
        for name, value in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix), ("label-smoothing", cfg.label_smoothing)):
            if value:
                raise ResnetsError(f"--{name} is for single-label training; drop it with multi-label data")
        if not multi_hot:
            data.train_labels = F.one_hot(data.train_labels, data.num_classes)
            if data.val_labels is not None:
                data.val_labels = F.one_hot(data.val_labels, data.num_classes)
        mark_multi_label(self.model)
        return True

    def _can_cache_features(self) -> bool:
        cfg = self.config
        whole_backbone = self.frozen_parts and set(self.frozen_parts) == set(parse_freeze("backbone", self.model))
        return bool(cfg.feature_cache and whole_backbone and cfg.unfreeze_after is None
                    and self.preset == "none" and not cfg.mixup and not cfg.cutmix
                    and not cfg.ema and not self._policy() and self._epoch_plan() is None)

    def _resize_schedule(self) -> ResizeSchedule:
        cfg = self.config
        schedule = ResizeSchedule(self.img_size, cfg.progressive_resize, cfg.progressive_delay,
                                  cfg.progressive_finetune)
        if schedule.enabled:
            smallest = min(schedule.size_at(epoch, cfg.epochs) for epoch in range(cfg.epochs))
            if smallest < self.model.min_input_size:
                raise ResnetsError(f"--progressive-resize {cfg.progressive_resize:g} starts at {smallest}px, below "
                                   f"{self.model.model_name}'s smallest input ({self.model.min_input_size}px)")
        if schedule.enabled and self.use_feature_cache:
            raise ResnetsError("--progressive-resize needs images, but this head-only run trains on cached "
                               "features; drop it or pass --no-feature-cache")
        return schedule

    def _augment(self, train: bool):
        from ..data import BatchAugment

        if not train:
            return BatchAugment("none", self.preprocessing, train=False)
        cfg = self.config
        padding = {} if cfg.translate is None else {"padding": cfg.translate}
        return BatchAugment(self.preset, self.preprocessing, train=True, flip=cfg.flip, pad_mode=cfg.pad_mode,
                            **padding)

    def _policy(self):
        """The per-image augmentation policy (``--augment-policy``, ``--random-erasing``,
        ``--color-jitter``); falsy when none is asked for."""
        from ..data.policy import AugmentPolicy

        cfg = self.config
        return AugmentPolicy(cfg.augment_policy, cfg.random_erasing, cfg.color_jitter)

    def _train_labels(self) -> list[int] | torch.Tensor:
        data = self.data
        return data.train.targets if isinstance(data, StreamingData) else data.train_labels

    def _epoch_plan(self):
        """The training epochs' draws (``--sampler balanced``, ``--aug-repeats``), or None for a plain shuffle."""
        from ..data.sampling import EpochPlan

        cfg = self.config
        if cfg.sampler == "shuffle" and cfg.aug_repeats == 1:
            return None
        if cfg.sampler == "balanced" and self.multi_label:
            raise ResnetsError("--sampler balanced draws single-label classes; it is not for multi-label data")
        return EpochPlan.of(self._train_labels(), cfg.seed, cfg.sampler, cfg.aug_repeats)

    def _class_weight(self) -> torch.Tensor | None:
        """The cross-entropy's class weights (``--class-weights``), on the device; None: unweighted."""
        from .class_weights import class_weights

        cfg = self.config
        if cfg.class_weights is not None and self.multi_label:
            raise ResnetsError("--class-weights weighs a single-label cross-entropy; it is not for multi-label data")
        weights = class_weights(cfg.class_weights, self._train_labels(), self.data.class_names, cfg.effective_beta)
        return None if weights is None else weights.to(self.device)

    def _image_loader(self, images: torch.Tensor, labels: torch.Tensor, train: bool, sharded: bool):
        from ..data import TensorLoader

        batch = self.config.batch_size // self.ctx.world_size if sharded else self.config.batch_size
        return TensorLoader(images, labels, batch, shuffle=train,
                            drop_last=train and len(labels) > batch, augment=self._augment(train),
                            seed=self.config.seed, device=self.device,
                            rank=self.ctx.rank if sharded else 0, world_size=self.ctx.world_size if sharded else 1,
                            plan=self._epoch_plan() if train else None, policy=self._policy() if train else None)

    def _stream_loader(self, dataset: Any, train: bool, sharded: bool) -> StreamLoader:
        cfg, ctx = self.config, self.ctx
        in_memory_only = [flag for flag, used in (("--flip", cfg.flip != "random"), ("--translate", cfg.translate is not None),
                                                  ("--pad-mode", cfg.pad_mode != "constant")) if used]
        if train and in_memory_only:  # the streaming path's torchvision transforms would silently ignore them
            raise ResnetsError(f"{', '.join(in_memory_only)} act on images held in memory; drop --stream")
        return StreamLoader(dataset, self.preset, self.preprocessing, train,
                            cfg.batch_size // ctx.world_size if sharded else cfg.batch_size, cfg.workers,
                            cfg.seed, self.device, ctx.rank if sharded else 0, ctx.world_size if sharded else 1,
                            plan=self._epoch_plan() if train else None, policy=self._policy() if train else None)

    def _train_loader(self, shuffled: bool):
        """The training images: shuffled, augmented and sharded, or (for feature caching) in
        order, plain and whole."""
        data = self.data
        if isinstance(data, StreamingData):
            return self._stream_loader(data.train, shuffled, shuffled)
        return self._image_loader(data.train_images, data.train_labels, shuffled, shuffled)

    def _build_loaders(self) -> None:
        cfg, data = self.config, self.data
        if cfg.batch_size % self.ctx.world_size:
            raise ResnetsError(f"--batch-size {cfg.batch_size} (global) must divide evenly over "
                               f"{self.ctx.world_size} processes")
        self.train_loader = self._train_loader(shuffled=True)
        if isinstance(data, StreamingData):
            self.val_loader = self._stream_loader(data.val, False, False) if data.val is not None else None
        else:
            self.val_loader = None
            if data.val_images is not None:
                self.val_loader = self._image_loader(data.val_images, data.val_labels, False, False)
        if self.use_feature_cache:
            from ..evaluate import extract_features

            feats, labels = extract_features(self.model, self._train_loader(shuffled=False))
            self.train_loader = FeatureLoader(feats, labels, cfg.batch_size, True, cfg.seed, self.ctx.rank,
                                              self.ctx.world_size)
            if self.val_loader is not None:
                self.val_loader = FeatureLoader(*extract_features(self.model, self.val_loader), cfg.batch_size,
                                                False)

    def _build_optimizer(self) -> None:
        cfg = self.config
        lr = cfg.lr or default_lr(cfg.opt, cfg.batch_size)
        wd = DEFAULT_WEIGHT_DECAY[cfg.opt] if cfg.weight_decay is None else cfg.weight_decay
        groups = param_groups(self.trainee, lr, wd, cfg.head_lr, self.model.get_classifier(),
                              norm_bias_lr_scale=cfg.norm_bias_lr_scale)
        self.optimizer = build_optimizer(cfg.opt, groups, cfg.momentum, self.device)
        self.steps_per_epoch = -(-len(self.train_loader) // cfg.accum_steps)
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, self.steps_per_epoch * cfg.epochs,
                                         round(cfg.warmup_epochs * self.steps_per_epoch))

    # -- state --------------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": ckpt.rng_state(), "history": self.history, "best_top1": self.best_top1}

    def _restore(self) -> None:
        """Continue from ``state.pt``; one line if it does not belong to this run's config."""
        state = ckpt.load_state(self.config.resume)
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            raise ResnetsError(f"cannot resume {self.config.resume}: its {ckpt.STATE} does not match its "
                               f"{ckpt.CONFIG} ({type(error).__name__}: {str(error).strip().splitlines()[0][:200]})") \
                from None

    def _load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a dict was expected, found {type(state).__name__}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        self.history, self.best_top1 = list(state["history"]), state["best_top1"]
        self.start_epoch = int(state["epoch"]) + 1
        if not 1 <= self.start_epoch <= self.config.epochs:
            raise ValueError(f"epoch {state['epoch']} is outside the run's {self.config.epochs} epochs")

    def _export_model(self) -> nn.Module:
        """The model whose weights are published: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def _save(self, epoch: int, improved: bool) -> None:
        if not self.ctx.is_main:
            return
        if not all_finite(self.model) or (self.ema is not None and not all_finite(self.ema.module)):
            raise self._diverged(epoch, "the weights are no longer finite")
        if improved:
            save_weights(self.run_dir / ckpt.WEIGHTS, self._export_model(), class_names=self.data.class_names,
                         preprocessing=self.preprocessing, source=f"resnets train ({self.run_dir})",
                         extra={"epoch": epoch, "val_top1": self.history[-1].get("val_top1")})
        ckpt.save_state(self.run_dir, self._state(epoch))
        ckpt.drop_overwritten(self.run_dir)  # the new run has a checkpoint: the replaced one can go
        ckpt.write_metrics(self.run_dir, self.history)
        ckpt.plot_curves(self.run_dir, self.history)

    # -- loop ---------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> RunResult:
        cfg = self.config
        if self.config.resume:
            self._restore()
        elif self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_config(self.run_dir, {**cfg.to_dict(), "model_name": self.model.model_name})
        last = cfg.epochs if stop_after is None else min(cfg.epochs, self.start_epoch + stop_after)
        self.epoch, self.epochs_began = self.start_epoch, time.time()
        self.saved_epoch = self.start_epoch - 1 if cfg.resume else None  # the epoch state.pt holds
        try:
            with self.interrupt:
                self._epochs(last)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(self._on_interrupt()) from None
        return RunResult(self.run_dir, self.run_dir / ckpt.WEIGHTS, self.history, self.best_top1,
                         self.data.class_names, self.use_feature_cache)

    def _epochs(self, last: int) -> None:
        """Train epochs ``start_epoch .. last-1``: validate, checkpoint, log; stop early at the time limit."""
        cfg = self.config
        for epoch in range(self.start_epoch, last):
            self.epoch = epoch
            began = time.perf_counter()
            self._set_frozen(epoch)
            row = self._train_epoch(epoch)
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                row.update(self._validate())
            row["epoch_s"] = time.perf_counter() - began
            row["finished_at"] = time.time()
            top1 = row.get("val_map" if self.multi_label else "val_top1")
            improved = self._improved(top1)
            if improved and top1 is not None:
                self.best_top1 = top1
            self.history.append(row)
            with self.interrupt.held():  # a Ctrl-C waits until the checkpoint is whole
                self._save(epoch, improved)
                self.saved_epoch = epoch
            self._log(row)
            barrier(self.ctx)
            if epoch + 1 < last and self._out_of_time(epoch + 1 - self.start_epoch):
                break

    def _out_of_time(self, epochs_done: int) -> bool:
        """Whether another epoch (at this session's mean epoch time) would pass ``max_minutes``.
        Rank 0 decides for all ranks, so that no rank waits for a collective the others left."""
        if self.config.max_minutes is None:
            return False
        now = time.time()
        next_epoch_ends = now + (now - self.epochs_began) / epochs_done
        stop = torch.tensor(float(self.ctx.is_main and next_epoch_ends > self.started + 60 * self.config.max_minutes))
        if all_reduce_sum(stop, self.ctx).item() == 0:
            return False
        if self.config.progress and self.ctx.is_main:
            tqdm.write(f"time limit: stopping after epoch {self.history[-1]['epoch']} of {self.config.epochs} "
                       f"(--max-minutes {self.config.max_minutes:g}); --resume {self.run_dir} continues",
                       file=sys.stderr)
        return True

    def _improved(self, top1: float | None) -> bool:
        """Whether this epoch's weights are the ones to publish: the best validated so far, or
        (with no validation data) the latest."""
        if self.val_loader is None:
            return True
        return top1 is not None and (self.best_top1 is None or top1 > self.best_top1)

    def _on_interrupt(self) -> str:
        """Save the weights so far (rank 0); returns what to tell the user: which epoch was
        interrupted, where the weights went, and from which epoch's checkpoint a resume continues."""
        if not self.ctx.is_main:
            return ""
        epoch = self.epoch
        path = self.run_dir / "interrupted.safetensors"
        save_weights(path, self._export_model(), class_names=self.data.class_names,
                     preprocessing=self.preprocessing, source=f"resnets train ({self.run_dir}), interrupted",
                     extra={"epoch": epoch})
        when = "after" if self.saved_epoch == epoch else "in"  # after: stopped between epochs
        resume = "no epoch had finished, so there is no checkpoint to resume from" if self.saved_epoch is None \
            else f"`resnets train --resume {self.run_dir}` continues from the checkpoint of epoch {self.saved_epoch + 1}"
        return f"interrupted {when} epoch {epoch + 1} of {self.config.epochs}; weights so far in {path}; {resume}"

    def _diverged(self, epoch: int, what: str) -> ResnetsError:
        """The one-line error that ends a diverged run (exit status 2: the settings need changing)."""
        lr = self.optimizer.param_groups[0].get("initial_lr", self.optimizer.param_groups[0]["lr"])
        kept = f"; {self.run_dir} keeps the checkpoint of epoch {self.saved_epoch + 1}" \
            if self.saved_epoch is not None else ""
        return ResnetsError(f"training diverged in epoch {epoch + 1}: {what}; no weights of it were saved{kept}; "
                            f"lower the learning rate (peak {lr:g}) or add --warmup-epochs")

    def _set_frozen(self, epoch: int) -> None:
        """Unfreeze everything once ``unfreeze_after`` epochs are done (fresh DDP wrapper)."""
        after = self.config.unfreeze_after
        if self.frozen_parts and after is not None and epoch >= after:
            set_requires_grad(self.model, self.frozen_parts, True)
            self.frozen_parts = []
            self.net = wrap_model(self.forward, self.ctx, self.device, self.config.sync_bn)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.net.train()
        keep_frozen_in_eval(self.model, self.frozen_parts)
        self.train_loader.set_epoch(epoch)
        self.train_size = self.resize.size_at(epoch, cfg.epochs)
        meters = _Meters(self.device, self.multi_label)
        n = len(self.train_loader)
        bar = tqdm(self.train_loader, total=n, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and self.ctx.is_main), file=sys.stderr, leave=False)
        start = time.perf_counter()
        for i, (x, y) in enumerate(bar):
            step_now = (i + 1) % cfg.accum_steps == 0 or i + 1 == n
            self._train_step(x, y, meters, step_now)
            if (i + 1) % cfg.log_interval == 0 or i + 1 == n:
                loss, acc, interrupted = meters.read(self.ctx, self.interrupt.requested)
                if interrupted:  # every rank learns it here, at the same step
                    raise KeyboardInterrupt
                if not math.isfinite(loss):  # the same all-reduced value on every rank: all stop here
                    raise self._diverged(epoch, f"the loss is {loss} at step {i + 1}")
                rate = meters.seen * self.ctx.world_size / (time.perf_counter() - start)
                bar.set_postfix({"loss": f"{loss:.3f}", "f1" if self.multi_label else "acc": f"{acc:.1f}",
                                 "img_s": f"{rate:.0f}"})
        bar.close()
        loss, acc, _ = meters.read(self.ctx)
        if not math.isfinite(loss):
            raise self._diverged(epoch, f"the loss is {loss}")
        seconds = time.perf_counter() - start
        return {"epoch": epoch + 1, "train_loss": loss, "train_f1" if self.multi_label else "train_acc": acc,
                "img_size": self.train_size,
                "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": meters.seen * self.ctx.world_size / max(seconds, 1e-9), "train_s": seconds}

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, meters: _Meters, step_now: bool) -> None:
        cfg = self.config
        if self.resize.enabled:
            x = resize_batch(x, self.train_size)
        if cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if self.batch_mix is not None:
            x, target = self.batch_mix(x, y)
        sync = contextlib.nullcontext() if step_now or not self.ctx.enabled else self.net.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = self.net(x)
                loss = self._multi_label_loss(logits, target) if self.multi_label else \
                    F.cross_entropy(logits.float(), target, weight=self.class_weight,
                                       label_smoothing=cfg.label_smoothing)
            (loss / cfg.accum_steps).backward()
        if step_now:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.trainee)
        meters.add(loss, logits, y)

    def _multi_label_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())

    def _validate(self) -> dict[str, Any]:
        if self.val_loader is None or not self.ctx.is_main:
            return {}
        from ..evaluate import collect_logits, topk_accuracy

        model = self.ema.module if self.ema is not None else self.trainee
        logits, labels = collect_logits(model, self.val_loader, amp=self.config.amp,
                                        channels_last=self.config.channels_last)
        if self.multi_label:
            return _multi_label_scores(logits, labels)
        top1, top5 = topk_accuracy(logits, labels, (1, 5))
        return {"val_loss": F.cross_entropy(logits, labels).item(), "val_top1": top1, "val_top5": top5}

    def _log(self, row: dict[str, Any]) -> None:
        if not (self.config.progress and self.ctx.is_main):
            return
        val = f", val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% top5 {row['val_top5']:.2f}%" \
            if "val_top1" in row else ""
        if "val_map" in row:
            val = f", val loss {row['val_loss']:.4f} mAP {row['val_map']:.2f}% F1@0.5 {row['val_f1']:.2f}%"
        train_score = f"F1@0.5 {row['train_f1']:.2f}%" if "train_f1" in row else f"acc {row['train_acc']:.2f}%"
        size = f" at {row['img_size']}px" if self.resize.enabled else ""
        tqdm.write(f"epoch {row['epoch']}/{self.config.epochs}{size}: train loss {row['train_loss']:.4f} "
                   f"{train_score}{val}, lr {row['lr']:.4g}, {row['images_per_s']:.0f} img/s, "
                   f"{row['train_s']:.1f} s", file=sys.stderr)


def _has_multi_hot(dataset: Any) -> bool:
    """Whether a data set (or the set it is a split of) has multi-hot targets (a label file)."""
    return bool(getattr(dataset, "multi_label", False) or getattr(getattr(dataset, "parent", None), "multi_label", False))


def _multi_label_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """A multi-label epoch's validation row: BCE loss, mAP and micro F1 at 0.5 (both in %)."""
    from ..multilabel import counts_at, f1_scores, mean_average_precision

    probs = logits.float().sigmoid()
    micro, _ = f1_scores(*counts_at(probs, labels, 0.5))
    return {"val_loss": F.binary_cross_entropy_with_logits(logits.float(), labels.float()).item(),
            "val_map": 100 * mean_average_precision(probs, labels), "val_f1": 100 * micro}
