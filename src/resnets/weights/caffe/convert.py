"""Map a Caffe ResNet (MSRA layer names) onto a resnets model's torchvision state-dict keys.

Caffe's BatchNorm keeps running sums and a scale factor (statistics = blobs / factor) and
leaves gamma and beta to a separate Scale layer; both become one ``BatchNorm2d``. Two
differences are folded in exactly: a bias on the convolution before a BatchNorm (MSRA's
``conv1`` has one) shifts the running mean, and a Caffe ``eps`` other than the module's
shifts the running variance.

Before any weight is copied, the prototxt's geometry is compared with the model's: every
convolution's kernel, stride, padding and groups, so a model that would load every blob but
compute something else (stride on the wrong conv, another stem pool) is refused.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import ResnetsError
from ...models import ResNet
from .caffemodel import read_caffemodel
from .geometry import CaffeResNetSpec, caffe_resnet_spec
from .layout import ConvUnit, ResNetLayout, resnet_layout
from .net import CaffeLayer, fit_blob, pair_param, read_definition
from .prototxt import first

Blobs = Mapping[str, Sequence[np.ndarray]]


def caffe_to_state_dict(prototxt: str | os.PathLike, caffemodel: str | os.PathLike | Blobs,
                        model: ResNet) -> dict[str, torch.Tensor]:
    """The state dict for ``model`` (torchvision keys) from a Caffe ResNet's prototxt + caffemodel.

    Blocks may be named ``res4b`` or ``res4b1`` (ResNet-101/152 style); the classifier is the
    last InnerProduct of the prototxt.
    """
    layers = _layers_by_name(prototxt)
    blobs = read_caffemodel(caffemodel) if isinstance(caffemodel, (str, os.PathLike)) else caffemodel
    layout = _matching_layout(model, blobs)
    modules = dict(model.named_modules())
    _check_conv_geometry(layout, modules, layers, getattr(model, "model_name", None) or "the model")
    state: dict[str, torch.Tensor] = {}
    for unit in layout.units():
        state.update(_conv_bn_state(unit, modules, layers, blobs))
    if model.num_classes:
        state.update(_fc_state(model, layers, blobs))
    return state


def caffe_model_spec(prototxt: str | os.PathLike, model_name: str | None = None) -> CaffeResNetSpec:
    """Which model (registered name + options) a Caffe ResNet prototxt needs; ``model_name`` is
    checked against the prototxt's geometry (one-line error naming the first difference)."""
    return caffe_resnet_spec(_layers_by_name(prototxt), model_name)


def _layers_by_name(prototxt: str | os.PathLike) -> dict[str, CaffeLayer]:
    _, layers, _ = read_definition(prototxt, "TEST")
    return {layer.name: layer for layer in layers}


def _check_conv_geometry(layout: ResNetLayout, modules: dict[str, nn.Module], layers: Mapping[str, CaffeLayer],
                         model_name: str) -> None:
    for unit in layout.units():
        layer = layers.get(unit.caffe_conv)
        if layer is None or layer.type != "Convolution":
            raise ResnetsError(f"the prototxt has no Convolution layer {unit.caffe_conv!r} though the caffemodel "
                               "holds its weights; the two files belong to different networks")
        p = layer.param("convolution_param")
        caffe = (pair_param(p, "kernel_size", 0), pair_param(p, "stride", 1), pair_param(p, "pad", 0),
                 pair_param(p, "dilation", 1), int(first(p, "group", 1)))
        conv = modules[unit.conv]
        ours = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        if caffe != ours:
            label = ("kernel", "stride", "pad", "dilation", "group")
            which = next(i for i in range(5) if caffe[i] != ours[i])
            raise ResnetsError(f"the prototxt's {unit.caffe_conv} has {label[which]} {caffe[which]} but {model_name}'s "
                               f"{unit.conv} has {ours[which]}; the model does not compute what the Caffe net does")


def _matching_layout(model: ResNet, blobs: Blobs) -> ResNetLayout:
    candidates = [resnet_layout(model), resnet_layout(model, numbered=False), resnet_layout(model, numbered=True)]
    for layout in candidates:
        if all(unit.caffe_conv in blobs for unit in layout.units()):
            return layout
    missing = next(u.caffe_conv for u in candidates[0].units() if u.caffe_conv not in blobs)
    raise ResnetsError(f"the caffemodel has no layer {missing!r} that {getattr(model, 'model_name', 'the model')} "
                       "needs; it holds another architecture (or not MSRA layer names)")


def _layer_blobs(name: str, blobs: Blobs, count: int) -> list[np.ndarray]:
    found = blobs.get(name)
    if found is None or len(found) < count:
        raise ResnetsError(f"the caffemodel lacks the {count} blob(s) of layer {name!r}; it holds "
                           "another architecture")
    return list(found)


def _tensor(array: np.ndarray, like: torch.Tensor, layer: str, index: int) -> torch.Tensor:
    return fit_blob(array, like.shape, layer, index).to(like.dtype).clone()


def _conv_bn_state(unit: ConvUnit, modules: dict[str, nn.Module], layers: Mapping[str, CaffeLayer],
                   blobs: Blobs) -> dict[str, torch.Tensor]:
    conv, bn = modules[unit.conv], modules[unit.bn]
    conv_blobs = _layer_blobs(unit.caffe_conv, blobs, 1)
    mean, var, factor = (np.asarray(b, dtype=np.float64) for b in _layer_blobs(unit.caffe_bn, blobs, 3)[:3])
    scale_blobs = _layer_blobs(unit.caffe_scale, blobs, 1)
    inverse = 0.0 if factor.ravel()[0] == 0 else 1.0 / factor.ravel()[0]
    mean, var = mean * inverse, var * inverse
    if len(conv_blobs) > 1:
        mean = mean - np.asarray(conv_blobs[1], dtype=np.float64).reshape(mean.shape)
    bn_layer = layers.get(unit.caffe_bn)
    caffe_eps = float(first(bn_layer.param("batch_norm_param"), "eps", 1e-5)) if bn_layer else 1e-5
    var = var + (caffe_eps - bn.eps)
    gamma = scale_blobs[0]
    beta = scale_blobs[1] if len(scale_blobs) > 1 else np.zeros_like(gamma)
    return {
        f"{unit.conv}.weight": _tensor(conv_blobs[0], conv.weight, unit.caffe_conv, 0),
        f"{unit.bn}.weight": _tensor(gamma, bn.weight, unit.caffe_scale, 0),
        f"{unit.bn}.bias": _tensor(beta, bn.bias, unit.caffe_scale, 1),
        f"{unit.bn}.running_mean": _tensor(mean, bn.running_mean, unit.caffe_bn, 0),
        f"{unit.bn}.running_var": _tensor(var, bn.running_var, unit.caffe_bn, 1),
        f"{unit.bn}.num_batches_tracked": torch.zeros((), dtype=torch.long),
    }


def _fc_state(model: ResNet, layers: Mapping[str, CaffeLayer], blobs: Blobs) -> dict[str, torch.Tensor]:
    products = [name for name, layer in layers.items() if layer.type == "InnerProduct" and name in blobs]
    if not products:
        raise ResnetsError("the Caffe net has no InnerProduct layer with weights; build the model "
                           "with num_classes=0 to take the backbone only")
    name = products[-1]
    weight, bias = _layer_blobs(name, blobs, 2)[:2]
    return {"fc.weight": _tensor(weight, model.fc.weight, name, 0),
            "fc.bias": _tensor(bias, model.fc.bias, name, 1)}
