"""``create_model``: a registered model by name, with weights from any source; it sits above both
:mod:`resnets.models` and :mod:`resnets.weights` (as timm's ``_factory.py`` above its registry)."""

from __future__ import annotations

from typing import Any

from .errors import ResnetsError
from .models import ResNet
from .models.builder import build_registered_model
from .weights.load import load_model_weights


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
