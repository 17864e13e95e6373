"""What a training run is asked to do (:class:`TrainConfig`) and what it produced (:class:`RunResult`)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data.augment import FLIPS, PAD_MODES
from ..data.policy import POLICIES
from ..data.sampling import SAMPLERS
from ..errors import ResnetsError
from .class_weights import check_class_weights

OPTIMIZERS = ("sgd", "adamw", "muon")
SCHEDULES = ("cosine", "onecycle", "step")
AUGMENT_PRESETS = ("cifar", "imagenet", "none")


@dataclass(frozen=True)
class Bound:
    """The allowed values of one numeric setting: its type and range, finite always.

    The one check of every number a run takes, used both by :class:`TrainConfig` (the Python
    API, a resumed ``config.json``) and by the ``resnets train`` parser (:func:`parse_arg`), so
    ``--lr inf`` or ``momentum=float("nan")`` are refused before anything is built.
    """

    kind: type                  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False      # low itself excluded
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed ("must be ..."), or None if it is."""
        wanted = "an integer" if self.kind is int else "a finite number"
        ok_type = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or \
                (isinstance(value, float) and not math.isfinite(value)):
            return f"must be {wanted}{self._range()}, got {value!r}"
        if (self.low is not None and (value < self.low or (self.low_open and value == self.low))) or \
                (self.high is not None and (value > self.high or (self.high_open and value == self.high))):
            return f"must be {wanted}{self._range()}, got {value!r}"
        return None

    def _range(self) -> str:
        low, high = (f"{v}" if self.kind is int or v is None else f"{v:g}" for v in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {low}"
        return "" if self.high is None else f" {'<' if self.high_open else '<='} {high}"


_FRACTION_OPEN = Bound(float, 0, 1, low_open=True, high_open=True)
_UNIT = Bound(float, 0, 1)
_DECAY = Bound(float, 0, 1, high_open=True)

# Every numeric setting of a run (None is allowed where the field is optional). stop_after is
# an argument of train(), checked by it with the same rule.
NUMBER_RULES: dict[str, Bound] = {
    "epochs": Bound(int, 1), "batch_size": Bound(int, 1), "accum_steps": Bound(int, 1),
    "lr": Bound(float, 0, low_open=True), "head_lr": Bound(float, 0, low_open=True),
    "weight_decay": Bound(float, 0), "momentum": _DECAY, "warmup_epochs": Bound(float, 0),
    "label_smoothing": _DECAY, "mixup": Bound(float, 0), "cutmix": Bound(float, 0), "ema": _DECAY,
    "img_size": Bound(int, 1, 4096), "progressive_resize": Bound(float, 0, 1, low_open=True),
    "progressive_delay": _UNIT, "progressive_finetune": _UNIT, "val_split": _FRACTION_OPEN,
    "num_classes": Bound(int, 1), "unfreeze_after": Bound(int, 0), "procs": Bound(int, 1, 1024),
    "max_minutes": Bound(float, 0, low_open=True), "val_every": Bound(int, 1), "stop_after": Bound(int, 1),
    "in_chans": Bound(int, 1, 64), "effective_beta": _FRACTION_OPEN, "random_erasing": _UNIT,
    "color_jitter": Bound(float, 0, 10), "aug_repeats": Bound(int, 1, 64),
    "norm_bias_lr_scale": Bound(float, 0, 1e4, low_open=True), "translate": Bound(int, 0, 64), "seed": Bound(int, 0, 2 ** 63 - 1), "workers": Bound(int, 0, 1024), "log_interval": Bound(int, 1),
}


_TEXT_FIELDS = ("model", "data", "out", "augment", "weights", "resume", "freeze", "device", "opt", "sched",
                "class_weights", "sampler", "augment_policy", "flip", "pad_mode")
_FLAG_FIELDS = ("amp", "channels_last", "compile", "feature_cache", "sync_bn", "progress", "stream",
                "patch_whitening")


def _check_types(config: "TrainConfig") -> None:
    """Text and on/off settings of the right type (a hand-edited config.json can hold anything)."""
    for name in _TEXT_FIELDS:
        if getattr(config, name) is not None and not isinstance(getattr(config, name), str):
            raise ResnetsError(f"{name} must be text, got {getattr(config, name)!r}")
    for name in _FLAG_FIELDS:
        if not isinstance(getattr(config, name), bool) and not (name == "stream" and config.stream is None):
            raise ResnetsError(f"{name} must be true or false, got {getattr(config, name)!r}")
    if not isinstance(config.model_options, dict):
        raise ResnetsError(f"model_options must be a mapping, got {config.model_options!r}")


def check_number(name: str, value: Any) -> None:
    """Raise a one-line :class:`ResnetsError` if ``value`` breaks the rule of setting ``name``."""
    problem = NUMBER_RULES[name].problem(value)
    if problem is not None:
        raise ResnetsError(f"--{name.replace('_', '-')} {problem}")


def parse_arg(name: str, rule: Bound | None = None) -> Callable[[str], int | float]:
    """An argparse ``type=`` for setting ``name``: parses the text and applies its rule
    (``NUMBER_RULES[name]``, or ``rule`` for a number that is not a training setting)."""
    rule = rule or NUMBER_RULES[name]

    def parse(text: str) -> int | float:
        try:
            value = rule.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if rule.kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        problem = rule.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


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
    multi_label: bool = False      # sigmoid/BCE head, several labels per image (implied by a label file)
    augment: str | None = None     # cifar | imagenet | none (default: the model's preset)
    augment_policy: str | None = None  # trivialaugment | randaugment | autoaugment | augmix (per image)
    random_erasing: float = 0.0    # probability of RandomErasing per image
    color_jitter: float = 0.0      # ColorJitter strength (brightness, contrast, saturation)
    aug_repeats: int = 1           # repeated augmentation: each image N times per epoch
    flip: str = "random"           # random | alternate (each image flipped every other epoch) | none
    translate: int | None = None   # pixels of padding before the random crop (default: the preset's, 4)
    pad_mode: str = "constant"     # constant (zeros) | reflect: how that padding is filled
    patch_whitening: bool = False  # first conv initialised to whiten the training images' patches
    norm_bias_lr_scale: float = 1.0  # BatchNorm biases train at lr x this (Page: 64)
    class_weights: str | None = None  # auto | effective | a JSON file {class: weight}
    effective_beta: float = 0.999  # beta of --class-weights effective
    sampler: str = "shuffle"       # shuffle | balanced (every class drawn equally often)
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
    in_chans: int | None = None    # input channels (default: the weights', else 3); RGB weights are
                                   # adapted (1: a gray model, fed RGB images' luma)
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self)
        for name in NUMBER_RULES:
            value = getattr(self, name, None)
            if value is not None:
                check_number(name, value)
        checks = [
            (self.opt in OPTIMIZERS, f"--opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}"),
            (self.sched in SCHEDULES, f"--sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}"),
            (self.augment in (None, *AUGMENT_PRESETS),
             f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}"),
            (self.unfreeze_after is None or self.freeze, "--unfreeze-after needs --freeze"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"),
            (self.augment_policy in (None, *POLICIES),
             f"--augment-policy must be one of {', '.join(POLICIES)}, got {self.augment_policy!r}"),
            (self.flip in FLIPS, f"--flip must be one of {', '.join(FLIPS)}, got {self.flip!r}"),
            (self.pad_mode in PAD_MODES, f"--pad-mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}"),
            (self.batch_size % self.procs == 0,
             f"--batch-size {self.batch_size} (global) must divide evenly over --procs {self.procs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ResnetsError(message)
        self._set_in_chans()
        check_class_weights(self.class_weights)
        from .resize import ResizeSchedule

        # checks the progressive-resizing settings now, before any data is read
        ResizeSchedule(1, self.progressive_resize, self.progressive_delay, self.progressive_finetune)

    def _set_in_chans(self) -> None:
        """``in_chans`` reaches the model through ``model_options`` (create_model's argument)."""
        if self.in_chans is None:
            return
        chosen = self.model_options.get("in_chans", self.in_chans)
        if chosen != self.in_chans:
            raise ResnetsError(f"--in-chans {self.in_chans} disagrees with model_options in_chans={chosen!r}")
        if self.in_chans not in (1, 3):
            raise ResnetsError(f"--in-chans {self.in_chans}: the data readers decode RGB images, so a run "
                               "trains on 3 channels or on 1 (their luma); other counts are for create_model")
        if self.weights and not self.model and not Path(self.weights).exists():
            raise ResnetsError("--in-chans with a pretrained tag needs --model NAME --weights TAG")
        self.model_options = {**self.model_options, "in_chans": self.in_chans}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ResnetsError(f"a run's settings must be a mapping, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        options = values.get("model_options") or {}
        if not isinstance(options, dict):
            raise ResnetsError(f"model_options must be a mapping, got {options!r}")
        # JSON turns tuples (layers=(1, 1, 1)) into lists; the model config wants tuples back.
        values["model_options"] = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
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
