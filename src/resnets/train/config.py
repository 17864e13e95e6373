"""What a training run is asked to do (:class:`TrainConfig`: every setting declared once, see
:mod:`resnets.settings`) and what it produced (:class:`RunResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.augment import FLIPS, PAD_MODES, PRESETS
from ..data.policy import POLICIES
from ..data.sampling import SAMPLERS
from ..errors import ResnetsError
from ..settings import DECAY, FRACTION_OPEN, UNIT, Bound, check_settings, number_rules, setting
from .class_weights import check_class_weights
from .resize import ResizeSchedule

OPTIMIZERS = ("sgd", "adamw", "muon")
SCHEDULES = ("cosine", "onecycle", "step", "linear")
LR_FIND = ("lr-find",)  # settings that `resnets lr-find` takes too
POSITIVE = Bound(float, 0, low_open=True)

@dataclass
class TrainConfig:
    """Every knob of a run. ``None`` means "the sensible default for this model/optimizer/data"."""

    model: str | None = setting(None, "registered model name (default: the one --weights names)", commands=LR_FIND)
    data: str | None = setting(None, "image folder, zip, CIFAR pickle folder, LMDB, or a multi-label .csv/.jsonl "
                               "label file", commands=LR_FIND)
    out: str | None = setting(None, "run directory (default: runs/train)")
    epochs: int = setting(10, rule=Bound(int, 1))
    batch_size: int = setting(128, "global batch size (split over processes)", rule=Bound(int, 1), commands=LR_FIND)
    lr: float | None = setting(None, "peak learning rate (default: SGD 0.1 x batch/256, AdamW 1e-3 x batch/1024)",
                               rule=POSITIVE)
    head_lr: float | None = setting(None, "learning rate of the classifier (default: --lr)", rule=POSITIVE)
    weight_decay: float | None = setting(None, "default: SGD 5e-4, AdamW 0.05 (none on norms/biases)",
                                         rule=Bound(float, 0), commands=LR_FIND)
    momentum: float = setting(0.9, rule=DECAY, commands=LR_FIND)
    opt: str = setting("sgd", "sgd (Nesterov), adamw, or muon: torch's Muon on the convolution filters, "
                       "SGD-Nesterov on the rest", choices=OPTIMIZERS, commands=LR_FIND)
    muon_renormalize: bool = setting(False, "with --opt muon, rescale each filter tensor to norm sqrt(out "
                                     "channels) before its update (airbench)")
    muon_momentum: float | None = setting(None, "with --opt muon, the filters' momentum (default: --momentum; "
                                          "airbench: 0.6, and 0.85 for the rest)",
                                          rule=Bound(float, 0, 1, low_open=True, high_open=True))
    muon_ns_steps: int = setting(5, "with --opt muon, Newton-Schulz iterations that orthogonalise each filter "
                                 "update (torch's default 5; airbench94_muon: 3)", rule=Bound(int, 1, 20))
    decay_all: bool = setting(False, "weight decay on every parameter, biases and norms included (airbench); "
                              "default: none on 1-D parameters")
    lr_coupled_decay: bool = setting(False, "--weight-decay is the product of rate and decay: each parameter group "
                                     "decays by it divided by its own rate (airbench: 2e-6 x batch size)")
    sched: str = setting("cosine", choices=SCHEDULES)
    warmup_epochs: float = setting(0.0, rule=Bound(float, 0))
    label_smoothing: float = setting(0.0, rule=DECAY, commands=LR_FIND)
    loss_reduction: str = setting("mean", "mean or sum of the batch's losses (airbench: sum, its rates scaled to match)",
                                  choices=("mean", "sum"))
    mixup: float = setting(0.0, "MixUp Beta alpha (0: off)", rule=Bound(float, 0), metavar="ALPHA")
    cutmix: float = setting(0.0, "CutMix Beta alpha (0: off)", rule=Bound(float, 0), metavar="ALPHA")
    ema: float = setting(0.0, "keep an EMA of the weights (decay 0.999 if no value), evaluated and saved",
                         rule=DECAY, metavar="DECAY", const=0.999)
    accum_steps: int = setting(1, "gradient accumulation steps", rule=Bound(int, 1))
    grad_clip: float | None = setting(None, "clip the gradients' global norm to NORM before each optimizer step",
                                      rule=POSITIVE, metavar="NORM")
    amp: bool = setting(False, "bfloat16 autocast", commands=LR_FIND)
    channels_last: bool = setting(False, "channels-last memory format", commands=LR_FIND)
    compile: bool = setting(False, "torch.compile the model")
    img_size: int | None = setting(None, "input size (default: the model's)", rule=Bound(int, 1, 4096),
                                   commands=LR_FIND)
    in_chans: int | None = setting(None, "input channels: 1 trains a gray model (images fed as their luma); RGB "
                                   "--weights are adapted (first convolution summed), as timm does",
                                   rule=Bound(int, 1, 64), metavar="N", commands=LR_FIND)
    progressive_resize: float = setting(1.0, "progressive resizing: start at SCALE x --img-size and grow to full "
                                        "size (1: off)", rule=Bound(float, 0, 1, low_open=True), metavar="SCALE")
    progressive_delay: float = setting(0.5, "fraction of the epochs held at the initial scale", rule=UNIT,
                                       metavar="FRACTION")
    progressive_finetune: float = setting(0.2, "fraction of the epochs at full size, at the end", rule=UNIT,
                                          metavar="FRACTION")
    augment: str | None = setting(None, "augmentation preset (default: the model's)", choices=PRESETS,
                                  commands=LR_FIND)
    augment_policy: str | None = setting(None, "torchvision v2 policy per image, before the preset's crop and flip",
                                         choices=POLICIES)
    random_erasing: float = setting(0.0, "RandomErasing with probability P per image (0: off)", rule=UNIT,
                                    metavar="P")
    color_jitter: float = setting(0.0, "ColorJitter of brightness, contrast and saturation by S (0: off)",
                                  rule=Bound(float, 0, 10), metavar="S")
    aug_repeats: int = setting(1, "repeated augmentation: each image N times per epoch, differently augmented",
                               rule=Bound(int, 1, 64), metavar="N")
    class_weights: str | None = setting(None, "weigh the loss per class: auto (inverse frequency), effective (Cui "
                                        "et al., --effective-beta) or a JSON file {class: weight}",
                                        metavar="auto|effective|FILE")
    effective_beta: float = setting(0.999, "beta of --class-weights effective", rule=FRACTION_OPEN, metavar="BETA")
    sampler: str = setting("shuffle", "shuffle, or balanced: every class drawn equally often each epoch",
                           choices=SAMPLERS)
    flip: str = setting("random", "horizontal flips: random, alternate (each image flipped in every other epoch; "
                        "airbench) or none", choices=FLIPS)
    translate: int | None = setting(None, "pad by PX pixels before the random crop (default: the preset's 4)",
                                    rule=Bound(int, 0, 64), metavar="PX")
    pad_mode: str = setting("constant", "fill that padding with zeros (constant) or reflect", choices=PAD_MODES)
    patch_whitening: bool = setting(False, "initialise the first convolution to whiten the training images' "
                                    "patches (Page; airbench)", both_ways=True)
    whiten_bias_epochs: float | None = setting(None, "with --patch-whitening: the whitening layer's weights stay as "
                                               "fitted and its bias trains for the first N epochs only, its rate "
                                               "falling to zero over them (airbench: 3)",
                                               rule=POSITIVE, metavar="N")
    norm_bias_lr_scale: float = setting(1.0, "BatchNorm biases train at X times the learning rate (Page: 64)",
                                        rule=Bound(float, 0, 1e4, low_open=True), metavar="X")
    val_split: float | None = setting(None, "hold out this fraction of each class when the data has no val/test "
                                      "split (default: 0.1; 0 trains on everything)", rule=Bound(float, 0, 1, high_open=True))
    stream: bool | None = setting(None, "decode images from disk every epoch in --workers processes instead of "
                                  "once into memory (default: stream only when the decoded set would exceed 4 GiB)",
                                  both_ways=True)
    multi_label: bool = setting(False, "several labels per image: sigmoid outputs and BCE loss, mAP/F1 instead of "
                                "accuracy (implied by a .csv/.jsonl label file as --data)")
    num_classes: int | None = setting(None, "check the data has this many classes", rule=Bound(int, 1))
    weights: str | None = setting(None, "start from a run directory, a weights file of any format, or a pretrained "
                                  "tag of --model (imagenet, IMAGENET1K_V2); a new head if the classes differ",
                                  commands=LR_FIND)
    freeze: str | None = setting(None, "'backbone' or a comma list of stem,layer1,...,layer4", commands=LR_FIND)
    unfreeze_after: int | None = setting(None, "unfreeze everything after N epochs", rule=Bound(int, 0),
                                         metavar="N")
    feature_cache: bool = setting(True, "with --freeze backbone, run the frozen backbone every step instead of "
                                  "caching features")
    sync_bn: bool = setting(False, "SyncBatchNorm across processes")
    procs: int = setting(1, "train in N data-parallel processes on this machine (DDP, as under torchrun; on a CPU "
                         "each gets its share of the threads, which can beat one process for small models)",
                         rule=Bound(int, 1, 1024), metavar="N")
    max_minutes: float | None = setting(None, "stop (resumable) before an epoch that would end more than M minutes "
                                        "after the start", rule=POSITIVE, metavar="M")
    minutes: float | None = setting(None, "plan the run to end within M minutes of the command's start: its epochs "
                                    "and schedule from the step rate measured on this machine (replaces --epochs)",
                                    rule=POSITIVE, metavar="M")
    resume: str | None = setting(None, "continue an interrupted run (its settings are kept)", metavar="RUN_DIR")
    overwrite: bool = setting(False, "start a new run in a --out folder that holds an older run (its files are "
                              "deleted once the new run's first checkpoint is written); without it such a folder "
                              "is refused")
    val_every: int = setting(1, "validate every N epochs and after the last", rule=Bound(int, 1), metavar="N")
    stop_after: int | None = setting(None, "stop after N epochs of this session (resumable)", rule=Bound(int, 1),
                                     metavar="N")
    seed: int = setting(0, rule=Bound(int, 0, 2 ** 63 - 1), commands=LR_FIND)
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...", commands=LR_FIND)
    workers: int = setting(2, "image decoding threads (processes with --stream)", rule=Bound(int, 0, 1024),
                           commands=LR_FIND)
    progress: bool = setting(True, "no progress bars", commands=LR_FIND)
    log_interval: int = setting(20, "steps between reading the running loss", rule=Bound(int, 1), flag=False)
    model_options: dict[str, Any] = setting(help="create_model's keyword arguments", default_factory=dict,
                                            flag=False)

    def __post_init__(self) -> None:
        check_settings(self)
        checks = [
            (self.unfreeze_after is None or self.freeze, "--unfreeze-after needs --freeze"),
            (self.whiten_bias_epochs is None or self.patch_whitening, "--whiten-bias-epochs needs --patch-whitening"),
            (self.batch_size % self.procs == 0,
             f"--batch-size {self.batch_size} (global) must divide evenly over --procs {self.procs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ResnetsError(message)
        self._set_in_chans()
        check_class_weights(self.class_weights)
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


# Every numeric setting's rule, read from the declarations (the hostile-value tests iterate it).
NUMBER_RULES: dict[str, Bound] = number_rules(TrainConfig)


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
