"""A registered model by name, freshly initialised, with its record. Weights come through
:func:`resnets.factory.create_model`, above the weights loaders (which build their models here)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ResnetsError
from ..preprocessing import channels_preprocessing
from .registry import get_model_spec
from .resnet import ResNet, ResNetConfig

# Runtime options that every model accepts, beside the fields of ResNetConfig.
MODEL_OPTIONS = ("zero_init_residual", "drop_path_rate", "drop_rate")


def build_registered_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                           **options: Any) -> ResNet:
    """The registered model ``name``, its spec's config overridden by ``options`` (see
    :func:`resnets.factory.create_model`), with ``model_name`` and ``preprocessing`` set."""
    spec = get_model_spec(name)
    config_fields = {f.name for f in dataclasses.fields(ResNetConfig)}
    unknown = set(options) - config_fields - set(MODEL_OPTIONS)
    if unknown:
        allowed = ", ".join(sorted(config_fields | set(MODEL_OPTIONS)))
        raise ResnetsError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; allowed: {allowed}")
    overrides = {k: v for k, v in options.items() if k in config_fields}
    runtime = {k: v for k, v in options.items() if k in MODEL_OPTIONS}
    if "layers" in overrides:
        overrides["layers"] = tuple(overrides["layers"])
    config = dataclasses.replace(spec.config, **overrides)
    classes = spec.num_classes if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    model = ResNet(config, num_classes=classes, in_chans=in_chans, **runtime)
    model.model_name = name
    model.preprocessing = channels_preprocessing(spec.preprocessing, in_chans)  # one value per channel
    return model
