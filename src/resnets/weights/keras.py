"""Read Keras ``ResNet50/101/152`` (v1) and ``ResNet50V2/101V2/152V2`` weights with h5py.

Three files are understood: Keras 3 ``.weights.h5`` (layers named by class and creation order,
``layers/conv2d_7/vars/0``), ``.keras`` archives (the same plus ``config.json``) and legacy
``.h5`` (layers by name, ``model_weights/conv1_conv/conv1_conv/kernel``).

Mapping onto this project's models, exactly:

* kernels go from NHWC ``(kh, kw, in, out)`` to ``(out, in, kh, kw)``; Dense is transposed;
* Keras BatchNorm uses eps 1.001e-5; the difference to PyTorch's 1e-5 is added to the
  running variance (``var + eps`` is all that is ever used);
* v1 convolutions have biases, each followed by a BatchNorm: the bias is subtracted from that
  BN's running mean. v1 puts the stride on the first 1x1 conv: ``resnet50_v1`` etc.;
* v2 downsamples in the last block of each stage with a 1x1 max-pool shortcut, has a stem conv
  with bias and zero-pads its stem pool: ``preact_resnet50`` with ``stride_in_last_block``,
  ``stem_bias`` and ``stem_pool_zero_pad``. The biases of its block-output convs add a
  per-channel constant to the residual stream, which only BatchNorms (the next block's
  pre-activation, the final norm) ever read: it is folded into their running means.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ResnetsError
from ..preprocessing import Preprocessing
from ..textparse import load_json

KERAS_BN_EPS = 1.001e-5
TORCH_BN_EPS = 1e-5
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
MAX_CONFIG_BYTES = 16 << 20  # a .keras archive's config.json (a ResNet's is about 100 kB)
_VAR_NAMES = {"Conv2D": ("kernel", "bias"), "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
              "Dense": ("kernel", "bias")}
_AUTO_NAMES = {"conv2d": "Conv2D", "batch_normalization": "BatchNormalization", "dense": "Dense"}

# Keras' own preprocess_input: v1 "caffe" mode, v2 "tf" mode; load_img(target_size=(224, 224)).
KERAS_V1_PREPROCESSING = Preprocessing(224, (224, 224), "nearest", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0),
                                       channel_order="BGR", pixel_range=255.0)
KERAS_V2_PREPROCESSING = Preprocessing(224, (224, 224), "nearest", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass
class KerasResNet:
    """A Keras ResNet's weights, translated: the model to build and its state dict."""

    model_name: str
    options: dict[str, Any]
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing = KERAS_V1_PREPROCESSING


def read_keras(path: str | Path) -> KerasResNet:
    path = Path(path)
    layers = _read_layers(path)
    version = 2 if "post_bn" in layers else 1
    stages = tuple(_count_blocks(layers, s) for s in range(2, 6))
    depth = next((d for d, blocks in STAGE_BLOCKS.items() if blocks == stages), None)
    if depth is None:
        raise ResnetsError(f"{path} is not a Keras ResNet50/101/152 (v1 or V2): blocks per stage {stages}")
    state = _translate_v2(layers) if version == 2 else _translate_v1(layers)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0
    if version == 1:
        return KerasResNet(f"resnet{depth}_v1", {}, num_classes, state, KERAS_V1_PREPROCESSING)
    options = {"stride_in_last_block": True, "stem_bias": True, "stem_pool_zero_pad": True}
    return KerasResNet(f"preact_resnet{depth}", options, num_classes, state, KERAS_V2_PREPROCESSING)


# -- reading the three file layouts ----------------------------------------------------------------
Layers = dict[str, dict[str, np.ndarray]]


def _read_layers(path: Path) -> Layers:
    try:
        import h5py
    except ImportError:
        raise ResnetsError("reading Keras files needs h5py: pip install 'resnets[keras]'") from None

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = archive.getinfo("config.json")  # its declared size is all a read returns
                if member.file_size > MAX_CONFIG_BYTES:
                    raise ResnetsError(f"config.json: larger than {MAX_CONFIG_BYTES} bytes")
                config = load_json(archive.read(member), "config.json", MAX_CONFIG_BYTES)
                weights = io.BytesIO(archive.read("model.weights.h5"))
            order = [(layer["config"]["name"], layer["class_name"]) for layer in config["config"]["layers"]]
            with h5py.File(weights, "r") as h5:
                return _read_numbered(h5, order)
        with h5py.File(path, "r") as h5:
            if "layers" in h5 and "model_weights" not in h5:
                return _read_numbered(h5, None)
            return _read_named(h5["model_weights"] if "model_weights" in h5 else h5)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ResnetsError(f"{path} is not a readable Keras weights file ({error})") from None


def _read_named(group: Any) -> Layers:
    """Legacy HDF5: one group per layer holding ``<layer>/<var>`` (``:0`` suffixes in Keras 2)."""
    layers: Layers = {}
    for name in group:
        found: dict[str, np.ndarray] = {}
        group[name].visititems(lambda key, item: found.__setitem__(key.rsplit("/", 1)[-1].split(":")[0], item[()])
                               if hasattr(item, "shape") else None)
        if found:
            layers[name] = found
    return layers


def _read_numbered(h5: Any, order: list[tuple[str, str]] | None) -> Layers:
    """Keras 3: ``layers/<class-based name>_<n>/vars/<i>``, numbered in the model's layer order."""
    stored = {name: [h5["layers"][name]["vars"][str(i)][()] for i in range(len(h5["layers"][name]["vars"]))]
              for name in h5["layers"] if "vars" in h5["layers"][name] and len(h5["layers"][name]["vars"])}
    if order is None:
        order = _keras_layer_order(stored)
    counters: dict[str, int] = {}
    layers: Layers = {}
    for name, class_name in order:
        auto = next((a for a, c in _AUTO_NAMES.items() if c == class_name), None)
        if auto is None:
            continue
        n = counters.get(auto, 0)
        counters[auto] = n + 1
        key = auto if n == 0 else f"{auto}_{n}"
        if key in stored:
            layers[name] = dict(zip(_VAR_NAMES[class_name], stored[key]))
    return layers


def _keras_layer_order(stored: dict[str, list[np.ndarray]]) -> list[tuple[str, str]]:
    """The weighted layers of keras.applications' ResNet in ``model.layers`` order, as Keras builds it."""
    n_conv = sum(1 for k in stored if k.startswith("conv2d"))
    n_bn = sum(1 for k in stored if k.startswith("batch_normalization"))
    depth = next((d for d, blocks in STAGE_BLOCKS.items() if 3 * sum(blocks) + 5 == n_conv), None)
    if depth is None:
        raise ResnetsError(f"{n_conv} convolutions: not a Keras ResNet50/101/152")
    v2 = n_bn != n_conv
    conv, bn = "Conv2D", "BatchNormalization"
    order = [("conv1_conv", conv)] + ([] if v2 else [("conv1_bn", bn)])
    for stage, blocks in enumerate(STAGE_BLOCKS[depth], start=2):
        for b in range(1, blocks + 1):
            p = f"conv{stage}_block{b}_"
            head = [(p + "preact_bn", bn)] if v2 else []
            body = [(p + "1_conv", conv), (p + "1_bn", bn), (p + "2_conv", conv), (p + "2_bn", bn)]
            ends = ("0", "3") if b == 1 else ("3",)  # the first block's shortcut conv, then the last conv
            tail = [(f"{p}{i}_conv", conv) for i in ends] + ([] if v2 else [(f"{p}{i}_bn", bn) for i in ends])
            order += head + body + tail
    order += ([("post_bn", bn)] if v2 else []) + [("predictions", "Dense")]
    return order


def _count_blocks(layers: Layers, stage: int) -> int:
    return sum(1 for b in range(1, 64) if f"conv{stage}_block{b}_1_conv" in layers)


# -- translation ------------------------------------------------------------------------------------
def _conv(kernel: np.ndarray) -> np.ndarray:
    return np.transpose(kernel, (3, 2, 0, 1))


def _bn(layer: dict[str, np.ndarray], prefix: str, mean_shift: np.ndarray | float = 0.0) -> dict[str, np.ndarray]:
    """A Keras BN as PyTorch tensors; ``mean_shift`` is a constant added to its input upstream."""
    var = layer["moving_variance"].astype(np.float64) + (KERAS_BN_EPS - TORCH_BN_EPS)
    return {f"{prefix}.weight": layer["gamma"], f"{prefix}.bias": layer["beta"],
            f"{prefix}.running_mean": layer["moving_mean"].astype(np.float64) - mean_shift,
            f"{prefix}.running_var": var}


def _head(layers: Layers) -> dict[str, np.ndarray]:
    if "predictions" not in layers:
        return {}
    return {"fc.weight": layers["predictions"]["kernel"].T, "fc.bias": layers["predictions"]["bias"]}


def _bias(layer: dict[str, np.ndarray]) -> np.ndarray:
    return layer.get("bias", np.zeros(layer["kernel"].shape[-1], np.float32)).astype(np.float64)


def _translate_v1(layers: Layers) -> dict[str, np.ndarray]:
    def conv_bn(conv_name: str, bn_name: str, conv_key: str, bn_key: str) -> dict[str, np.ndarray]:
        conv = layers[conv_name]
        return {conv_key: _conv(conv["kernel"]), **_bn(layers[bn_name], bn_key, _bias(conv))}

    state = conv_bn("conv1_conv", "conv1_bn", "conv1.weight", "bn1")
    for stage in range(2, 6):
        for b in range(_count_blocks(layers, stage)):
            p, q = f"conv{stage}_block{b + 1}_", f"layer{stage - 1}.{b}."
            for i in (1, 2, 3):
                state.update(conv_bn(f"{p}{i}_conv", f"{p}{i}_bn", f"{q}conv{i}.weight", f"{q}bn{i}"))
            if f"{p}0_conv" in layers:
                state.update(conv_bn(f"{p}0_conv", f"{p}0_bn", f"{q}downsample.0.weight", f"{q}downsample.1"))
    return {**state, **_head(layers)}


def _translate_v2(layers: Layers) -> dict[str, np.ndarray]:
    stem = layers["conv1_conv"]
    state = {"conv1.weight": _conv(stem["kernel"]), "conv1.bias": _bias(stem)}
    stream = np.zeros(1)  # the per-channel constant the convs' biases add to the residual stream
    for stage in range(2, 6):
        for b in range(_count_blocks(layers, stage)):
            p, q = f"conv{stage}_block{b + 1}_", f"layer{stage - 1}.{b}."
            state.update(_bn(layers[p + "preact_bn"], q + "bn1", stream))
            for i in (1, 2):
                state[f"{q}conv{i}.weight"] = _conv(layers[f"{p}{i}_conv"]["kernel"])
                state.update(_bn(layers[f"{p}{i}_bn"], f"{q}bn{i + 1}"))
            state[q + "conv3.weight"] = _conv(layers[p + "3_conv"]["kernel"])
            if p + "0_conv" in layers:
                state[q + "downsample.weight"] = _conv(layers[p + "0_conv"]["kernel"])
                stream = _bias(layers[p + "0_conv"]) + _bias(layers[p + "3_conv"])
            else:
                stream = stream + _bias(layers[p + "3_conv"])
    state.update(_bn(layers["post_bn"], "norm", stream))
    return {**state, **_head(layers)}
