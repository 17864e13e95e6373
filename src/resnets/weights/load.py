"""Loading weights of any supported format into a model (file -> model).

Every source is first read into one neutral form, :class:`ImportedWeights` (torchvision-named
tensors plus the model that owns them and its record), from which a model is built and loaded
strictly (:func:`build_model`). ``create_model(weights=...)`` comes here; ``resnets convert``
(:mod:`resnets.weights.convert`, file -> file) builds the model here and saves it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnetsError
from ..models import ResNet, ResNetConfig, get_model_spec
from ..models.builder import MODEL_OPTIONS, build_registered_model
from ..multilabel import task_of
from ..preprocessing import Preprocessing, channels_preprocessing
from .caffe import caffe_model_spec, caffe_to_state_dict
from .detect import infer_architecture
from .format import checked_architecture, load_state_dict_checked, load_weights_file
from .imagenet import imagenet_class_names
from .keras import read_keras
from .onnx import is_onnx_path, onnx_file_refused
from .paddle import read_paddle
from .pretrained import get_pretrained, load_pretrained_state_dict
from .torch_checkpoint import read_torch_checkpoint

SOURCES = ("auto", "torchvision", "timm", "keras", "paddle", "caffe", "resnets")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# MSRA's Caffe ResNets take BGR pixels in 0..255 minus a mean image; this is its per-channel mean.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


@dataclass
class ImportedWeights:
    """Tensors under torchvision's names and what is needed to build the model they fit."""

    state_dict: dict[str, torch.Tensor]
    model_name: str | None
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    in_chans: int = 3
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    notes: list[str] = field(default_factory=list)
    task: dict[str, Any] = field(default_factory=dict)  # multi-label record (resnets.multilabel.task_of)

    @property
    def num_classes(self) -> int:
        head = self.state_dict.get("fc.weight")
        return int(head.shape[0]) if head is not None else 0


def detect_format(path: str | os.PathLike) -> str:
    """``resnets`` (safetensors), ``torch``, ``keras``, ``paddle`` or ``caffe``, from name and content."""
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"no such file: {path}")
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.endswith(".weights.h5") else path.suffix.lower()
    by_suffix = {".safetensors": "resnets", ".pth": "torch", ".pt": "torch", ".ckpt": "torch", ".bin": "torch",
                 ".h5": "keras", ".hdf5": "keras", ".weights.h5": "keras", ".keras": "keras",
                 ".pdparams": "paddle", ".caffemodel": "caffe", ".prototxt": "caffe"}
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(_HDF5_MAGIC):
        return "keras"
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path) and "config.json" in zipfile.ZipFile(path).namelist():
            return "keras"
        return "torch"
    if suffix in by_suffix:
        return by_suffix[suffix]
    if len(head) >= 9 and head[8:9] == b"{":
        return "resnets"
    if is_onnx_path(path):
        raise onnx_file_refused(path)
    raise ResnetsError(f"cannot tell the format of {path}; pass --from (one of {', '.join(SOURCES[1:])})")


def read_weights(path: str | os.PathLike, source: str = "auto", model_name: str | None = None,
                 caffemodel: str | os.PathLike | None = None, num_classes: int | None = None) -> ImportedWeights:
    """Read any supported weights file into :class:`ImportedWeights` (nothing is unpickled unsafely)."""
    if source not in SOURCES:
        raise ResnetsError(f"unknown source format {source!r}; choose from {', '.join(SOURCES)}")
    kind = detect_format(path) if source == "auto" else {"torchvision": "torch", "timm": "torch"}.get(source, source)
    if kind == "caffe":
        return _read_caffe(Path(path), caffemodel, model_name, num_classes)
    readers = {"resnets": _read_resnets, "keras": _read_keras,
               "torch": lambda p: _recognised(read_torch_checkpoint(p), str(p), "PyTorch checkpoint"),
               "paddle": lambda p: _recognised(read_paddle(p), str(p), "Paddle")}
    imported = readers[kind](Path(path))
    if model_name is not None:
        imported = _as_model(imported, model_name)
    if imported.model_name is None and not imported.options.get("layers"):
        raise ResnetsError(f"the weights in {path} match no registered model; pass --model NAME")
    return imported


def _read_resnets(path: Path) -> ImportedWeights:
    record = load_weights_file(path)
    if record.config is None:
        return _recognised(record.state_dict, str(path), "resnets")
    config, args = checked_architecture(record, str(path))
    options = {**config.to_dict(), "drop_rate": args.get("drop_rate", 0.0)}
    return ImportedWeights(record.state_dict, record.model_name, record.source or str(path), options,
                           in_chans=args.get("in_chans", 3), class_names=record.class_names,
                           preprocessing=record.preprocessing,
                           task=task_of(record.extra, record.source or str(path)))


def _read_keras(path: Path) -> ImportedWeights:
    keras = read_keras(path)
    return ImportedWeights(keras.state_dict, keras.model_name, f"Keras {path.name}", keras.options,
                           class_names=_imagenet_names(keras.num_classes), preprocessing=keras.preprocessing)


def _read_caffe(path: Path, caffemodel: str | os.PathLike | None, model_name: str | None,
                num_classes: int | None) -> ImportedWeights:
    """A Caffe ResNet (MSRA layer names), built with the geometry its prototxt declares.

    ``model_name`` is checked against that geometry; without it, the model is inferred."""
    prototxt, weights = (path, caffemodel) if path.suffix == ".prototxt" else (caffemodel, path)
    if prototxt is None or weights is None:
        raise ResnetsError("a Caffe model needs both files: pass the .caffemodel as SRC and --prototxt PATH")
    spec = caffe_model_spec(prototxt, model_name)
    model_name = spec.model_name
    classes = spec.num_classes if num_classes is None else num_classes
    model = build_registered_model(model_name, num_classes=classes, **spec.options)
    state = caffe_to_state_dict(prototxt, weights, model)
    preprocessing = Preprocessing(224, 256, "bilinear", CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), channel_order="BGR",
                                  pixel_range=255.0)
    return ImportedWeights(state, model_name, f"Caffe {Path(weights).name}", dict(spec.options),
                           class_names=_imagenet_names(model.num_classes), preprocessing=preprocessing,
                           notes=list(spec.notes))


def _recognised(state: dict[str, torch.Tensor], source: str, kind: str) -> ImportedWeights:
    """Torchvision-named tensors whose model is recognised from their shapes."""
    arch = infer_architecture(state, source)
    return ImportedWeights(state, arch.model_name, f"{kind} {Path(source).name}", in_chans=arch.in_chans,
                           class_names=_imagenet_names(arch.num_classes))


def _as_model(imported: ImportedWeights, model_name: str) -> ImportedWeights:
    """Load the tensors into ``model_name`` instead (e.g. ``resnet50_v1``, which shapes cannot tell)."""
    get_model_spec(model_name)
    if imported.model_name == model_name:
        return imported
    return dataclasses.replace(imported, model_name=model_name, options={})


def _imagenet_names(num_classes: int) -> list[str] | None:
    """ImageNet's class names for a head of 1000 classes (a foreign file records none)."""
    return imagenet_class_names() if num_classes == 1000 else None


def build_model(imported: ImportedWeights, num_classes: int | None = None, drop_head: bool = False,
                **options: Any) -> ResNet:
    """The model ``imported`` describes, loaded strictly with its tensors.

    ``drop_head`` leaves out the file's classifier (the model has none); ``num_classes`` must
    then be absent, or equal to the file's. Extra ``options`` go to :func:`build_registered_model`.
    """
    state = dict(imported.state_dict)
    file_classes = imported.num_classes
    if drop_head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        file_classes = 0
        imported.notes.append("dropped the classifier head: the model outputs pooled features")
    elif num_classes is not None and num_classes != file_classes:
        raise ResnetsError(f"the weights' head has {file_classes} classes, not {num_classes}; omit --num-classes "
                           "to keep it, or pass --drop-head to leave it out")
    model = _create(imported, file_classes, {**imported.options, **options})
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(tensor)
    load_state_dict_checked(model, state, imported.source)
    if imported.class_names is not None and not drop_head:
        if len(imported.class_names) != model.num_classes:  # as model_from_weights refuses it
            raise ResnetsError(f"{imported.source}: {len(imported.class_names)} class names for a head of "
                               f"{model.num_classes} outputs")
        model.class_names = list(imported.class_names)
    if imported.task and not drop_head:  # the head's outputs are sigmoids (multi-label)
        model.task_record = dict(imported.task)
    if imported.preprocessing is not None:
        model.preprocessing = imported.preprocessing
    model.preprocessing = channels_preprocessing(model.preprocessing, model.in_chans)
    return model


def _create(imported: ImportedWeights, num_classes: int, options: dict[str, Any]) -> ResNet:
    """A registered model with overrides, or (a file recording an unregistered architecture) its config."""
    if imported.model_name is not None:
        return build_registered_model(imported.model_name, num_classes=num_classes, in_chans=imported.in_chans,
                                      **options)
    config = ResNetConfig.from_dict({k: v for k, v in options.items() if k not in MODEL_OPTIONS})
    runtime = {k: v for k, v in options.items() if k in MODEL_OPTIONS}
    return ResNet(config, num_classes=num_classes, in_chans=imported.in_chans, **runtime)


def load_model_weights(weights: str | os.PathLike, model_name: str | None = None, num_classes: int | None = None,
                       in_chans: int | None = None, **options: Any) -> ResNet:
    """``create_model(name, weights=...)``: a registered tag (``"imagenet"``) or a file of any format.

    With ``num_classes`` different from the weights' head, the head is replaced by a fresh one
    (fine-tuning); everything else loads strictly. ``in_chans`` (default: the weights' own)
    different from RGB weights' 3 adapts their first convolution (:func:`with_input_channels`).
    """
    if Path(weights).is_file():
        imported = read_weights(weights, model_name=model_name)
    else:
        if model_name is None:
            raise ResnetsError(f"no such weights file: {weights} (a tag like 'imagenet' needs a model name)")
        imported = _pretrained(model_name, str(weights))
    if in_chans is not None and in_chans != imported.in_chans:
        imported = with_input_channels(imported, in_chans)
    model = build_model(imported, **options)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


# The stem's first convolution: a 7x7 or CIFAR 3x3 conv, or the first conv of a deep stem.
INPUT_CONV_KEYS = ("conv1.weight", "conv1.0.weight")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB first convolution ``(out, 3, k, k)`` made to take ``in_chans`` channels, as timm's
    ``adapt_input_conv``: one channel gets the sum of the RGB filters (a gray image then gives
    what the RGB model gives on that image replicated to RGB); N channels repeat the RGB filters
    cyclically, scaled by 3/N so that the activations keep their scale."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ResnetsError(f"only an RGB first convolution can be adapted, got a weight of shape {list(weight.shape)}")
    as_float = weight.float()
    if in_chans == 1:
        adapted = as_float.sum(dim=1, keepdim=True)
    else:
        adapted = as_float.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    return adapted.to(weight.dtype)


def with_input_channels(imported: ImportedWeights, in_chans: int) -> ImportedWeights:
    """``imported`` (RGB weights) for a model of ``in_chans`` input channels (:func:`build_model`
    then adapts the record with :func:`channels_preprocessing`)."""
    key = next((k for k in INPUT_CONV_KEYS if k in imported.state_dict), None)
    if imported.in_chans != 3 or key is None or not isinstance(in_chans, int) or not 1 <= in_chans <= 64:
        raise ResnetsError(f"the weights take {imported.in_chans} input channels, not {in_chans} "
                           "(only RGB weights are adapted, to 1..64 channels)")
    state = {**imported.state_dict, key: adapt_input_conv(imported.state_dict[key], in_chans)}
    return dataclasses.replace(imported, state_dict=state, in_chans=in_chans,
                               notes=[*imported.notes, f"first convolution adapted from 3 to {in_chans} "
                                      "input channels"])


def _pretrained(model_name: str, tag: str) -> ImportedWeights:
    entry = get_pretrained(model_name, tag)
    return ImportedWeights(load_pretrained_state_dict(entry), model_name, entry.source,
                           class_names=list(entry.class_names), preprocessing=entry.preprocessing)
