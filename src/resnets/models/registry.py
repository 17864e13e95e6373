"""Model names: each maps to a :class:`ResNetConfig`, an input size and normalisation.

Names follow torchvision and timm where they exist (``resnet50``, ``resnext50_32x4d``,
``resnet50d``), so users' habits and checkpoints carry over.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Iterator

from ..errors import ResnetsError
from ..preprocessing import EVAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .resnet import ResNetConfig

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR10 = {"input_size": 32, "num_classes": 10, "mean": CIFAR_MEAN, "std": CIFAR_STD}  # what a CIFAR-10 net takes


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: architecture plus the data it expects."""

    name: str
    config: ResNetConfig
    description: str
    input_size: int = 224
    num_classes: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def preprocessing(self) -> Preprocessing:
        """The default record: ImageNet nets resize 256 / crop 224; 32-pixel nets no crop margin."""
        fraction = None if self.input_size <= 64 else EVAL_CROP_FRACTION
        return Preprocessing.for_input_size(self.input_size, self.mean, self.std, fraction)


_REGISTRY: dict[str, ModelSpec] = {}

_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _register_family() -> None:
    for depth, (block, layers) in _DEPTHS.items():
        base = ResNetConfig(block=block, layers=layers)
        register(ModelSpec(f"resnet{depth}", base, f"ResNet-{depth} (v1.5 for bottleneck nets)"))
        register(ModelSpec(f"resnet{depth}c", dataclasses.replace(base, stem="deep"),
                           f"ResNet-{depth}-C: deep 3x3 stem"))
        register(ModelSpec(f"resnet{depth}d", dataclasses.replace(base, stem="deep", shortcut="avg_down"),
                           f"ResNet-{depth}-D: deep 3x3 stem, average-pool shortcut"))
        register(ModelSpec(f"preact_resnet{depth}",
                           dataclasses.replace(base, block=f"preact_{block}"),
                           f"Pre-activation ResNet-{depth} (ResNet v2)"))
        if block == "bottleneck":
            register(ModelSpec(f"resnet{depth}_v1", dataclasses.replace(base, stride_in_1x1=True),
                               f"ResNet-{depth} v1: stride on the first 1x1 conv (paper, Caffe, Keras)"))
    wide = {"resnext50_32x4d": (50, 32, 4), "resnext101_32x8d": (101, 32, 8),
            "resnext101_64x4d": (101, 64, 4), "wide_resnet50_2": (50, 1, 128),
            "wide_resnet101_2": (101, 1, 128)}
    for name, (depth, groups, width) in wide.items():
        config = ResNetConfig(block="bottleneck", layers=_DEPTHS[depth][1], groups=groups,
                              width_per_group=width)
        kind = "Wide ResNet" if groups == 1 else f"ResNeXt ({groups}x{width}d)"
        register(ModelSpec(name, config, f"{kind}-{depth}"))
    for depth in (20, 32, 44, 56, 110):
        n = (depth - 2) // 6
        config = ResNetConfig(block="basic", layers=(n, n, n), widths=(16, 32, 64), stem="cifar",
                              stem_width=16, shortcut="zero_pad")
        register(ModelSpec(f"resnet{depth}", config, f"CIFAR ResNet-{depth} (paper, option A shortcut)", **_CIFAR10))
    register(ModelSpec("resnet18_cifar", ResNetConfig(block="basic", layers=(2, 2, 2, 2), stem="cifar"),
                       "ResNet-18 with a 3x3/1 stem and no max-pool, for 32x32 images", **_CIFAR10))

    for suffix, multiplier in RESNET9_WIDTHS.items():
        register(ModelSpec(f"resnet9_cifar{suffix}", resnet9_config(multiplier),
                           f"Page's ResNet-9 for 32x32 images{f', {multiplier}x width' if suffix else ''} "
                           "(fast CIFAR training)", **_CIFAR10))
    airbench_nets = {
        "airbench94": (AIRBENCH94, "airbench94's net (K. Jordan): ResNet-9's lineage without shortcuts, "
                                   "2x2 whitening stem, GELU, frozen-scale BN"),
        "resnet9_cifar_airbench": (dataclasses.replace(resnet9_config(), head_scale=1 / 512, **AIRBENCH_TECHNIQUES),
                                   "Page's ResNet-9 with airbench's GELU, frozen-scale BN, Dirac init and head"),
        "airbench94_residual": (AIRBENCH94_RESIDUAL, "ResNet-9's layout (residual pairs after the first and last "
                                                     "conv-pool groups) at airbench94's widths, stem and techniques"),
    }
    for name, (config, description) in airbench_nets.items():
        register(ModelSpec(name, config, description, **_CIFAR10))


# Width multipliers of the registered ResNet-9s, named as torchvision names MobileNet/ShuffleNet
# widths (``shufflenet_v2_x0_5``); the unsuffixed one is Page's.
RESNET9_WIDTHS = {"": 1.0, "_x0_75": 0.75, "_x0_5": 0.5}


def resnet9_config(width_multiplier: float = 1.0) -> ResNetConfig:
    """David Page's ResNet-9 ("How to train your ResNet", 2018; 94 % on CIFAR-10 in 24 epochs),
    its widths (prep 64; stages 128, 256, 512) scaled by ``width_multiplier``.

    prep conv-BN-ReLU; stage 1 conv-BN-ReLU-max-pool + a residual pair; stage 2 conv-BN-ReLU-max-pool;
    stage 3 conv-BN-ReLU-max-pool + a residual pair; global max-pool; a bias-free linear layer whose
    logits are scaled by 0.125. 6.57 M parameters at width 1.
    """
    def scaled(width: int) -> int:
        return max(1, round(width * width_multiplier))

    return ResNetConfig(block="conv_pool", layers=(1, 0, 1), widths=tuple(scaled(w) for w in (128, 256, 512)),
                        stem="cifar", stem_width=scaled(64), shortcut="projection", head_pool="max",
                        head_scale=0.125, head_bias=False)


# Keller Jordan's airbench94 (94 % on CIFAR-10 in a few seconds): its techniques, which apply to
# any net of the family, and its net: three conv-pool + plain conv groups of widths 64, 256, 256
# after a 24-channel 2x2 whitening stem, logits divided by the width; 1,972,792 parameters.
AIRBENCH_TECHNIQUES = {"activation": "gelu", "norm_momentum": 0.4, "norm_eps": 1e-12,
                       "freeze_norm_scale": True, "dirac_init": True, "head_init_std": 1.0}
AIRBENCH94 = ResNetConfig(block="conv_pool", layers=(1, 1, 1), widths=(64, 256, 256), stem="patch",
                          stem_width=24, residual=False, pool_before_norm=True, head_pool="max",
                          head_scale=1 / 256, head_bias=False, **AIRBENCH_TECHNIQUES)
# The same, with ResNet-9's residual pairs where airbench has its plain convs: a pair after the
# first and the last group, none after the middle one (Page's layers 1, 0, 1), so one field apart
# and a little less compute (103 M multiply-adds an image against airbench94's 118 M).
AIRBENCH94_RESIDUAL = dataclasses.replace(AIRBENCH94, layers=(1, 0, 1), residual=True)

_register_family()


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"resnet5*"``)."""
    names = sorted(_REGISTRY, key=_natural_key)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def iter_model_specs() -> Iterator[ModelSpec]:
    """Every registered spec, in registration order."""
    return iter(list(_REGISTRY.values()))


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec of ``name``; a :class:`ResnetsError` suggesting close names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnets models`"
        raise ResnetsError(f"unknown model {name!r}{hint}") from None
