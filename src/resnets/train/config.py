"""What a training run is asked to do (:class:`TrainConfig`) and what it produced (:class:`RunResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnetsError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle")
AUGMENT_PRESETS = ("cifar", "imagenet", "none")


@dataclass
class TrainConfig:
    """Every knob of a run. ``None`` means "the sensible default for this model/optimizer/data"."""

    model: str | None = None    # default: the model a --weights file names
    data: str | None = None
    out: str | None = None
    epochs: int = 10
    batch_size: int = 128          # global batch: split across DDP processes
    lr: float | None = None        # sgd 0.1 * batch/256 ... see optim.default_lr
    head_lr: float | None = None   # classifier lr (default: lr)
    weight_decay: float | None = None
    momentum: float = 0.9
    opt: str = "sgd"
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0             # Beta(alpha, alpha) of MixUp; 0 disables
    cutmix: float = 0.0            # Beta(alpha, alpha) of CutMix; 0 disables
    ema: float = 0.0               # decay of the weight EMA; 0 disables
    accum_steps: int = 1
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    img_size: int | None = None
    progressive_resize: float = 1.0    # initial scale of progressive resizing (1.0: off)
    progressive_delay: float = 0.5     # fraction of the epochs at the initial scale
    progressive_finetune: float = 0.2  # fraction of the epochs at full size, at the end
    val_split: float | None = None
    stream: bool | None = None     # read from disk each epoch; default: when it does not fit in memory
    num_classes: int | None = None
    augment: str | None = None     # cifar | imagenet | none (default: the model's preset)
    weights: str | None = None
    resume: str | None = None
    freeze: str | None = None      # "backbone" or "stem,layer1,..."
    unfreeze_after: int | None = None
    feature_cache: bool = True     # head-only training on cached features when possible
    sync_bn: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    log_interval: int = 20
    val_every: int = 1             # validate every N epochs (and always after the last)
    max_minutes: float | None = None  # stop (resumable) before an epoch that would end later than this
    procs: int = 1                 # data-parallel processes this run starts on this machine (DDP)
    progress: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"--accum-steps must be >= 1, got {self.accum_steps}"),
            (self.opt in OPTIMIZERS, f"--opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}"),
            (self.sched in SCHEDULES, f"--sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}"),
            (self.augment in (None, *AUGMENT_PRESETS),
             f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (0 <= self.ema < 1, "--ema decay must be in [0, 1)"),
            (self.val_split is None or 0 < self.val_split < 1, "--val-split must be in (0, 1)"),
            (self.lr is None or self.lr > 0, "--lr must be > 0"),
            (self.unfreeze_after is None or self.freeze, "--unfreeze-after needs --freeze"),
            (self.val_every >= 1, f"--val-every must be >= 1, got {self.val_every}"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be > 0"),
            (self.procs >= 1, f"--procs must be >= 1, got {self.procs}"),
            (self.procs < 1 or self.batch_size % self.procs == 0,
             f"--batch-size {self.batch_size} (global) must divide evenly over --procs {self.procs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ResnetsError(message)
        from .resize import ResizeSchedule

        # checks the progressive-resizing settings now, before any data is read
        ResizeSchedule(1, self.progressive_resize, self.progressive_delay, self.progressive_finetune)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        # JSON turns tuples (layers=(1, 1, 1)) into lists; the model config wants tuples back.
        values["model_options"] = {k: tuple(v) if isinstance(v, list) else v
                                   for k, v in (values.get("model_options") or {}).items()}
        return cls(**values)


@dataclass
class RunResult:
    """The outcome of :func:`resnets.train.train`."""

    run_dir: Path
    weights: Path              # weights.safetensors: the best model (by val top-1; last without val)
    history: list[dict[str, Any]]
    best_top1: float | None
    class_names: list[str]
    used_feature_cache: bool = False

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}
