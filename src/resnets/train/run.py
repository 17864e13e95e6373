"""A training run: :func:`train` runs a :class:`TrainConfig` and returns a :class:`RunResult`.

It owns the run directory, reads a resumed run's settings, starts the processes of ``--procs``,
and then in each process builds the set-up (:mod:`.setup`) and trains it (:mod:`.engine`,
:mod:`.callbacks`). Every random draw derives from ``seed`` and the epoch, and the RNG state is
checkpointed at epoch ends, so ``--resume`` reaches bitwise the weights of an unbroken run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from ..errors import ResnetsError, first_line
from ..textparse import MAX_TEXT_BYTES, load_json, read_limited
from . import checkpoint as ckpt
from .callbacks import standard_callbacks
from .config import RunResult, TrainConfig
from .distributed import DistContext, in_launched_group, init_from_env, launch, local_device, shutdown
from .engine import Trainer
from .inputs import InMemoryData
from .plan import Plan, make_plan
from .setup import TrainingSetup, prepare_model_and_data, prepare_optimization

# Settings a resumed run may change; everything else comes from the run's config.json.
RESUME_OVERRIDES = ("device", "progress", "workers", "log_interval", "val_every", "max_minutes", "stop_after",
                    "overwrite")


def train(config: TrainConfig, data: InMemoryData | None = None, stop_after: int | None = None,
          overwrite: bool = False, started: float | None = None) -> RunResult:
    """Train (or fine-tune, or resume) a model as ``config`` says; with ``config.procs > 1`` in
    that many new processes (DDP), returning rank 0's result.

    ``data``: decoded images to train on instead of reading ``config.data`` (given again to
    resume such a run). ``stop_after`` and ``overwrite`` override the config's. ``started``: when
    the command started (``time.time()``, default now), from which the minutes count. The run
    directory is locked for the whole call.
    """
    started = time.time() if started is None else started
    if stop_after is not None:  # checked by TrainConfig, as the flag is
        config = dataclasses.replace(config, stop_after=stop_after)
    if overwrite:
        config = dataclasses.replace(config, overwrite=True)
    run_dir = Path(config.resume or config.out or "runs/train")
    with _own_run_dir(run_dir, bool(config.resume), config.overwrite):
        if config.resume:
            config = _resumed_config(config)
        if config.procs > 1 and not in_launched_group():
            return launch(_train_in_group, config.procs, (config, data, started))
        return _train_in_group(config, data, started)


def _own_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> contextlib.AbstractContextManager:
    """The run directory's lock, taken by the process that writes it (rank 0 under torchrun)."""
    if in_launched_group() and os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext(run_dir)
    return ckpt.own_run_dir(run_dir, resume, overwrite)


def _train_in_group(config: TrainConfig, data: InMemoryData | None, started: float) -> RunResult:
    """One process's part of a run (the whole run when there is one process)."""
    device = local_device(config.device)
    ctx = init_from_env(device)
    try:
        setup, plan = planned_setup(config, data, device, ctx, started)
        run_dir = Path(config.out or "runs/train")
        callbacks = standard_callbacks(setup.config, run_dir, started, ema=setup.ema is not None,
                                       planned_minutes=plan.planned_minutes if plan else None)
        trainer = Trainer(setup, callbacks)
        trainer.fit()
        return RunResult(run_dir, run_dir / ckpt.WEIGHTS, trainer.history, trainer.best_score,
                         setup.data.class_names, setup.use_feature_cache)
    finally:
        shutdown(ctx)


def planned_setup(config: TrainConfig, data: InMemoryData | None, device: torch.device, ctx: DistContext,
                  started: float) -> tuple[TrainingSetup, Plan | None]:
    """The run's set-up; with ``--minutes`` (and not resuming: a run keeps its plan), the epochs are
    planned from the measured step rate before the schedule is built for them."""
    setup = prepare_model_and_data(config, data, device, ctx)
    plan = None
    if config.minutes is not None and not config.resume:
        plan = make_plan(setup, config.minutes, started)
        setup.config = dataclasses.replace(setup.config, epochs=plan.epochs)
        if config.progress and ctx.is_main:
            print(f"plan: {plan.describe()}", file=sys.stderr)
    prepare_optimization(setup)
    return setup, plan


def preview_plan(config: TrainConfig, started: float) -> Plan:
    """The plan ``--minutes`` would make (``--print-config``): data read and steps timed, nothing written."""
    device = local_device(config.device)
    setup = prepare_model_and_data(config, None, device, DistContext())
    return make_plan(setup, config.minutes, started)


def _resumed_config(requested: TrainConfig) -> TrainConfig:
    """The stored settings of the run to continue; a damaged or hand-edited config.json is one line."""
    run_dir = Path(requested.resume)
    config_path = run_dir / ckpt.CONFIG
    if not config_path.is_file():
        raise ResnetsError(f"cannot resume {run_dir}: no {ckpt.CONFIG} there; is it a run directory?")
    try:
        stored = load_json(read_limited(config_path, MAX_TEXT_BYTES), config_path.name)
        if not isinstance(stored, dict):
            raise ValueError(f"a JSON object was expected, found {type(stored).__name__}")
    except ValueError as error:  # not a regular file, too large or deep, not JSON, not UTF-8
        raise ResnetsError(f"cannot resume {run_dir}: {config_path} is damaged ({first_line(error)})") from None
    stored.update({k: getattr(requested, k) for k in RESUME_OVERRIDES})
    if requested.minutes is not None:  # a fresh budget for the rest of a planned run (its plan is kept)
        stored["minutes"] = requested.minutes
    stored.update(resume=str(run_dir), out=str(run_dir))
    try:
        return TrainConfig.from_dict(stored)
    except (ResnetsError, TypeError) as error:
        raise ResnetsError(f"cannot resume {run_dir}: {config_path} holds a bad setting: "
                           f"{first_line(error)}") from None
