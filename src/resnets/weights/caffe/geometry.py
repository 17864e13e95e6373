"""The architecture a Caffe ResNet prototxt declares, as :class:`~resnets.models.ResNetConfig` fields.

Blob names say where each weight goes, not how the network computes: a caffemodel of MSRA's
ResNet-50 loads into ``resnet50`` (stride on the 3x3) as well as into ``resnet50_v1`` (stride on
the 1x1, as Caffe has it), and the logits differ. So the converter reads the geometry from the
prototxt: stem and its pool (Caffe's ``pool1`` is unpadded and rounds up), blocks per stage,
widths, shortcut kind, stride placement. :func:`caffe_resnet_spec` then picks the registered
model with that geometry, or checks the one the user named and refuses it with one line naming
the first difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import ResnetsError
from ...models import get_model_spec, list_models
from .net import CaffeLayer, pair_param
from .prototxt import first

_BLOCK = re.compile(r"res(\d+)([a-z]|b\d+)")


@dataclass(frozen=True)
class CaffeResNetSpec:
    """What to build for a Caffe ResNet: a registered name plus config options, and why."""

    model_name: str
    options: dict[str, Any]
    num_classes: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Geometry:
    config: dict[str, Any] = field(default_factory=dict)   # ResNetConfig fields the prototxt fixes
    evidence: dict[str, str] = field(default_factory=dict)  # field -> the layer that says so
    num_classes: int = 0


def derive_geometry(layers: Mapping[str, CaffeLayer]) -> _Geometry:
    """The ResNetConfig fields a prototxt (checked layers by name) determines."""
    geometry = _Geometry()
    _stem(layers, geometry)
    stages = _stage_depths(layers)
    geometry.config["layers"] = tuple(stages.values())
    _blocks(layers, list(stages), geometry)
    products = [layer for layer in layers.values() if layer.type == "InnerProduct"]
    if products:
        geometry.num_classes = int(first(products[-1].param("inner_product_param"), "num_output", 0))
    return geometry


def _conv(layers: Mapping[str, CaffeLayer], name: str) -> CaffeLayer:
    layer = layers.get(name)
    if layer is None or layer.type != "Convolution":
        raise ResnetsError(f"the prototxt has no Convolution layer {name!r}; it is not a ResNet in MSRA's "
                           "layer names (conv1, res2a_branch2a...), which is what resnets converts")
    return layer


def _conv_geometry(layer: CaffeLayer) -> tuple[int, int, int]:
    """(kernel, stride, num_output) of a square convolution."""
    p = layer.param("convolution_param")
    kernel, stride = pair_param(p, "kernel_size", 0), pair_param(p, "stride", 1)
    return kernel[0], stride[0], int(first(p, "num_output", 0))


def _stem(layers: Mapping[str, CaffeLayer], geometry: _Geometry) -> None:
    config = geometry.config
    if "conv1" in layers:
        kernel, stride, width = _conv_geometry(_conv(layers, "conv1"))
        kinds = {(7, 2): "imagenet", (3, 1): "cifar"}
        if (kernel, stride) not in kinds:
            raise ResnetsError(f"the prototxt's conv1 is {kernel}x{kernel} with stride {stride}; resnets "
                               "stems are 7x7/2 (ImageNet), 3x3/1 (CIFAR) or conv1_1..3 (deep)")
        config["stem"], config["stem_width"] = kinds[(kernel, stride)], width
        geometry.evidence["stem"] = f"conv1 ({kernel}x{kernel}/{stride})"
    else:
        config["stem"] = "deep"
        config["deep_stem_width"] = _conv_geometry(_conv(layers, "conv1_1"))[2]
        config["stem_width"] = _conv_geometry(_conv(layers, "conv1_3"))[2]
        geometry.evidence["stem"] = "conv1_1..conv1_3"
    if config["stem"] != "cifar":
        config["stem_pool_caffe"] = _stem_pool_is_caffe(layers)


def _stem_pool_is_caffe(layers: Mapping[str, CaffeLayer]) -> bool:
    """True for Caffe's own pool1 (3x3/2, no padding, rounding up); False for the padded,
    cropped pool1 that resnets' export writes for torch's floor-rounded pool."""
    pool = layers.get("pool1")
    if pool is not None and pool.type == "Crop" and pool.bottoms:
        padded = layers.get(pool.bottoms[0])
        if padded is not None and padded.type == "Pooling" and _pool_geometry(padded) == (3, 2, 1, "MAX"):
            return False
    if pool is None or pool.type != "Pooling":
        raise ResnetsError("the prototxt has no Pooling layer 'pool1' after the stem; resnets converts "
                           "MSRA's layout (conv1, bn_conv1, scale_conv1, pool1, res2a...)")
    kernel, stride, pad, method = _pool_geometry(pool)
    if (kernel, stride, method) != (3, 2, "MAX") or pad != 0:
        raise ResnetsError(f"the prototxt's pool1 is {method} {kernel}x{kernel}/{stride} pad {pad} rounding up; "
                           "resnets reproduces MSRA's (MAX 3x3/2, no padding) or torch's (pad 1, rounding down)")
    return True


def _pool_geometry(layer: CaffeLayer) -> tuple[int, int, int, str]:
    p = layer.param("pooling_param")
    method = {"0": "MAX", "1": "AVE"}.get(str(first(p, "pool", "MAX")), str(first(p, "pool", "MAX")))
    return (pair_param(p, "kernel_size", 0)[0], pair_param(p, "stride", 1)[0], pair_param(p, "pad", 0)[0],
            method)


def _stage_depths(layers: Mapping[str, CaffeLayer]) -> dict[int, int]:
    """{stage number: blocks} from the Eltwise layers named res2a, res2b... or res4b1, res4b2..."""
    depths: dict[int, int] = {}
    for layer in layers.values():
        match = _BLOCK.fullmatch(layer.name)
        if layer.type == "Eltwise" and match:
            stage = int(match.group(1))
            depths[stage] = depths.get(stage, 0) + 1
    if not depths:
        raise ResnetsError("the prototxt has no residual sums named res2a, res2b...; it is not a ResNet "
                           "in MSRA's layer names")
    stages = sorted(depths)
    if stages != list(range(2, 2 + len(stages))):
        raise ResnetsError(f"the prototxt's residual stages are numbered {stages}; MSRA's layout counts "
                           "them 2, 3, 4... without gaps")
    return {stage: depths[stage] for stage in stages}


def _blocks(layers: Mapping[str, CaffeLayer], stages: list[int], geometry: _Geometry) -> None:
    config = geometry.config
    bottleneck = f"res{stages[0]}a_branch2c" in layers
    config["block"] = "bottleneck" if bottleneck else "basic"
    geometry.evidence["block"] = f"res{stages[0]}a_branch2{'c' if bottleneck else 'b'}"
    if bottleneck:
        planes = [_conv_geometry(_conv(layers, f"res{s}a_branch2c"))[2] // 4 for s in stages]
        first_stage = stages[0]
        groups = int(first(_conv(layers, f"res{first_stage}a_branch2b").param("convolution_param"), "group", 1))
        width = _conv_geometry(_conv(layers, f"res{first_stage}a_branch2a"))[2]
        config["groups"], config["width_per_group"] = groups, width * 64 // max(planes[0] * groups, 1)
    else:
        planes = [_conv_geometry(_conv(layers, f"res{s}a_branch2a"))[2] for s in stages]
    config["widths"] = tuple(planes)
    avg_down = any(f"res{s}a_branch1_pool" in layers for s in stages)
    config["shortcut"] = "avg_down" if avg_down else "projection"
    if bottleneck and len(stages) > 1:
        second = stages[1]
        stride_1x1 = _conv_geometry(_conv(layers, f"res{second}a_branch2a"))[1]
        config["stride_in_1x1"] = stride_1x1 > 1
        geometry.evidence["stride_in_1x1"] = f"res{second}a_branch2{'a' if stride_1x1 > 1 else 'b'}"


# -- choosing and checking the model ----------------------------------------------------------
def _matches(name: str, config: Mapping[str, Any]) -> bool:
    spec_config = get_model_spec(name).config
    return all(getattr(spec_config, key) == value for key, value in config.items() if key != "stem_pool_caffe")


def _describe(config: Mapping[str, Any]) -> str:
    layers = "-".join(map(str, config["layers"]))
    stride = {True: ", stride on the 1x1", False: ", stride on the 3x3"}.get(config.get("stride_in_1x1"), "")
    return f"{config['block']} blocks {layers}, {config['stem']} stem, widths {list(config['widths'])}{stride}"


def _difference(name: str, geometry: _Geometry) -> str | None:
    """One sentence naming the first way the registered ``name`` differs from the prototxt."""
    ours = get_model_spec(name).config
    order = ("block", "layers", "stride_in_1x1", "stem", "widths")
    for key in sorted(geometry.config, key=lambda k: order.index(k) if k in order else len(order)):
        theirs, mine = geometry.config[key], getattr(ours, key)
        if key == "stem_pool_caffe" or mine == theirs:
            continue
        where = geometry.evidence.get(key)
        if key == "stride_in_1x1":
            return (f"the prototxt strides in {where} ({'1x1' if theirs else '3x3'}) but {name} strides in the "
                    f"{'1x1' if mine else '3x3'}")
        if key == "layers":
            return (f"the prototxt has {'-'.join(map(str, theirs))} blocks per stage but {name} has "
                    f"{'-'.join(map(str, mine))}")
        if key == "block":
            return f"the prototxt has {theirs} blocks ({where}) but {name} has {mine} blocks"
        return f"the prototxt's {key} is {theirs}{f' ({where})' if where else ''} but {name}'s is {mine}"
    return None


def caffe_resnet_spec(layers: Mapping[str, CaffeLayer], model_name: str | None = None) -> CaffeResNetSpec:
    """The model to build for a Caffe ResNet's (checked) layers: ``model_name`` if its geometry
    matches the prototxt's, else a one-line :class:`ResnetsError`; without a name, the
    registered model with that geometry."""
    geometry = derive_geometry(layers)
    candidates = [name for name in list_models() if _matches(name, geometry.config)]
    notes = []
    if model_name is None:
        if not candidates:
            raise ResnetsError(f"the prototxt's ResNet ({_describe(geometry.config)}) matches no registered "
                               "model; pass --model NAME to choose one")
        model_name = candidates[0]
        notes.append(f"the prototxt is {model_name} ({_describe(geometry.config)}); pass --model to choose")
    else:
        difference = _difference(model_name, geometry)
        if difference is not None:
            hint = f"; use {candidates[0]}" if candidates else "; no registered model has the prototxt's layout"
            raise ResnetsError(difference + hint)
    options = {}
    if geometry.config.get("stem_pool_caffe"):
        options["stem_pool_caffe"] = True
        notes.append("pool1 is Caffe's (unpadded, rounding up): the model is built with stem_pool_caffe=True")
    return CaffeResNetSpec(model_name, options, geometry.num_classes, notes)
