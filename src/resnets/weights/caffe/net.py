"""Run a Caffe network definition (``.prototxt``, optionally with its ``.caffemodel``) in PyTorch.

:func:`from_prototxt` turns the layer list into a :class:`CaffeNet`: one ordinary torch module
per Caffe layer, named after it, executed in file order on named blobs (a layer whose top is
its bottom works in place). Each BatchNorm directly followed by a Scale on the same blob
becomes one ``nn.BatchNorm2d``. Data, loss and accuracy layers do not run; what they say
(crop, mirror, mean, batch size, source...) is kept in :attr:`CaffeNet.data_info`.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import ResnetsError
from .caffemodel import read_caffemodel
from .layers import ChannelScale, Concat, Crop, Eltwise, InnerProduct, Split
from .prototxt import Message, first, parse_prototxt
from .validate import MAX_BLOB_VALUES, MAX_PARAMS, check_dims, check_layer, check_param_count

Shape = tuple[int, ...]  # a blob's shape without the batch axis

# Type names of the V1 ``layers`` format (an enum) mapped to the current ones.
V1_TYPES = {
    "ACCURACY": "Accuracy", "CONCAT": "Concat", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DROPOUT": "Dropout", "ELTWISE": "Eltwise", "FLATTEN": "Flatten", "IMAGE_DATA": "ImageData",
    "INNER_PRODUCT": "InnerProduct", "MEMORY_DATA": "MemoryData", "POOLING": "Pooling",
    "RELU": "ReLU", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SIGMOID": "Sigmoid", "TANH": "TanH", "HDF5_DATA": "HDF5Data", "WINDOW_DATA": "WindowData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "DUMMY_DATA": "DummyData", "SILENCE": "Silence",
}
DATA_TYPES = {"Input", "Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData"}
REPORTED_TYPES = {"SoftmaxWithLoss", "Accuracy", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                  "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "Silence"}
DEFAULT_INPUT_SIZE: Shape = (3, 224, 224)


@dataclass(frozen=True)
class CaffeLayer:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    message: Message

    def param(self, name: str) -> Message:
        return first(self.message, name, {})


@dataclass
class CaffeDataInfo:
    """What a network's data, loss and accuracy layers say, for training or preprocessing."""

    phase: str
    input_name: str | None = None
    input_size: Shape = DEFAULT_INPUT_SIZE
    input_size_known: bool = False
    batch_size: int | None = None
    crop_size: int | None = None
    mirror: bool | None = None
    mean_file: str | None = None
    mean_value: list[float] = field(default_factory=list)
    scale: float | None = None
    source: str | None = None
    backend: str | None = None
    num_classes: int | None = None
    loss_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Step:
    """One module run: which Caffe layer(s) it implements and the blobs it reads and writes."""

    module: str
    layers: tuple[CaffeLayer, ...]
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]


class CaffeNet(nn.Module):
    """A Caffe network as a torch module; ``forward(images)`` returns the network's output blob.

    The output is the last blob no running layer consumes: the logits, or the probabilities
    when the net ends in a Softmax.
    """

    def __init__(self, name: str, steps: Sequence[tuple[_Step, nn.Module]], input_name: str,
                 data_info: CaffeDataInfo) -> None:
        super().__init__()
        self.name = name
        self.input_name = input_name
        self.data_info = data_info
        self.steps: list[_Step] = [step for step, _ in steps]
        for step, module in steps:
            self.add_module(step.module, module)
        self.output_names = _unconsumed_tops(self.steps, input_name)
        if not self.output_names:
            raise ResnetsError(f"network {name!r} produces no output blob; check its layers")

    @property
    def input_size(self) -> Shape:
        """(C, H, W) of one input image, from the Input shape or crop size (224 if unknown)."""
        return self.data_info.input_size

    @property
    def num_classes(self) -> int | None:
        return self.data_info.num_classes

    def forward(self, x: Tensor) -> Tensor:
        blobs = {self.input_name: x}
        for step in self.steps:
            out = self._modules[step.module](*(blobs[b] for b in step.bottoms))
            if len(step.tops) == 1:
                blobs[step.tops[0]] = out
            else:
                blobs.update(zip(step.tops, out))
        return blobs[self.output_names[-1]]

    def load_caffe_blobs(self, blobs: Mapping[str, Sequence[np.ndarray]]) -> None:
        """Copy a caffemodel's blobs into the modules; shape mismatches name the layer."""
        with torch.no_grad():
            for step in self.steps:
                module = self._modules[step.module]
                loader = _LOADERS.get(type(module))
                if loader is not None:
                    loader(module, step.layers, blobs)


def _unconsumed_tops(steps: Sequence[_Step], input_name: str) -> list[str]:
    pending: dict[str, None] = {input_name: None}
    for step in steps:
        for bottom in step.bottoms:
            pending.pop(bottom, None)
        for top in step.tops:
            pending.pop(top, None)
            pending[top] = None
    return [name for name in pending if name != input_name]


# -- reading the layer list -------------------------------------------------------------------
def net_layers(net: Message, phase: str) -> list[CaffeLayer]:
    """The layers of ``net`` (current ``layer`` or V1 ``layers``) that run in ``phase``."""
    if net.get("layer") and net.get("layers"):
        raise ResnetsError("the prototxt has both `layer` and V1 `layers` entries; Caffe takes one "
                           "kind per file: upgrade the V1 `layers` (caffe's upgrade_net_proto_text)")
    layers = []
    for index, message in enumerate(net.get("layer", []) + net.get("layers", [])):
        if not isinstance(message, dict):
            raise ResnetsError(f"layer entry {index + 1} is {message!r}, not a {{ ... }} block")
        kind = str(first(message, "type", ""))
        kind = V1_TYPES.get(kind, kind)
        name = str(first(message, "name", f"{kind.lower()}{len(layers)}"))
        if _in_phase(message, phase):
            check_layer(message, kind, name)
            layers.append(CaffeLayer(name, kind, tuple(message.get("bottom", [])),
                                     tuple(message.get("top", [])), message))
    return layers


def _in_phase(message: Message, phase: str) -> bool:
    def matches(rule: Message) -> bool:
        if not isinstance(rule, dict):
            raise ResnetsError(f"an include/exclude rule must be a {{ ... }} block, got {rule!r}")
        return "phase" not in rule or str(first(rule, "phase")) in (phase, str(_PHASE_NUMBERS[phase]))

    includes, excludes = message.get("include", []), message.get("exclude", [])
    if includes and not any(matches(rule) for rule in includes):
        return False
    return not any(matches(rule) for rule in excludes)


_PHASE_NUMBERS = {"TRAIN": 0, "TEST": 1}


def pair_param(message: Message, name: str, default: int) -> tuple[int, int]:
    """A 2-d spatial parameter: ``name_h``/``name_w``, or ``name`` given once or per axis."""
    if f"{name}_h" in message or f"{name}_w" in message:
        return int(first(message, f"{name}_h", default)), int(first(message, f"{name}_w", default))
    values = [int(v) for v in message.get(name, [])] or [default]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


# -- building modules -------------------------------------------------------------------------
Builder = Callable[[CaffeLayer, list[Shape]], tuple[nn.Module, list[Shape]]]


def _conv(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("convolution_param")
    (c, h, w) = _spatial(layer, shapes[0])
    kernel = pair_param(p, "kernel_size", 0) if ("kernel_size" in p or "kernel_h" in p) else None
    if kernel is None or min(kernel) < 1:
        raise ResnetsError(f"Convolution layer {layer.name!r} has no kernel_size; add one to its "
                           "convolution_param")
    stride, pad, dilation = pair_param(p, "stride", 1), pair_param(p, "pad", 0), pair_param(p, "dilation", 1)
    out_ch, groups = int(first(p, "num_output", 0)), int(first(p, "group", 1))
    if out_ch < 1 or c % groups or out_ch % groups:
        raise ResnetsError(f"Convolution layer {layer.name!r}: num_output {out_ch} and input channels "
                           f"{c} must both divide into group {groups}")
    out_h, out_w = (_conv_out(size, k, s, q, d) for size, k, s, q, d
                    in zip((h, w), kernel, stride, pad, dilation))
    _check_output(layer, [(out_ch, out_h, out_w)])
    conv = nn.Conv2d(c, out_ch, kernel, stride, pad, dilation, groups, bias=bool(first(p, "bias_term", True)))
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv, [(out_ch, out_h, out_w)]


def _conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _pool(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("pooling_param")
    c, h, w = _spatial(layer, shapes[0])
    method = str(first(p, "pool", "MAX"))
    method = {"0": "MAX", "1": "AVE", "2": "STOCHASTIC"}.get(method, method)
    if method not in ("MAX", "AVE"):
        raise ResnetsError(f"Pooling layer {layer.name!r} uses {method} pooling; only MAX and AVE run here")
    if first(p, "global_pooling", False):
        return (nn.AdaptiveMaxPool2d(1) if method == "MAX" else nn.AdaptiveAvgPool2d(1)), [(c, 1, 1)]
    kernel, stride, pad = pair_param(p, "kernel_size", 0), pair_param(p, "stride", 1), pair_param(p, "pad", 0)
    for k, s, q in zip(kernel, stride, pad):
        # torch's ceil mode equals Caffe's rounding (output size rounded up, the last window
        # starting inside the padded image) except in these geometries, which no real net uses.
        if k < 1 or 2 * q > k or (q == 0 and s > k):
            raise ResnetsError(f"Pooling layer {layer.name!r} (kernel {kernel}, stride {stride}, pad "
                               f"{pad}) has a geometry resnets cannot reproduce exactly")
    out = [_caffe_pool_out(size, k, s, q) for size, k, s, q in zip((h, w), kernel, stride, pad)]
    module = (nn.MaxPool2d(kernel, stride, pad, ceil_mode=True) if method == "MAX"
              else nn.AvgPool2d(kernel, stride, pad, ceil_mode=True, count_include_pad=True))
    return module, [(c, *out)]


def _caffe_pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _inner_product(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("inner_product_param")
    axis = int(first(p, "axis", 1))
    if axis != 1:
        raise ResnetsError(f"InnerProduct layer {layer.name!r} has axis {axis}; only axis 1 runs here")
    out = int(first(p, "num_output", 0))
    if out < 1:
        raise ResnetsError(f"InnerProduct layer {layer.name!r} needs a positive num_output")
    return InnerProduct(math.prod(shapes[0]), out, bias=bool(first(p, "bias_term", True))), [(out,)]


def _batch_norm(layer: CaffeLayer, shapes: list[Shape], affine: bool) -> nn.Module:
    p = layer.param("batch_norm_param")
    momentum = round(1.0 - float(first(p, "moving_average_fraction", 0.999)), 12)
    return nn.BatchNorm2d(shapes[0][0], eps=float(first(p, "eps", 1e-5)), momentum=momentum,
                          affine=affine)


def _relu(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    slope = float(first(layer.param("relu_param"), "negative_slope", 0.0))
    return (nn.LeakyReLU(slope) if slope else nn.ReLU()), shapes[:1]


def _eltwise(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("eltwise_param")
    operation = str(first(p, "operation", "SUM"))
    operation = {"0": "PROD", "1": "SUM", "2": "MAX"}.get(operation, operation)
    if len(set(shapes)) != 1:
        raise ResnetsError(f"Eltwise layer {layer.name!r} adds blobs of different shapes "
                           f"{', '.join(map(str, shapes))}; check its bottoms")
    coeffs = [float(c) for c in p.get("coeff", [])]
    if coeffs and len(coeffs) != len(shapes):
        raise ResnetsError(f"Eltwise layer {layer.name!r} has {len(coeffs)} coeffs for {len(shapes)} bottoms")
    return Eltwise(operation, coeffs), shapes[:1]


def _concat(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("concat_param")
    axis = int(first(p, "axis", first(p, "concat_dim", 1)))
    dim = _axis(layer, axis, shapes[0]) - 1
    if dim < 0 or len({len(s) for s in shapes}) != 1 or any(
            s[:dim] + s[dim + 1:] != shapes[0][:dim] + shapes[0][dim + 1:] for s in shapes):
        raise ResnetsError(f"Concat layer {layer.name!r} joins blobs {', '.join(map(str, shapes))} along "
                           f"axis {axis}; their other dimensions must agree (and the batch axis cannot join)")
    out = list(shapes[0])
    out[dim] = sum(s[dim] for s in shapes)
    return Concat(axis), [tuple(out)]


def _flatten(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("flatten_param")
    axis, end = int(first(p, "axis", 1)), int(first(p, "end_axis", -1))
    if _axis(layer, axis, shapes[0]) > _axis(layer, end, shapes[0]):
        raise ResnetsError(f"Flatten layer {layer.name!r} has axis {axis} after end_axis {end}")
    return nn.Flatten(axis, end), [tuple(torch.empty((1, *shapes[0]), device="meta").flatten(axis, end).shape[1:])]


def _crop(layer: CaffeLayer, shapes: list[Shape]) -> tuple[nn.Module, list[Shape]]:
    p = layer.param("crop_param")
    axis = _axis(layer, int(first(p, "axis", 2)), shapes[0])
    offsets = [int(o) for o in p.get("offset", [])]
    if axis < 1 or len(shapes[0]) != len(shapes[1]) or len(offsets) not in (0, 1, len(shapes[0]) + 1 - axis):
        raise ResnetsError(f"Crop layer {layer.name!r}: axis {axis} and {len(offsets)} offsets do not fit "
                           f"blobs {shapes[0]} and {shapes[1]}")
    for i, dim in enumerate(range(axis - 1, len(shapes[0]))):
        offset = offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0)
        if offset + shapes[1][dim] > shapes[0][dim]:
            raise ResnetsError(f"Crop layer {layer.name!r} cuts {shapes[1]} at offset {offset} out of {shapes[0]}, "
                               "which is too small")
    out = list(shapes[0])
    out[axis - 1:] = shapes[1][axis - 1:]
    return Crop(axis, offsets), [tuple(out)]


def _same_shape(module: Callable[[CaffeLayer], nn.Module]) -> Builder:
    return lambda layer, shapes: (module(layer), shapes[:1])


_BUILDERS: dict[str, Builder] = {
    "Convolution": _conv,
    "Pooling": _pool,
    "InnerProduct": _inner_product,
    "ReLU": _relu,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Flatten": _flatten,
    "Crop": _crop,
    "BatchNorm": lambda layer, shapes: (_batch_norm(layer, shapes, affine=False), shapes[:1]),
    "Scale": lambda layer, shapes: (ChannelScale(shapes[0][0], bool(first(layer.param("scale_param"),
                                                                      "bias_term", False))), shapes[:1]),
    "Dropout": _same_shape(lambda layer: nn.Dropout(float(first(layer.param("dropout_param"),
                                                                "dropout_ratio", 0.5)))),
    "Softmax": lambda layer, shapes: (nn.Softmax(_axis(layer, int(first(layer.param("softmax_param"), "axis", 1)),
                                                        shapes[0])), shapes[:1]),
    "Sigmoid": _same_shape(lambda layer: nn.Sigmoid()),
    "TanH": _same_shape(lambda layer: nn.Tanh()),
    "Split": lambda layer, shapes: (Split(len(layer.tops)), shapes[:1] * len(layer.tops)),
}


def _axis(layer: CaffeLayer, axis: int, shape: Shape) -> int:
    """``axis`` of a blob with the batch axis first, made non-negative; out of range is an error."""
    rank = len(shape) + 1
    if not -rank <= axis < rank:
        raise ResnetsError(f"{layer.type} layer {layer.name!r} names axis {axis} of a {rank}-d blob")
    return axis % rank


def _check_output(layer: CaffeLayer, shapes: Sequence[Shape]) -> None:
    for shape in shapes:
        if any(d < 1 for d in shape):
            raise ResnetsError(f"{layer.type} layer {layer.name!r} would output an empty blob {shape}; its "
                               "kernel is larger than its (padded) input")
        if math.prod(shape) > MAX_BLOB_VALUES:
            raise ResnetsError(f"{layer.type} layer {layer.name!r} would output {math.prod(shape):.3g} values "
                               f"per image, over the limit of {MAX_BLOB_VALUES:.3g}")


def _spatial(layer: CaffeLayer, shape: Shape) -> Shape:
    if len(shape) != 3:
        raise ResnetsError(f"{layer.type} layer {layer.name!r} needs an image blob (C, H, W), "
                           f"gets shape {shape}")
    return shape


# -- loading weights --------------------------------------------------------------------------
def _blobs_of(layer: CaffeLayer, blobs: Mapping[str, Sequence[np.ndarray]], count: int) -> list[np.ndarray]:
    found = blobs.get(layer.name)
    if found is None:
        raise ResnetsError(f"the caffemodel has no weights for layer {layer.name!r} ({layer.type}); "
                           "it belongs to another network")
    if len(found) < count:
        raise ResnetsError(f"layer {layer.name!r} ({layer.type}) needs {count} blobs, the caffemodel "
                           f"holds {len(found)}")
    return list(found)


def fit_blob(array: np.ndarray, shape: Sequence[int], layer: str, index: int) -> torch.Tensor:
    """``array`` as a tensor of ``shape``; legacy 4-d padding (leading 1s) is accepted."""
    def squeeze(dims: Sequence[int]) -> tuple[int, ...]:
        return tuple(itertools.dropwhile(lambda dim: dim == 1, dims))

    if squeeze(array.shape) != squeeze(shape):
        raise ResnetsError(f"blob {index} of layer {layer!r} has shape {tuple(array.shape)} in the "
                           f"caffemodel but {tuple(shape)} in the network; they do not belong together")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(tuple(shape)))


def _load_weight_bias(module: nn.Module, layers: Sequence[CaffeLayer],
                      blobs: Mapping[str, Sequence[np.ndarray]]) -> None:
    layer = layers[0]
    arrays = _blobs_of(layer, blobs, 2 if module.bias is not None else 1)
    weight = arrays[0]
    if isinstance(module, InnerProduct) and first(layer.param("inner_product_param"), "transpose", False):
        weight = weight.reshape(module.in_features, module.out_features).T
    module.weight.copy_(fit_blob(weight, module.weight.shape, layer.name, 0))
    if module.bias is not None:
        module.bias.copy_(fit_blob(arrays[1], module.bias.shape, layer.name, 1))


def _load_batch_norm(module: nn.BatchNorm2d, layers: Sequence[CaffeLayer],
                     blobs: Mapping[str, Sequence[np.ndarray]]) -> None:
    bn = layers[0]
    mean, var, factor = _blobs_of(bn, blobs, 3)[:3]
    if factor.size != 1:
        raise ResnetsError(f"blob 2 of BatchNorm layer {bn.name!r} should be one scale factor, "
                           f"has shape {factor.shape}")
    # Caffe stores running sums: the statistics are the blobs divided by the scale factor.
    inverse = 0.0 if float(factor.ravel()[0]) == 0 else 1.0 / float(factor.ravel()[0])
    module.running_mean.copy_(fit_blob(mean, module.running_mean.shape, bn.name, 0) * inverse)
    module.running_var.copy_(fit_blob(var, module.running_var.shape, bn.name, 1) * inverse)
    if len(layers) > 1:
        _load_scale(module, layers[1:], blobs)


def _load_scale(module: nn.Module, layers: Sequence[CaffeLayer],
                blobs: Mapping[str, Sequence[np.ndarray]]) -> None:
    scale = layers[0]
    has_bias = bool(first(scale.param("scale_param"), "bias_term", False))
    arrays = _blobs_of(scale, blobs, 2 if has_bias else 1)
    module.weight.copy_(fit_blob(arrays[0], module.weight.shape, scale.name, 0))
    if has_bias:
        module.bias.copy_(fit_blob(arrays[1], module.bias.shape, scale.name, 1))
    elif module.bias is not None:
        module.bias.zero_()


_LOADERS: dict[type, Callable[..., None]] = {
    nn.Conv2d: _load_weight_bias,
    InnerProduct: _load_weight_bias,
    nn.BatchNorm2d: _load_batch_norm,
    ChannelScale: _load_scale,
}


# -- the whole net ----------------------------------------------------------------------------
def from_prototxt(path: str | os.PathLike, caffemodel: str | os.PathLike | None = None,
                  phase: str = "TEST", max_params: int = MAX_PARAMS) -> CaffeNet:
    """Build a runnable :class:`CaffeNet` from a prototxt, with a caffemodel's weights if given.

    ``path`` may also be the prototxt text itself. Without weights, convolutions are
    Kaiming-initialised so the net runs. The model is returned in eval mode (BatchNorm uses its
    running statistics, as Caffe's ``use_global_stats``); ``phase`` (TRAIN or TEST) selects
    layers by their include/exclude rules and which data layer ``data_info`` describes.

    The definition is untrusted: every parameter is checked, and the net is first planned on
    the meta device, so one declaring more than ``max_params`` parameters (or absurd blobs) is
    refused before anything is allocated.
    """
    net_def, layers, info = read_definition(path, phase, max_params)
    steps = _build_steps(layers, info, max_params)
    model = CaffeNet(str(first(net_def, "name", "caffe_net")), steps, info.input_name, info)
    if caffemodel is not None:
        model.load_caffe_blobs(read_caffemodel(caffemodel))
    return model.eval()


def read_definition(path: str | os.PathLike, phase: str = "TEST",
                    max_params: int = MAX_PARAMS) -> tuple[Message, list[CaffeLayer], CaffeDataInfo]:
    """(net, its checked layers in ``phase``, data info) of a prototxt, planned without allocating.

    The plan builds every module on the meta device: shapes are inferred, each layer's
    geometry checked and the parameters counted against ``max_params``.
    """
    phase = str(phase).upper()
    if phase not in _PHASE_NUMBERS:
        raise ResnetsError(f"phase must be TRAIN or TEST, got {phase!r}")
    net_def = parse_prototxt(path)
    layers = net_layers(net_def, phase)
    info = _data_info(net_def, layers, phase)
    with torch.device("meta"):
        planned = _build_steps(layers, info, max_params)
    total = sum(p.numel() for _, module in planned for p in module.parameters())
    check_param_count(total, max_params, f"network {str(first(net_def, 'name', 'caffe_net'))!r}")
    return net_def, layers, info


def _build_steps(layers: list[CaffeLayer], info: CaffeDataInfo, max_params: int) -> list[tuple[_Step, nn.Module]]:
    """One module per layer (or fused BatchNorm + Scale), each held to ``max_params`` parameters:
    planned on the meta device first (:func:`read_definition`), so a hostile layer costs nothing."""
    shapes: dict[str, Shape] = {info.input_name: info.input_size}
    steps: list[tuple[_Step, nn.Module]] = []
    used_names: set[str] = set(dir(nn.Module)) | {"name", "input_name", "data_info", "steps",
                                                  "output_names", "input_size", "num_classes"}
    index = 0
    while index < len(layers):
        layer = layers[index]
        index += 1
        if layer.type in DATA_TYPES or layer.type in REPORTED_TYPES:
            continue
        missing = [b for b in layer.bottoms if b not in shapes]
        if missing:
            raise ResnetsError(f"layer {layer.name!r} reads blob {missing[0]!r}, which no earlier "
                               "layer produces; check its bottom")
        in_shapes = [shapes[b] for b in layer.bottoms]
        group = [layer]
        if layer.type == "BatchNorm":
            follower = layers[index] if index < len(layers) else None
            fused = (follower is not None and follower.type == "Scale" and follower.bottoms == layer.tops
                     and len(layer.tops) == 1)
            module: nn.Module = _batch_norm(layer, in_shapes, affine=fused)
            out_shapes = in_shapes[:1]
            if fused:
                group.append(follower)
                index += 1
                layer = follower
        elif layer.type in _BUILDERS:
            module, out_shapes = _BUILDERS[layer.type](layer, in_shapes)
        else:
            raise ResnetsError(f"layer {layer.name!r} has type {layer.type!r}, which resnets cannot "
                               f"run (supported: {', '.join(sorted(_BUILDERS))})")
        check_param_count(sum(p.numel() for p in module.parameters()), max_params, f"{layer.type} layer {layer.name!r}")
        _check_output(layer, out_shapes)
        shapes.update(zip(layer.tops, out_shapes))
        module_name = _module_name(group[0].name, used_names)
        steps.append((_Step(module_name, tuple(group), group[0].bottoms, layer.tops), module))
    return steps


def _module_name(layer_name: str, used: set[str]) -> str:
    base = re.sub(r"\W", "_", layer_name) or "layer"
    name, n = base, 1
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def _data_info(net: Message, layers: list[CaffeLayer], phase: str) -> CaffeDataInfo:
    info = CaffeDataInfo(phase=phase)
    data = next((layer for layer in layers if layer.type in DATA_TYPES), None)
    if data is not None:
        info.input_name = data.tops[0] if data.tops else None
        _read_data_layer(data, info)
    elif "input" in net:
        info.input_name = str(net["input"][0])
        shape = first(net, "input_shape", {})
        dims = list(shape.get("dim", []) if isinstance(shape, dict) else []) or list(net.get("input_dim", []))
        dims = list(check_dims(dims, f"input {info.input_name!r}"))
        if len(dims) == 4:
            info.batch_size, info.input_size, info.input_size_known = dims[0], tuple(dims[1:]), True
    if info.input_name is None:
        raise ResnetsError("the network has no Input or Data layer and no `input:`; add an Input layer "
                           "with input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } }")
    products = [layer for layer in layers if layer.type == "InnerProduct"]
    if products:
        info.num_classes = int(first(products[-1].param("inner_product_param"), "num_output", 0)) or None
    info.loss_layers = [f"{layer.name} ({layer.type})" for layer in layers if layer.type in REPORTED_TYPES]
    return info


def _read_data_layer(layer: CaffeLayer, info: CaffeDataInfo) -> None:
    transform = layer.param("transform_param")
    info.crop_size = int(first(transform, "crop_size")) if "crop_size" in transform else None
    info.mirror = bool(first(transform, "mirror", False))
    info.mean_file = first(transform, "mean_file")
    info.mean_value = [float(v) for v in transform.get("mean_value", [])]
    info.scale = float(first(transform, "scale")) if "scale" in transform else None
    params = {**layer.param("data_param"), **layer.param("image_data_param"),
              **layer.param("memory_data_param")}
    info.batch_size = int(first(params, "batch_size")) if "batch_size" in params else None
    info.source = first(params, "source")
    info.backend = str(first(params, "backend")) if "backend" in params else None
    channels = 3 if first(params, "is_color", True) else 1
    if layer.type == "Input":
        shape = first(layer.param("input_param"), "shape", {})
        if not isinstance(shape, dict):
            raise ResnetsError(f"Input layer {layer.name!r}: input_param.shape must be a {{ dim: ... }} block")
        dims = list(check_dims(list(shape.get("dim", [])), f"Input layer {layer.name!r}"))
        if len(dims) == 4:
            info.batch_size, info.input_size, info.input_size_known = dims[0], tuple(dims[1:]), True
    elif layer.type == "MemoryData" and "height" in params:
        info.input_size = check_dims([1, first(params, "channels", 3), first(params, "height"),
                                      first(params, "width", 1)], f"MemoryData layer {layer.name!r}")[1:]
        info.input_size_known = True
    elif info.crop_size:
        info.input_size = check_dims([1, channels, info.crop_size, info.crop_size], f"layer {layer.name!r}")[1:]
        info.input_size_known = True
    elif "new_height" in params:
        info.input_size = check_dims([1, channels, first(params, "new_height"), first(params, "new_width", 1)],
                                     f"layer {layer.name!r}")[1:]
        info.input_size_known = True
