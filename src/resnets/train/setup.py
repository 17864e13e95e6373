"""A run's set-up: :func:`prepare` builds the model, data, loaders, optimizer and schedule that
:class:`resnets.train.engine.Trainer` trains with. The loaders: training images augmented,
shuffled and sharded; validation images plain; or (a frozen backbone) its features cached once.

The steps run in one fixed order because several draw random numbers (a new head, the
loaders' seeds...): the same order gives bitwise the same run.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchAugment, TensorLoader
from ..data.augment import default_preset, training_preprocessing
from ..data.base import VAL_SPLITS
from ..data.policy import AugmentPolicy
from ..data.sampling import EpochPlan
from ..data.sources import open_source
from ..errors import ResnetsError
from ..metrics import extract_features
from ..factory import create_model
from ..models import ResNet
from ..models.whitening import fit_patch_whitening
from ..multilabel import is_multi_label, mark_multi_label
from ..preprocessing import Preprocessing
from ..terminal import printable
from ..factory import load_model, weights_path
from .class_weights import class_weights
from .config import TrainConfig
from .distributed import DistContext, wrap_model
from .ema import build_ema
from .freeze import freeze, parse_freeze
from .inputs import FeatureLoader, InMemoryData, StreamingData, StreamLoader, open_training_data
from .mixup import build_batch_mix
from .optim import DEFAULT_WEIGHT_DECAY, build_optimizer, default_lr, param_groups
from .resize import ResizeSchedule
from .schedule import build_scheduler

DEFAULT_VAL_SPLIT = 0.1  # held out of a data set that has no validation split, unless --val-split 0
DROPPED_WARNING = 0.05  # warn when drop_last leaves out more than this fraction of the images
WHITENING_IMAGES = 5000  # training images whose patches --patch-whitening fits (airbench uses 5,000)


@dataclass
class TrainingSetup:
    """What a run trains with; filled in by :func:`prepare`, in its order."""

    config: TrainConfig
    device: torch.device
    ctx: DistContext
    data: InMemoryData | StreamingData | None = None
    model: ResNet | None = None
    preset: str = "none"
    preprocessing: Preprocessing | None = None
    multi_label: bool = False
    class_weight: torch.Tensor | None = None
    frozen_parts: list[str] | None = None
    use_feature_cache: bool = False
    resize: ResizeSchedule | None = None
    train_loader: Any = None
    val_loader: Any = None
    trainee: nn.Module | None = None   # what the optimizer trains: the model, or its head on cached features
    forward: nn.Module | None = None   # the trainee, compiled with --compile
    net: nn.Module | None = None       # the forward, DDP-wrapped in a process group
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    steps_per_epoch: int = 0
    ema: Any = None
    batch_mix: Any = None

    @property
    def img_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and published: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.trainee

    def wrap(self) -> None:
        """(Re)wrap the forward for this process group (again after unfreezing)."""
        self.net = wrap_model(self.forward, self.ctx, self.device, self.config.sync_bn)


def prepare(config: TrainConfig, data: InMemoryData | None, device: torch.device, ctx: DistContext) -> TrainingSetup:
    """Build everything a run trains with, in the one order that makes runs reproducible."""
    setup = prepare_model_and_data(config, data, device, ctx)
    prepare_optimization(setup)
    return setup


def prepare_model_and_data(config: TrainConfig, data: InMemoryData | None, device: torch.device,
                           ctx: DistContext) -> TrainingSetup:
    """The first half of :func:`prepare`: model, record, data and loaders (what a plan measures)."""
    torch.manual_seed(config.seed)
    setup = TrainingSetup(config, device, ctx, data=data)
    setup.model = build_model(config)
    _prepare_data(setup)
    fit_classes(setup)
    whiten_first_conv(setup)
    setup.multi_label = set_up_multi_label(setup)
    setup.class_weight = loss_class_weight(setup)
    _place_and_freeze(setup)
    setup.resize = resize_schedule(setup)
    build_loaders(setup)
    setup.trainee = nn.Sequential(setup.model.dropout, setup.model.get_classifier()) \
        if setup.use_feature_cache else setup.model
    setup.forward = setup.trainee if not config.compile else torch.compile(setup.trainee)
    setup.wrap()
    return setup


def prepare_optimization(setup: TrainingSetup) -> None:
    """The second half of :func:`prepare`: optimizer and schedule for ``setup.config.epochs``, EMA, MixUp."""
    config = setup.config
    setup.optimizer = build_run_optimizer(config, setup.trainee, setup.model.get_classifier(), setup.device)
    setup.steps_per_epoch = -(-len(setup.train_loader) // config.accum_steps)
    setup.scheduler = build_scheduler(setup.optimizer, config.sched, setup.steps_per_epoch * config.epochs,
                                      round(config.warmup_epochs * setup.steps_per_epoch))
    setup.ema = build_ema(setup.trainee, config.ema) if config.ema > 0 and not setup.use_feature_cache else None
    setup.batch_mix = build_batch_mix(config.mixup, config.cutmix, setup.data.num_classes)


def build_run_optimizer(config: TrainConfig, trainee: nn.Module, classifier: nn.Module,
                        device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer over ``trainee``: its kind, default rate and decay, parameter groups."""
    lr = config.lr or default_lr(config.opt, config.batch_size)
    wd = DEFAULT_WEIGHT_DECAY[config.opt] if config.weight_decay is None else config.weight_decay
    own = {"whiten_bias": trainee.conv1.bias} if config.whiten_bias_epochs is not None else None
    groups = param_groups(trainee, lr, wd, config.head_lr, classifier, norm_bias_lr_scale=config.norm_bias_lr_scale,
                          own=own, decay_all=config.decay_all)
    if config.lr_coupled_decay:  # airbench: weight_decay=wd/lr per group, so each shrinks by the same lr x wd
        groups = [{**group, "weight_decay": group["weight_decay"] / group["lr"]} for group in groups]
    return build_optimizer(config.opt, groups, config.momentum, device, renormalize=config.muon_renormalize,
                           muon_momentum=config.muon_momentum, muon_ns_steps=config.muon_ns_steps)


def build_model(config: TrainConfig) -> ResNet:
    """The model to train, with its record: ``--weights`` is a run directory, a weights file of
    any format, or a pretrained tag (``imagenet``, ``IMAGENET1K_V2``) of ``--model``."""
    if config.weights:
        path = weights_path(config.weights)
        if path is None and not config.model:
            return load_model(config.weights).train()  # NAME:TAG, or one line naming what it is not
        return create_model(config.model, weights=str(path or config.weights), **config.model_options)
    if not config.model:
        raise ResnetsError("no model: pass --model NAME (see `resnets models`) or --weights FILE")
    return create_model(config.model, **config.model_options)


def _prepare_data(setup: TrainingSetup) -> None:
    """The run's record and its data: read from ``--data``, or handed in (their size is the input size)."""
    config = setup.config
    setup.preset, setup.preprocessing = training_record(setup, config.img_size)
    check_input_size(setup.model, setup.img_size)
    if setup.data is None:
        if not config.data:
            raise ResnetsError("no training data: pass --data PATH")
        held_out = any(name in open_source(config.data).splits for name in VAL_SPLITS)
        if config.val_split is None and not held_out:  # recorded, so that evaluate finds the same split
            setup.config = config = dataclasses.replace(config, val_split=DEFAULT_VAL_SPLIT)
            if config.progress and setup.ctx.is_main:
                print(f"{printable(config.data)} has no validation split: holding out {DEFAULT_VAL_SPLIT:.0%} of "
                      "each class (--val-split 0 trains on everything)", file=sys.stderr)
        setup.data = open_training_data(config.data, setup.img_size, config.val_split or None, config.seed,
                                        config.workers, config.stream, config.progress,
                                        val_preprocessing=setup.preprocessing)
    elif config.img_size is None:
        setup.preset, setup.preprocessing = training_record(setup, int(setup.data.train_images.shape[-1]))
        check_input_size(setup.model, setup.img_size)


def training_record(setup: TrainingSetup, img_size: int | None) -> tuple[str, Preprocessing]:
    """(augmentation preset, the run's record): the start model's pixel values (a converted
    Keras or Caffe model keeps BGR 0-255), the geometry of this run's evaluation."""
    base, config = setup.model.preprocessing, setup.config
    preset = config.augment or ("none" if config.freeze == "backbone" else default_preset(base.input_size))
    return preset, training_preprocessing(base, preset, img_size or base.input_size)


def check_input_size(model: ResNet, size: int) -> None:
    """Inputs smaller than the network's total stride train on nothing (NaN weights): refused."""
    if size < model.min_input_size:
        raise ResnetsError(f"--img-size {size} is smaller than {model.model_name}'s total stride; "
                           f"use at least {model.min_input_size}")


def fit_classes(setup: TrainingSetup) -> None:
    """A new head when the data's classes are not the model's (transfer learning)."""
    n, wanted = setup.data.num_classes, setup.config.num_classes
    if wanted is not None and wanted != n:
        raise ResnetsError(f"--num-classes {wanted} disagrees with the data, which has "
                           f"{n} classes; drop --num-classes or fix the data")
    if setup.model.num_classes != n:
        setup.model.reset_classifier(n)


def whiten_first_conv(setup: TrainingSetup) -> None:
    """``--patch-whitening``: the first convolution's filters from the training images' patch
    covariance (:mod:`resnets.models.whitening`). A resumed run's checkpoint replaces them."""
    if not setup.config.patch_whitening:
        return
    if isinstance(setup.data, StreamingData):
        raise ResnetsError("--patch-whitening fits the first layer to images held in memory; drop --stream")
    first = setup.model.conv1
    if not isinstance(first, nn.Conv2d):
        raise ResnetsError(f"--patch-whitening needs a single first convolution; {setup.model.model_name}'s stem "
                           "has several")
    # a random sample, as airbench's first 5,000 of CIFAR's shuffled order: a class-sorted folder's
    # first images are all of one class (CIFAR-10's airplanes, whose sky whitens differently)
    images = setup.data.train_images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(setup.config.seed))
    sample = images[chosen[:WHITENING_IMAGES].sort().values]
    with torch.no_grad():
        fit_patch_whitening(first, augmentation(setup, train=False)(sample))  # normalised as the model sees them
    if setup.config.whiten_bias_epochs is not None:
        if first.bias is None:
            raise ResnetsError(f"--whiten-bias-epochs: {setup.model.model_name}'s first convolution has no bias")
        first.weight.requires_grad_(False)  # airbench: the whitening stays as fitted


def set_up_multi_label(setup: TrainingSetup) -> bool:
    """Whether this run is multi-label (``--multi-label``, or multi-hot labels from a label file);
    if so the model is marked (its weights file will say so) and single labels become one-hot."""
    config, data = setup.config, setup.data
    multi_hot = isinstance(data, InMemoryData) and data.train_labels.ndim == 2
    if isinstance(data, StreamingData) and (config.multi_label or _has_multi_hot(data.train)):
        raise ResnetsError("multi-label training reads its images into memory; drop --stream "
                           "(or use fewer or smaller images)")
    if not (config.multi_label or multi_hot):
        if is_multi_label(setup.model):
            setup.model.task_record = {}  # fine-tuned on single labels: softmax from now on
        return False
    for name, value in (("mixup", config.mixup), ("cutmix", config.cutmix),
                        ("label-smoothing", config.label_smoothing)):
        if value:
            raise ResnetsError(f"--{name} is for single-label training; drop it with multi-label data")
    if not multi_hot:
        data.train_labels = F.one_hot(data.train_labels, data.num_classes)
        if data.val_labels is not None:
            data.val_labels = F.one_hot(data.val_labels, data.num_classes)
    mark_multi_label(setup.model)
    return True


def _has_multi_hot(dataset: Any) -> bool:
    """Whether a data set (or the set it is a split of) has multi-hot targets (a label file)."""
    return bool(getattr(dataset, "multi_label", False) or getattr(getattr(dataset, "parent", None), "multi_label", False))


def loss_class_weight(setup: TrainingSetup) -> torch.Tensor | None:
    """The cross-entropy's class weights (``--class-weights``), on the device; None: unweighted."""
    config = setup.config
    if config.class_weights is not None and setup.multi_label:
        raise ResnetsError("--class-weights weighs a single-label cross-entropy; it is not for multi-label data")
    weights = class_weights(config.class_weights, train_labels(setup), setup.data.class_names, config.effective_beta)
    return None if weights is None else weights.to(setup.device)


def train_labels(setup: TrainingSetup) -> list[int] | torch.Tensor:
    data = setup.data
    return data.train.targets if isinstance(data, StreamingData) else data.train_labels


def _place_and_freeze(setup: TrainingSetup) -> None:
    """Model on the device (channels-last if asked), frozen parts frozen, feature cache decided."""
    config, model = setup.config, setup.model
    model.to(setup.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    setup.frozen_parts = parse_freeze(config.freeze, model)
    freeze(model, setup.frozen_parts)
    whole_backbone = setup.frozen_parts and set(setup.frozen_parts) == set(parse_freeze("backbone", model))
    setup.use_feature_cache = bool(config.feature_cache and whole_backbone and config.unfreeze_after is None
                                   and setup.preset == "none" and not config.mixup and not config.cutmix
                                   and not config.ema and not policy(setup) and epoch_plan(setup) is None)


def resize_schedule(setup: TrainingSetup) -> ResizeSchedule:
    config, model = setup.config, setup.model
    schedule = ResizeSchedule(setup.img_size, config.progressive_resize, config.progressive_delay,
                              config.progressive_finetune)
    if schedule.enabled:
        smallest = min(schedule.size_at(epoch, config.epochs) for epoch in range(config.epochs))
        if smallest < model.min_input_size:
            raise ResnetsError(f"--progressive-resize {config.progressive_resize:g} starts at {smallest}px, below "
                               f"{model.model_name}'s smallest input ({model.min_input_size}px)")
    if schedule.enabled and setup.use_feature_cache:
        raise ResnetsError("--progressive-resize needs images, but this head-only run trains on cached "
                           "features; drop it or pass --no-feature-cache")
    return schedule


# -- loaders --------------------------------------------------------------------------------------
def augmentation(setup: TrainingSetup, train: bool) -> BatchAugment:
    """The batch augmentation of training (the run's preset, flips, padding) or of evaluation."""
    if not train:
        return BatchAugment("none", setup.preprocessing, train=False)
    config = setup.config
    padding = {} if config.translate is None else {"padding": config.translate}
    return BatchAugment(setup.preset, setup.preprocessing, train=True, flip=config.flip, pad_mode=config.pad_mode,
                        **padding)


def policy(setup: TrainingSetup) -> AugmentPolicy:
    """The per-image augmentation policy (``--augment-policy``, ``--random-erasing``,
    ``--color-jitter``); falsy when none is asked for."""
    config = setup.config
    return AugmentPolicy(config.augment_policy, config.random_erasing, config.color_jitter)


def epoch_plan(setup: TrainingSetup) -> EpochPlan | None:
    """The training epochs' draws (``--sampler balanced``, ``--aug-repeats``), or None for a plain shuffle."""
    config = setup.config
    if config.sampler == "shuffle" and config.aug_repeats == 1:
        return None
    if config.sampler == "balanced" and setup.multi_label:
        raise ResnetsError("--sampler balanced draws single-label classes; it is not for multi-label data")
    return EpochPlan.of(train_labels(setup), config.seed, config.sampler, config.aug_repeats)


def _image_loader(setup: TrainingSetup, images: torch.Tensor, labels: torch.Tensor, train: bool,
                  sharded: bool) -> TensorLoader:
    config, ctx = setup.config, setup.ctx
    batch = config.batch_size // ctx.world_size if sharded else config.batch_size
    dropped = len(labels) % batch if train and len(labels) > batch else 0
    if dropped > DROPPED_WARNING * len(labels) and ctx.is_main:
        warnings.warn(f"each epoch leaves out {dropped} of {len(labels)} training images (a batch of {batch} "
                      f"is never cut short); a --batch-size that divides {len(labels)} uses them all")
    return TensorLoader(images, labels, batch, shuffle=train,
                        drop_last=train and len(labels) > batch, augment=augmentation(setup, train),
                        seed=config.seed, device=setup.device,
                        rank=ctx.rank if sharded else 0, world_size=ctx.world_size if sharded else 1,
                        plan=epoch_plan(setup) if train else None, policy=policy(setup) if train else None)


def _stream_loader(setup: TrainingSetup, dataset: Any, train: bool, sharded: bool) -> StreamLoader:
    config, ctx = setup.config, setup.ctx
    in_memory_only = [flag for flag, used in (("--flip", config.flip != "random"),
                                              ("--translate", config.translate is not None),
                                              ("--pad-mode", config.pad_mode != "constant")) if used]
    if train and in_memory_only:  # the streaming path's torchvision transforms would silently ignore them
        raise ResnetsError(f"{', '.join(in_memory_only)} act on images held in memory; drop --stream")
    return StreamLoader(dataset, setup.preset, setup.preprocessing, train,
                        config.batch_size // ctx.world_size if sharded else config.batch_size, config.workers,
                        config.seed, setup.device, ctx.rank if sharded else 0, ctx.world_size if sharded else 1,
                        plan=epoch_plan(setup) if train else None, policy=policy(setup) if train else None)


def _train_loader(setup: TrainingSetup, shuffled: bool) -> Any:
    """The training images: shuffled, augmented and sharded, or (for feature caching) in
    order, plain and whole."""
    data = setup.data
    if isinstance(data, StreamingData):
        return _stream_loader(setup, data.train, shuffled, shuffled)
    return _image_loader(setup, data.train_images, data.train_labels, shuffled, shuffled)


def build_loaders(setup: TrainingSetup) -> None:
    """``setup.train_loader`` and ``setup.val_loader`` (None without validation data)."""
    config, data, ctx = setup.config, setup.data, setup.ctx
    if config.batch_size % ctx.world_size:
        raise ResnetsError(f"--batch-size {config.batch_size} (global) must divide evenly over "
                           f"{ctx.world_size} processes")
    setup.train_loader = _train_loader(setup, shuffled=True)
    if isinstance(data, StreamingData):
        setup.val_loader = _stream_loader(setup, data.val, False, False) if data.val is not None else None
    else:
        setup.val_loader = None
        if data.val_images is not None:
            setup.val_loader = _image_loader(setup, data.val_images, data.val_labels, False, False)
    if setup.use_feature_cache:
        feats, labels = extract_features(setup.model, _train_loader(setup, shuffled=False))
        setup.train_loader = FeatureLoader(feats, labels, config.batch_size, True, config.seed, ctx.rank,
                                           ctx.world_size)
        if setup.val_loader is not None:
            setup.val_loader = FeatureLoader(*extract_features(setup.model, setup.val_loader), config.batch_size,
                                             False)
