"""One configurable ResNet: stem, stages of residual blocks, head.

Every member of the family (ImageNet ResNets v1/v1.5, ResNet-C/D, ResNeXt, Wide ResNet,
pre-activation ResNets, the CIFAR ResNets of the paper) is a :class:`ResNetConfig` handed to
:class:`ResNet`. Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1``...``fc``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ResnetsError
from ..preprocessing import Preprocessing
from .blocks import BLOCKS, ConvPool, PlainConv, ShortcutKind, SubsampleShortcut, conv3x3, make_shortcut, zero_init_last

StemKind = Literal["imagenet", "deep", "cifar", "patch"]
STEMS = ("imagenet", "deep", "cifar", "patch")


@dataclass(frozen=True)
class ResNetConfig:
    """The architecture. Runtime choices (classes, input channels, regularisation) are not here.

    block: ``basic``, ``bottleneck``, their ``preact_`` forms, or ``conv_pool`` (Page's ResNet-9:
        each stage is conv-BN-ReLU-max-pool, then ``layers[i]`` residual pairs, which may be 0).
    layers, widths: blocks and ``planes`` per stage (a bottleneck stage outputs 4x its planes).
    stem: ``imagenet`` (7x7/2 conv + 3x3/2 max-pool), ``deep`` (three 3x3 convs, ResNet-C/D,
        + max-pool), ``cifar`` (one 3x3/1 conv, no pool) or ``patch`` (airbench's whitening layer:
        an unpadded 2x2 conv with a bias, then the activation; 32 px in, 31 out).
    shortcut: ``projection`` (1x1 conv + BN, option B), ``avg_down`` (ResNet-D) or
        ``zero_pad`` (parameter-free option A of the CIFAR nets).
    stride_in_1x1: v1 stride placement (first 1x1 conv) instead of v1.5 (3x3 conv).
    stride_in_last_block: downsample in the LAST block of each stage (for the next stage)
        instead of the first, with a 1x1 max-pool shortcut: the layout of TF-slim and Keras
        ``ResNet50V2``. Only for pre-activation blocks; default off.
    stem_bias: the stem convolution has a bias (Keras ``ResNet50V2``).
    stem_pool_zero_pad: pad the stem max-pool's input with zeros rather than ignoring the
        border, as TF/Keras ``ZeroPadding2D`` + ``MaxPooling2D`` do (matters when the pool's
        input can be negative, i.e. in pre-activation nets).
    stem_pool_caffe: Caffe's stem max-pool (MSRA's ``pool1``): no padding, output size rounded
        up. Same 56x56 as the default at 224 pixels, but every window sits one pixel further
        down and right, so Caffe-trained weights need it; default off (torchvision's pool).
    head_pool, head_scale, head_bias: global ``avg`` or ``max`` pool, a factor on the logits, a
        classifier bias (Page's ResNet-9: max, 0.125, no bias).
    head_init_std: the classifier's initial weight's standard deviation (airbench: 1, with a small
        ``head_scale``); None keeps PyTorch's initialisation.
    residual: a ``conv_pool`` stage's ``layers[i]`` blocks are residual pairs; False makes each one a
        plain conv-BN-act unit without a shortcut (airbench's net: ResNet-9 with the shortcuts removed).
    pool_before_norm: a ``conv_pool`` stage's entry is conv, pool, BN, act (airbench) instead of
        conv, BN, act, pool (Page).
    activation: ``relu`` or ``gelu`` (airbench), everywhere the net has an activation.
    norm_momentum, norm_eps: every BatchNorm's running-statistics momentum (PyTorch's convention:
        the weight of the new batch; airbench's 0.6 is 0.4 here) and epsilon.
    freeze_norm_scale: every BatchNorm's scale stays 1 (``requires_grad=False``; still saved),
        as in airbench, where only the shifts train.
    dirac_init: convolutions keep PyTorch's default initialisation instead of Kaiming's, and every
        3x3 one starts by passing its input through on its first ``in_channels`` filters
        (``torch.nn.init.dirac_``, airbench), so a deep plain net starts near the identity.
    """

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: StemKind = "imagenet"
    stem_width: int = 64
    deep_stem_width: int = 32
    shortcut: ShortcutKind = "projection"
    groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False
    stride_in_last_block: bool = False
    stem_bias: bool = False
    stem_pool_zero_pad: bool = False
    stem_pool_caffe: bool = False
    head_pool: str = "avg"
    head_scale: float = 1.0
    head_bias: bool = True
    head_init_std: float | None = None
    residual: bool = True
    pool_before_norm: bool = False
    activation: str = "relu"
    norm_momentum: float = 0.1
    norm_eps: float = 1e-5
    freeze_norm_scale: bool = False
    dirac_init: bool = False

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "ResNetConfig":
        """The config a weights file records, checked field by field (the file is untrusted)."""
        if not isinstance(record, dict):
            raise ResnetsError(f"the architecture record must be a JSON object, got {type(record).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise ResnetsError(f"unknown architecture field(s) {', '.join(unknown)}")
        values = dict(record)
        for key in ("layers", "widths"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise ResnetsError(f"architecture field {key} must be a list, got {values[key]!r}")
                values[key] = tuple(values[key])
        for key, value in values.items():
            if known[key].type == "bool" and not isinstance(value, bool):
                raise ResnetsError(f"architecture field {key} must be true or false, got {value!r}")
        try:
            config = cls(**values)
        except TypeError as error:
            raise ResnetsError(f"incomplete architecture record ({error})") from None
        _validate(config, 0, 1, 0.0, 0.0)
        return config

    @property
    def preact(self) -> bool:
        return self.block.startswith("preact")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureInfo:
    """One stage's output, for use as a backbone: channels, total stride, module name."""

    num_chs: int
    reduction: int
    module: str
    extra: dict[str, Any] = field(default_factory=dict)


# Bounds on a configuration, checked before anything is built (a file's record is untrusted).
MAX_BLOCKS = 2000
MAX_WIDTH = 1 << 14
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(label: str, value: Any, low: float, high: float) -> None:
    """``value`` is a real number in (low, high]; NaN, booleans and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ResnetsError(f"{label} must be a number in ({low:g}, {high:g}], got {value!r}")


def _validate(config: ResNetConfig, num_classes: int, in_chans: int, drop_path_rate: float,
              drop_rate: float) -> None:
    if not isinstance(config.block, str) or config.block not in BLOCKS:
        raise ResnetsError(f"unknown block {config.block!r}; choose from {', '.join(BLOCKS)}")
    if len(config.layers) != len(config.widths) or not config.layers:
        raise ResnetsError("layers and widths must name the same, non-zero number of stages")
    fewest = 0 if config.block == "conv_pool" else 1
    if any(not _is_int(n) or n < fewest for n in config.layers):
        raise ResnetsError(f"every stage needs at least {fewest} block(s), got layers={config.layers}")
    if sum(config.layers) > MAX_BLOCKS:
        raise ResnetsError(f"layers={config.layers} has {sum(config.layers)} blocks; at most {MAX_BLOCKS} are built")
    sizes = {"widths": config.widths, "stem_width": (config.stem_width,), "deep_stem_width": (config.deep_stem_width,),
             "groups": (config.groups,), "width_per_group": (config.width_per_group,)}
    for label, values in sizes.items():
        if any(not _is_int(v) or not 1 <= v <= MAX_WIDTH for v in values):
            raise ResnetsError(f"{label} must be integers in 1..{MAX_WIDTH}, got {values if len(values) > 1 else values[0]}")
    if config.shortcut not in ("projection", "avg_down", "zero_pad"):
        raise ResnetsError(f"unknown shortcut {config.shortcut!r}; use projection, avg_down or zero_pad")
    if config.stride_in_last_block and not config.preact:
        raise ResnetsError("stride_in_last_block needs pre-activation blocks (the Keras ResNetV2 layout)")
    if config.stem_pool_zero_pad and config.stem_pool_caffe:
        raise ResnetsError("stem_pool_zero_pad and stem_pool_caffe are two different stem pools; pick one")
    if config.stem not in STEMS:
        raise ResnetsError(f"unknown stem {config.stem!r}; use {', '.join(STEMS)}")
    if config.head_pool not in ("avg", "max"):
        raise ResnetsError(f"unknown head_pool {config.head_pool!r}; use avg or max")
    _check_number("head_scale", config.head_scale, 0, 1e3)
    if config.head_init_std is not None:
        _check_number("head_init_std", config.head_init_std, 0, 1e3)
    _check_number("norm_eps", config.norm_eps, 0, 1)
    _check_number("norm_momentum", config.norm_momentum, 0, 1)
    if not isinstance(config.activation, str) or config.activation not in ACTIVATIONS:
        raise ResnetsError(f"unknown activation {config.activation!r}; use {' or '.join(ACTIVATIONS)}")
    if config.block != "conv_pool" and (config.pool_before_norm or not config.residual):
        raise ResnetsError("pool_before_norm and residual=False apply to conv_pool stages only")
    if not config.residual and drop_path_rate:
        raise ResnetsError("drop_path_rate needs residual blocks (a plain unit has no shortcut to keep)")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ResnetsError(f"num_classes must be a non-negative integer (0: no head), got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ResnetsError(f"in_chans must be a positive integer, got {in_chans!r}")
    for label, rate in (("drop_path_rate", drop_path_rate), ("drop_rate", drop_rate)):
        if not 0.0 <= rate < 1.0:
            raise ResnetsError(f"{label} must be in [0, 1), got {rate}")


class ResNet(nn.Module):
    """A residual network built from a :class:`ResNetConfig`. ``num_classes`` 0 builds no head
    (``forward`` returns embeddings); ``zero_init_residual`` starts each block as the identity;
    ``drop_path_rate``: stochastic depth, rising linearly over the blocks to this rate;
    ``drop_rate``: dropout before the classifier."""

    def __init__(self, config: ResNetConfig, num_classes: int = 1000, in_chans: int = 3,
                 zero_init_residual: bool = False, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        _validate(config, num_classes, in_chans, drop_path_rate, drop_rate)
        self.config = config
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        block = BLOCKS[config.block] if config.residual else PlainConv
        self._build_stem(config, in_chans)
        self.feature_info: list[FeatureInfo] = []
        self._build_stages(config, block, drop_path_rate)
        self.num_features = self.feature_info[-1].num_chs
        if config.preact:
            self.norm = nn.BatchNorm2d(self.num_features)
            self.final_act = nn.ReLU(inplace=True)
        # torchvision's name, kept for users' code; a global max-pool when head_pool is "max"
        self.avgpool = nn.AdaptiveMaxPool2d(1) if config.head_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.num_classes = num_classes
        self._set_layer_options(config)
        self.fc: nn.Module = self._new_classifier(num_classes)
        self._init_weights(zero_init_residual)
        # What the model is and how to feed it: saved with its weights, read by every command.
        self.model_name: str | None = None
        self.class_names: list[str] | None = None
        self.preprocessing: Preprocessing = Preprocessing.for_input_size(
            32 if self._stem_reduction == 1 else 224, crop_fraction=None if self._stem_reduction == 1 else 0.875)

    # -- construction -------------------------------------------------------------------------
    def _build_stem(self, config: ResNetConfig, in_chans: int) -> None:
        width = config.stem_width
        if config.stem == "deep":
            mid = config.deep_stem_width
            self.conv1: nn.Module = nn.Sequential(
                conv3x3(in_chans, mid, stride=2), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                conv3x3(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                conv3x3(mid, width))
        elif config.stem == "cifar":
            self.conv1 = conv3x3(in_chans, width)
        elif config.stem == "patch":
            self.conv1 = nn.Conv2d(in_chans, width, 2, padding=0, bias=True)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=config.stem_bias)
        # A pre-activation net normalises the stem's output inside its first block instead.
        if not config.preact:
            self.bn1: nn.Module = nn.Identity() if config.stem == "patch" else nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
        if config.stem in ("cifar", "patch"):
            self.maxpool: nn.Module = nn.Identity()
        elif config.stem_pool_zero_pad:
            self.maxpool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2))
        elif config.stem_pool_caffe:
            self.maxpool = nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self._stem_reduction = 1 if config.stem in ("cifar", "patch") else 4

    def _build_stages(self, config: ResNetConfig, block: type[nn.Module], drop_path_rate: float) -> None:
        total_blocks = sum(config.layers)
        norm = None if config.preact else nn.BatchNorm2d
        in_ch, reduction, index = config.stem_width, self._stem_reduction, 0
        strides = [1] * len(config.layers) if config.block == "conv_pool" else [1] + [2] * (len(config.layers) - 1)
        for stage, (planes, depth) in enumerate(zip(config.widths, config.layers)):
            out_ch = planes * block.expansion
            blocks: list[nn.Module] = []
            if config.block == "conv_pool":  # ResNet-9: the stage enters by conv + pool
                blocks.append(ConvPool(in_ch, planes, pool_before_norm=config.pool_before_norm))
                in_ch, reduction = planes, reduction * 2
            for i in range(depth):
                rate = drop_path_rate * index / max(total_blocks - 1, 1)
                block_stride = self._block_stride(strides, stage, i, depth)
                reduction *= block_stride
                if config.stride_in_last_block and block_stride > 1 and in_ch == out_ch:
                    shortcut: nn.Module | None = SubsampleShortcut(block_stride)
                else:
                    shortcut = make_shortcut(config.shortcut, in_ch, out_ch, block_stride, norm)
                blocks.append(block(in_ch, planes, block_stride, shortcut, groups=config.groups,
                                    base_width=config.width_per_group, drop_path_rate=rate,
                                    stride_in_1x1=config.stride_in_1x1))
                in_ch, index = out_ch, index + 1
            name = f"layer{stage + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(out_ch, reduction, name))

    def _block_stride(self, strides: list[int], stage: int, index: int, depth: int) -> int:
        """A stage's stride goes on its first block, or on the previous stage's last block."""
        if not self.config.stride_in_last_block:
            return strides[stage] if index == 0 else 1
        is_last = index == depth - 1 and stage + 1 < len(strides)
        return strides[stage + 1] if is_last else 1

    def _set_layer_options(self, config: ResNetConfig) -> None:
        """The options that apply to every layer of a kind (activation, BatchNorm settings), set
        on the built modules so that no block needs them as arguments. Module names stay
        torchvision's (a GELU is still ``relu``), so state-dict keys do not change."""
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.ReLU) and config.activation != "relu":
                    setattr(module, name, ACTIVATIONS[config.activation]())
            if isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = config.norm_eps, config.norm_momentum
                module.weight.requires_grad_(not config.freeze_norm_scale)

    def _init_weights(self, zero_init_residual: bool) -> None:
        if next(self.parameters()).is_meta:  # shapes only (e.g. for counting): nothing to fill
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and self.config.dirac_init:
                if module.kernel_size == (3, 3) and module.groups == 1:
                    with torch.no_grad():  # PyTorch's init stays on the other filters
                        nn.init.dirac_(module.weight[:module.in_channels])
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for stage in self.stages():
                for block in stage:
                    zero_init_last(block)

    # -- introspection ------------------------------------------------------------------------
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, info.module) for info in self.feature_info]

    @property
    def min_input_size(self) -> int:
        """The smallest input side for which the last stage still sees a whole pixel (the
        unpadded 2x2 ``patch`` stem costs one)."""
        return self.feature_info[-1].reduction + (self.config.stem == "patch")

    def default_target_layer(self) -> str:
        """The module class-activation maps are taken from by default: the last block of the last
        stage (``"layer4.1"`` for ResNet-18, ``"layer3.2"`` for ResNet-20)."""
        last = self.feature_info[-1].module
        return f"{last}.{len(getattr(self, last)) - 1}"

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one of ``num_classes`` outputs (0: no head)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ResnetsError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.class_names = None  # the new head's classes are the caller's to name
        device = next(self.parameters()).device
        self.fc = self._new_classifier(num_classes).to(device)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes, bias=self.config.head_bias)
        if self.config.head_init_std is not None and fc.weight.numel() > 1 and not fc.weight.is_meta:
            with torch.no_grad():
                fc.weight.mul_(self.config.head_init_std / fc.weight.std())
        return fc

    # -- forward ------------------------------------------------------------------------------
    def forward_stem(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if not self.config.preact:
            x = self.relu(self.bn1(x))
        return self.maxpool(x)

    def _finish(self, x: Tensor) -> Tensor:
        return self.final_act(self.norm(x)) if self.config.preact else x

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map (B, num_features, H/32, W/32 for ImageNet nets)."""
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return self._finish(x)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Every stage's feature map, for detection or segmentation backbones.

        Strides are given by ``feature_info`` (4, 8, 16, 32 for the ImageNet nets). The last
        map of a pre-activation net is normalised, as ``forward_features`` returns it.
        """
        x = self.forward_stem(x)
        maps = []
        for stage in self.stages():
            x = stage(x)
            maps.append(x)
        maps[-1] = self._finish(maps[-1])
        return maps

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and classify a feature map; ``pre_logits=True`` returns the pooled embedding."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        if pre_logits:
            return x
        x = self.fc(x)
        return x * self.config.head_scale if self.config.head_scale != 1 else x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
