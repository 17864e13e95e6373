"""Export a post-activation ResNet as a Caffe deploy prototxt and caffemodel (MSRA layer names).

Each BatchNorm2d becomes Caffe's BatchNorm (running statistics, scale factor 1) + Scale
(gamma, beta) pair; each residual sum an Eltwise SUM. Caffe's pooling rounds its output size
up where torch's stem max-pool rounds down: the export pools with Caffe's rounding and then
crops the extra row and column away (a ``Crop`` against a pool of exactly the torch size), so
the Caffe net computes what the torch one does for every input size.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ResnetsError
from ...fileio import atomic_write_text
from ...models import ResNet
from .caffemodel import write_caffemodel
from .layout import ConvUnit, check_exportable, resnet_layout
from .prototxt import EnumValue, Message, format_prototxt


class _NetWriter:
    """Collects layers (as prototxt messages) and their weight blobs."""

    def __init__(self, model: ResNet) -> None:
        self.modules = dict(model.named_modules())
        self.layers: list[Message] = []
        self.blobs: dict[str, list[np.ndarray]] = {}
        self.types: dict[str, str] = {}

    def add(self, name: str, kind: str, bottoms: list[str], tops: list[str],
            params: Message | None = None, blobs: list[torch.Tensor] | None = None) -> str:
        layer: Message = {"name": [name], "type": [kind], "bottom": bottoms, "top": tops}
        layer.update(params or {})
        self.layers.append(layer)
        self.types[name] = kind
        if blobs:
            self.blobs[name] = [b.detach().cpu().float().numpy() for b in blobs]
        return tops[0]

    def conv_bn(self, unit: ConvUnit, bottom: str, relu: bool) -> str:
        conv, bn = self.modules[unit.conv], self.modules[unit.bn]
        top = self.add(unit.caffe_conv, "Convolution", [bottom], [unit.caffe_conv],
                       {"convolution_param": [_conv_param(conv)]}, [conv.weight])
        self.add(unit.caffe_bn, "BatchNorm", [top], [top],
                 {"batch_norm_param": [{"use_global_stats": [True], "eps": [float(bn.eps)]}]},
                 [bn.running_mean, bn.running_var, torch.ones(1)])
        self.add(unit.caffe_scale, "Scale", [top], [top], {"scale_param": [{"bias_term": [True]}]},
                 [bn.weight, bn.bias])
        if relu:
            self.add(f"{unit.caffe_conv}_relu", "ReLU", [top], [top])
        return top

    def pool(self, name: str, module: nn.Module, bottom: str, method: str) -> str:
        """A torch pool (floor rounding for MaxPool2d) with Caffe's ceil-rounding Pooling."""
        kernel, stride, pad = (_single(getattr(module, a), name) for a in ("kernel_size", "stride", "padding"))
        ceil_mode = getattr(module, "ceil_mode", False)
        params = {"pool": [EnumValue(method)], "kernel_size": [kernel], "stride": [stride]}
        if pad:
            params["pad"] = [pad]
        if ceil_mode or stride == 1:
            return self.add(name, "Pooling", [bottom], [name], {"pooling_param": [params]})
        # Torch rounds down: pool a reference whose Caffe (round-up, pad 0) size is torch's,
        # then crop the padded pool to it. Kernel k - 2p + s - 1 makes the two sizes equal.
        reference_kernel = kernel - 2 * pad + stride - 1
        if reference_kernel < stride:
            raise ResnetsError(f"pooling {name} (kernel {kernel}, stride {stride}, pad {pad}) "
                               "cannot be expressed in Caffe exactly")
        padded = self.add(f"{name}_padded", "Pooling", [bottom], [f"{name}_padded"], {"pooling_param": [params]})
        reference = self.add(f"{name}_size", "Pooling", [bottom], [f"{name}_size"], {"pooling_param": [
            {"pool": [EnumValue("MAX")], "kernel_size": [reference_kernel], "stride": [stride]}]})
        return self.add(name, "Crop", [padded, reference], [name],
                        {"crop_param": [{"axis": [2], "offset": [0]}]})


def _single(value: Any, name: str) -> int:
    values = value if isinstance(value, tuple) else (value,)
    if len(set(values)) != 1:
        raise ResnetsError(f"layer {name} has a non-square window {values}; Caffe export expects square ones")
    return int(values[0])


def _conv_param(conv: nn.Conv2d) -> Message:
    param: Message = {"num_output": [conv.out_channels], "bias_term": [conv.bias is not None]}
    for caffe_name, value in (("kernel", conv.kernel_size), ("stride", conv.stride),
                              ("pad", conv.padding), ("dilation", conv.dilation)):
        key = "kernel_size" if caffe_name == "kernel" else caffe_name
        if caffe_name == "dilation" and value == (1, 1):
            continue
        if value[0] == value[1]:
            param[key] = [int(value[0])]
        else:
            param[f"{caffe_name}_h"], param[f"{caffe_name}_w"] = [int(value[0])], [int(value[1])]
    if conv.groups != 1:
        param["group"] = [conv.groups]
    if conv.bias is not None:
        raise ResnetsError("a ResNet convolution with a bias cannot be exported; BN follows every conv")
    return param


def resnet_to_caffe(model: ResNet, input_size: tuple[int, int, int]) -> tuple[Message, dict[str, list[np.ndarray]], dict[str, str]]:
    """The deploy NetParameter (as a message), the weight blobs and the layer types of ``model``."""
    layout = resnet_layout(check_exportable(model))
    writer = _NetWriter(model)
    blob = writer.add("data", "Input", [], ["data"],
                      {"input_param": [{"shape": [{"dim": [1, *input_size]}]}]})
    for unit in layout.stem:
        blob = writer.conv_bn(unit, blob, relu=True)
    if layout.has_maxpool:
        blob = writer.pool("pool1", model.maxpool, blob, "MAX")
    for block in layout.blocks:
        shortcut = blob
        if block.shortcut_pool is not None:
            shortcut = writer.pool(f"{block.name}_branch1_pool", writer.modules[block.shortcut_pool],
                                   shortcut, "AVE")
        for unit in block.shortcut:
            shortcut = writer.conv_bn(unit, shortcut, relu=False)
        branch = blob
        for i, unit in enumerate(block.branch):
            branch = writer.conv_bn(unit, branch, relu=i < len(block.branch) - 1)
        blob = writer.add(block.name, "Eltwise", [shortcut, branch], [block.name],
                          {"eltwise_param": [{"operation": [EnumValue("SUM")]}]})
        writer.add(f"{block.name}_relu", "ReLU", [blob], [blob])
    blob = writer.add("pool5", "Pooling", [blob], ["pool5"], {"pooling_param": [
        {"pool": [EnumValue("AVE")], "global_pooling": [True]}]})
    if layout.fc is not None:
        writer.add(layout.fc, "InnerProduct", [blob], [layout.fc],
                   {"inner_product_param": [{"num_output": [model.num_classes]}]},
                   [model.fc.weight, model.fc.bias])
    name = getattr(model, "model_name", None) or "ResNet"
    return {"name": [name], "layer": writer.layers}, writer.blobs, writer.types


def export_caffe(model: ResNet, prototxt_path: str | os.PathLike,
                 caffemodel_path: str | os.PathLike | None = None,
                 input_size: tuple[int, int, int] | None = None) -> None:
    """Write ``model`` as a Caffe deploy prototxt (and its weights as a caffemodel).

    ``input_size`` (C, H, W) sets the Input layer's shape (default: in_chans x 224 x 224); the
    net's last blob is the logits (no Softmax layer), as the torch model returns.
    """
    size = tuple(input_size) if input_size is not None else (model.in_chans, 224, 224)
    net, blobs, types = resnet_to_caffe(model, size)
    atomic_write_text(prototxt_path, format_prototxt(net) + "\n")
    if caffemodel_path is not None:
        write_caffemodel(caffemodel_path, net["name"][0], blobs, types)
