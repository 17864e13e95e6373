"""Recognise the architecture of a state dict (torchvision key names) from its tensor shapes.

Layer counts, block type, widths, groups, stem and shortcut kind all show in the shapes and
give a registered model name. The one thing they cannot show is where a bottleneck puts its
stride (v1 ``resnet50_v1`` or v1.5 ``resnet50``): v1.5 is assumed, as in torchvision and timm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ResnetsError
from ..models import ResNetConfig, iter_model_specs


@dataclass(frozen=True)
class Architecture:
    config: ResNetConfig
    num_classes: int
    in_chans: int
    model_name: str | None


def infer_architecture(state: dict[str, torch.Tensor], source: str) -> Architecture:
    """The architecture the tensors of ``state`` belong to; a ResnetsError if not a ResNet."""
    if "layer1.0.conv1.weight" not in state:
        raise ResnetsError(f"{source} is not a ResNet checkpoint (no layer1.0.conv1.weight; "
                           f"first keys: {', '.join(list(state)[:3])})")
    layers = tuple(_count_blocks(state, stage) for stage in range(1, 9) if f"layer{stage}.0.conv1.weight" in state)
    preact = "norm.weight" in state and "bn1.weight" not in state
    bottleneck = "layer1.0.conv3.weight" in state
    block = ("preact_" if preact else "") + ("bottleneck" if bottleneck else "basic")
    planes = tuple(_planes(state, s + 1, bottleneck) for s in range(len(layers)))
    groups, width_per_group = 1, 64
    if bottleneck:
        mid = state["layer1.0.conv2.weight"]
        groups = mid.shape[0] // mid.shape[1]
        width_per_group = mid.shape[0] // groups * 64 // planes[0]
    stem, stem_width, deep_width, in_chans = _stem(state)
    config = ResNetConfig(block=block, layers=layers, widths=planes, stem=stem, stem_width=stem_width,
                          deep_stem_width=deep_width, shortcut=_shortcut(state, len(layers)), groups=groups,
                          width_per_group=width_per_group, stem_bias="conv1.bias" in state)
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None else 0
    return Architecture(config, num_classes, in_chans, registered_name(config))


def registered_name(config: ResNetConfig) -> str | None:
    """The registry name whose architecture is ``config`` (the first, in registry order)."""
    return next((spec.name for spec in iter_model_specs() if spec.config == config), None)


def _count_blocks(state: dict[str, torch.Tensor], stage: int) -> int:
    pattern = re.compile(rf"layer{stage}\.(\d+)\.")
    return 1 + max(int(m.group(1)) for k in state if (m := pattern.match(k)))


def _planes(state: dict[str, torch.Tensor], stage: int, bottleneck: bool) -> int:
    if bottleneck:
        return int(state[f"layer{stage}.0.conv3.weight"].shape[0]) // 4
    return int(state[f"layer{stage}.0.conv1.weight"].shape[0])


def _stem(state: dict[str, torch.Tensor]) -> tuple[str, int, int, int]:
    default_deep = ResNetConfig.deep_stem_width
    if "conv1.0.weight" in state:
        first, last = state["conv1.0.weight"], state["conv1.6.weight"]
        return "deep", int(last.shape[0]), int(first.shape[0]), int(first.shape[1])
    conv = state["conv1.weight"]
    stem = "cifar" if conv.shape[-1] == 3 else "imagenet"
    return stem, int(conv.shape[0]), default_deep, int(conv.shape[1])


def _shortcut(state: dict[str, torch.Tensor], stages: int) -> str:
    for stage in range(2, stages + 1):
        prefix = f"layer{stage}.0.downsample"
        if f"{prefix}.1.weight" in state and state[f"{prefix}.1.weight"].ndim == 4:
            return "avg_down"
        if any(k.startswith(prefix) for k in state):
            return "projection"
    return "zero_pad"
