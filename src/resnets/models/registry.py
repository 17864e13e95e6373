"""Model names: each maps to a :class:`ResNetConfig`, an input size and normalisation.

Names follow torchvision and timm where they exist (``resnet50``, ``resnext50_32x4d``,
``resnet50d``), so users' habits and checkpoints carry over.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from ..errors import ResnetsError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .resnet import ResNet, ResNetConfig

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# Runtime options that every model accepts, beside the fields of ResNetConfig.
MODEL_OPTIONS = ("zero_init_residual", "drop_path_rate", "drop_rate")


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
        register(ModelSpec(f"resnet{depth}", config, f"CIFAR ResNet-{depth} (paper, option A shortcut)",
                           input_size=32, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD))
    register(ModelSpec("resnet18_cifar", ResNetConfig(block="basic", layers=(2, 2, 2, 2), stem="cifar"),
                       "ResNet-18 with a 3x3/1 stem and no max-pool, for 32x32 images",
                       input_size=32, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD))

    for suffix, multiplier in RESNET9_WIDTHS.items():
        register(ModelSpec(f"resnet9_cifar{suffix}", resnet9_config(multiplier),
                           f"Page's ResNet-9 for 32x32 images{f', {multiplier}x width' if suffix else ''} "
                           "(fast CIFAR training)", input_size=32, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD))


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


_register_family()


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"resnet5*"``)."""
    names = sorted(_REGISTRY, key=_natural_key)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def _natural_key(name: str) -> tuple:
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def get_model_spec(name: str) -> ModelSpec:
    """The registered spec of ``name``; a :class:`ResnetsError` suggesting close names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnets models`"
        raise ResnetsError(f"unknown model {name!r}{hint}") from None


def create_model(name: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
                 weights: str | None = None, **options: Any) -> ResNet:
    """Build a registered model by name, optionally with weights.

    Args:
        name: a name from :func:`list_models`; may be left out when ``weights`` is a file
            that records its model (``resnets convert`` output) or whose shapes identify it.
        num_classes: classifier outputs; defaults to the model's own (1000, or 10 for CIFAR
            nets); 0 builds no head. With ``weights``, a different count replaces the loaded
            head by a fresh one (fine-tuning).
        in_chans: input channels (default: the weights' own, else 3). RGB weights are adapted
            to another count as timm does (:func:`resnets.weights.load.adapt_input_conv`).
        weights: ``"imagenet"`` or a tag of :func:`resnets.weights.list_pretrained`
            (``"IMAGENET1K_V2"``; downloaded once into the cache), or the path of a weights file
            in any supported format (safetensors, PyTorch, Keras, Paddle), auto-detected.
        **options: ``zero_init_residual``, ``drop_path_rate``, ``drop_rate``, or any field of
            :class:`ResNetConfig` to override (``stride_in_1x1=True``, ``shortcut="projection"``).
    """
    if weights is not None:
        from ..weights.load import load_model_weights  # the weights package imports models

        return load_model_weights(weights, name, num_classes=num_classes, in_chans=in_chans, **options)
    if name is None:
        raise ResnetsError("create_model needs a model name, or weights= a file that records one")
    spec = get_model_spec(name)
    config_fields = {f.name for f in dataclasses.fields(ResNetConfig)}
    unknown = set(options) - config_fields - set(MODEL_OPTIONS)
    if unknown:
        allowed = ", ".join(sorted(config_fields | set(MODEL_OPTIONS)))
        raise ResnetsError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; allowed: {allowed}")
    overrides = {k: v for k, v in options.items() if k in config_fields}
    runtime = {k: v for k, v in options.items() if k in MODEL_OPTIONS}
    if "layers" in overrides:
        overrides["layers"] = tuple(overrides["layers"])
    config = dataclasses.replace(spec.config, **overrides)
    classes = spec.num_classes if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    model = ResNet(config, num_classes=classes, in_chans=in_chans, **runtime)
    model.model_name = name
    from ..weights.load import channels_preprocessing

    model.preprocessing = channels_preprocessing(Preprocessing.for_model(name), in_chans)  # one value per channel
    return model
