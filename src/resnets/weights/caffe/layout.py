"""Where each part of a post-activation :class:`ResNet` lives in a Caffe net, by MSRA's names.

The original Caffe release of ResNet-50/101/152 (Kaiming He) names the stem ``conv1`` /
``bn_conv1`` / ``scale_conv1`` / ``pool1``, each block ``res{stage}{letter}`` (stages 2-5)
with branches ``res2a_branch1`` (projection) and ``res2a_branch2a``/``2b``/``2c``, their
``bn2a_branch2a`` and ``scale2a_branch2a``, and the classifier ``fc1000``. Deep stages of
ResNet-101/152 count their blocks ``res4a``, ``res4b1``, ``res4b2``... The export
(:mod:`.export`) and the import (:mod:`.convert`) both read this one layout.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from torch import nn

from ...errors import ResnetsError
from ...models import ResNet


@dataclass(frozen=True)
class ConvUnit:
    """A convolution and the BatchNorm after it: torch module paths and the Caffe layer names."""

    conv: str
    bn: str
    caffe_conv: str

    @property
    def caffe_bn(self) -> str:
        suffix = self.caffe_conv[3:] if self.caffe_conv.startswith("res") else f"_{self.caffe_conv}"
        return f"bn{suffix}"

    @property
    def caffe_scale(self) -> str:
        return "scale" + self.caffe_bn[2:]


@dataclass(frozen=True)
class BlockLayout:
    name: str                    # the Eltwise layer: "res2a"
    shortcut: tuple[ConvUnit, ...]  # empty: identity shortcut
    shortcut_pool: str | None    # torch path of ResNet-D's average pool before the projection
    branch: tuple[ConvUnit, ...]  # branch2a, 2b (, 2c)


@dataclass(frozen=True)
class ResNetLayout:
    stem: tuple[ConvUnit, ...]
    has_maxpool: bool
    blocks: tuple[BlockLayout, ...]
    fc: str | None               # the InnerProduct layer, None without a head

    def units(self) -> list[ConvUnit]:
        return list(self.stem) + [u for b in self.blocks for u in (*b.shortcut, *b.branch)]


def check_exportable(model: nn.Module) -> ResNet:
    if not isinstance(model, ResNet):
        raise ResnetsError(f"Caffe export takes a resnets ResNet, got {type(model).__name__}")
    if model.config.preact:
        raise ResnetsError("pre-activation ResNets have no Caffe (MSRA) layout; export a "
                           "post-activation model or use ONNX")
    if model.config.shortcut == "zero_pad":
        raise ResnetsError("the zero-padding shortcut (CIFAR option A) has no Caffe layer; "
                           "use a model with projection shortcuts or export to ONNX")
    return model


def resnet_layout(model: ResNet, numbered: bool | None = None) -> ResNetLayout:
    """The Caffe layout of ``model``. ``numbered`` forces ``res4b1`` (True) or ``res4b`` (False)
    block names; by default stages deeper than 3 blocks of nets with a stage over 6 blocks are
    numbered, as in MSRA's ResNet-101/152."""
    check_exportable(model)
    layers = model.config.layers
    if numbered is None:
        numbered = max(layers) > 6
    stem = (_stem_units(model))
    blocks = []
    for stage_index, stage in enumerate(model.stages()):
        use_numbers = numbered and len(stage) > 3
        for index, block in enumerate(stage):
            name = f"res{stage_index + 2}{_block_suffix(index, use_numbers)}"
            prefix = f"layer{stage_index + 1}.{index}"
            blocks.append(_block_layout(name, prefix, block))
    fc = f"fc{model.num_classes}" if model.num_classes else None
    return ResNetLayout(stem, not isinstance(model.maxpool, nn.Identity), tuple(blocks), fc)


def _block_suffix(index: int, numbered: bool) -> str:
    if index == 0:
        return "a"
    if numbered:
        return f"b{index}"
    if index >= len(string.ascii_lowercase):
        raise ResnetsError("a stage with more than 26 blocks needs numbered Caffe block names")
    return string.ascii_lowercase[index]


def _stem_units(model: ResNet) -> tuple[ConvUnit, ...]:
    if not isinstance(model.conv1, nn.Sequential):
        return (ConvUnit("conv1", "bn1", "conv1"),)
    convs = [i for i, m in enumerate(model.conv1) if isinstance(m, nn.Conv2d)]
    units = [ConvUnit(f"conv1.{i}", f"conv1.{i + 1}", f"conv1_{n + 1}") for n, i in enumerate(convs[:-1])]
    units.append(ConvUnit(f"conv1.{convs[-1]}", "bn1", f"conv1_{len(convs)}"))
    return tuple(units)


def _block_layout(name: str, prefix: str, block: nn.Module) -> BlockLayout:
    tag = name[3:]  # "2a"
    count = 3 if hasattr(block, "conv3") else 2
    branch = tuple(ConvUnit(f"{prefix}.conv{i + 1}", f"{prefix}.bn{i + 1}",
                            f"{name}_branch2{string.ascii_lowercase[i]}") for i in range(count))
    shortcut: tuple[ConvUnit, ...] = ()
    pool = None
    downsample = block.downsample
    if downsample is not None:
        first = 1 if not isinstance(downsample[0], nn.Conv2d) else 0
        if first and not isinstance(downsample[0], nn.Identity):
            pool = f"{prefix}.downsample.0"
        shortcut = (ConvUnit(f"{prefix}.downsample.{first}", f"{prefix}.downsample.{first + 1}",
                             f"res{tag}_branch1"),)
    return BlockLayout(name, shortcut, pool, branch)
