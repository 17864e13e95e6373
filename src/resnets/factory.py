"""Models from names, files and tags; it sits above both :mod:`resnets.models` and
:mod:`resnets.weights` (as timm's ``_factory.py`` above its registry).

``create_model``: a registered model by name, with weights from any source. ``load_model``:
which model a command means, the one resolver behind every ``MODEL`` / ``CHECKPOINT`` argument.

A reference is, in this order:

1. a run directory (its ``weights.safetensors``);
2. a weights file of any supported format (the project's safetensors, a torchvision/timm
   checkpoint, Keras, Paddle), read and converted in memory; or the project's own ONNX file
   (``resnets export``: its record in the metadata), which comes back as an
   :class:`~resnets.weights.onnx.OnnxModel` run by onnxruntime (no parameters, no gradients);
3. ``NAME:TAG``: a registered model with pretrained weights (``resnet50:IMAGENET1K_V2``,
   ``resnet18:imagenet``), from the download cache;
4. ``NAME``: a registered model. Commands that need trained weights (``predict``,
   ``evaluate``, ``explain``, ``embed``, ``serve``) take its ``imagenet`` weights; commands
   that only need the architecture (``summary``, ``export``, ``bench``) build it freshly
   initialised, as ``torchvision.models.resnet50()`` does.

The model comes back with its record attached: ``model_name``, ``class_names`` and
``preprocessing`` (see :mod:`resnets.preprocessing`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from .errors import ResnetsError
from .models import ResNet, list_models
from .models.builder import build_registered_model
from .weights.load import load_model_weights
from .weights.onnx import OnnxModel, is_onnx_path, onnx_file_refused, read_onnx_model


def create_model(name: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
                 weights: str | None = None, **options: Any) -> ResNet:
    """Build a registered model by name, optionally with weights.

    Args:
        name: a name from :func:`resnets.models.list_models`; may be left out when ``weights``
            is a file that records its model (``resnets convert`` output) or whose shapes identify it.
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
        return load_model_weights(weights, name, num_classes=num_classes, in_chans=in_chans, **options)
    if name is None:
        raise ResnetsError("create_model needs a model name, or weights= a file that records one")
    return build_registered_model(name, num_classes=num_classes, in_chans=in_chans, **options)


RUN_WEIGHTS = "weights.safetensors"


def weights_path(reference: str | os.PathLike) -> Path | None:
    """The weights file ``reference`` names on disk (a run directory's weights), or None."""
    path = Path(reference)
    if path.is_dir():
        weights = path / RUN_WEIGHTS
        if not weights.is_file():
            raise ResnetsError(f"{path} is a directory without {RUN_WEIGHTS}; is it a finished run directory?")
        return weights
    if path.exists():
        if not path.is_file():
            raise ResnetsError(f"{path} is not a regular file")
        return path
    return None


def split_tag(reference: str) -> tuple[str, str | None]:
    """``"resnet50:IMAGENET1K_V2"`` -> ``("resnet50", "IMAGENET1K_V2")``; no tag -> None."""
    name, sep, tag = reference.partition(":")
    return name, (tag or None) if sep else None


def load_model(reference: str | os.PathLike, *, pretrained: bool = True, onnx: bool = False) -> ResNet | OnnxModel:
    """The model ``reference`` names, in eval mode (see the module docstring for the forms).

    ``pretrained``: what a bare registered name means: its ``imagenet`` weights (True) or a
    freshly initialised model (False). ``onnx``: whether the caller can run the project's ONNX
    file (inference only: it has no parameters, layers or gradients); otherwise such a file is
    refused in one line, so that no command summarises, exports, embeds or trains a graph it
    cannot look into.
    """
    if str(reference) == "":
        raise ResnetsError("no model given: pass a run directory, a weights or ONNX file, or a model name")
    path = weights_path(reference)
    if path is not None and is_onnx_path(path):
        if not onnx:
            raise onnx_file_refused(reference)
        return read_onnx_model(path).eval()
    if path is not None:
        return create_model(weights=str(path)).eval()
    name, tag = split_tag(str(reference))
    if name not in list_models():
        raise ResnetsError(_not_found(str(reference)))
    if tag is None and not pretrained:
        return create_model(name).eval()
    return create_model(name, weights=tag or "imagenet").eval()


def _not_found(reference: str) -> str:
    close = difflib.get_close_matches(split_tag(reference)[0], list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see `resnets models` and `resnets weights list`)"
    return f"{reference} is neither a file, a run directory nor a model name{hint}"
