"""The one weights format the project writes: safetensors tensors plus JSON metadata.

The metadata (stored under the ``resnets`` key of the safetensors header) records everything
needed to rebuild and use the model without guessing: the model name, its architecture
config and arguments, class names, preprocessing and where the weights came from. Loading
never unpickles anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ResnetsError
from ..fileio import atomic_path
from ..models import ResNet, ResNetConfig

FORMAT_VERSION = 1
METADATA_KEY = "resnets"


@dataclass
class WeightsFile:
    """A loaded weights file: tensors and what the metadata says about them."""

    state_dict: dict[str, torch.Tensor]
    model_name: str | None = None
    config: dict[str, Any] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "model_name": self.model_name, "config": self.config,
                "model_args": self.model_args, "class_names": self.class_names,
                "preprocessing": self.preprocessing, "source": self.source, "extra": self.extra}


def model_description(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model``: its registry name, architecture config and constructor arguments."""
    if not isinstance(model, ResNet):
        return {"model_name": getattr(model, "model_name", None), "config": None, "model_args": {}}
    args = {"num_classes": model.num_classes, "in_chans": model.in_chans, "drop_rate": model.drop_rate}
    return {"model_name": getattr(model, "model_name", None), "config": model.config.to_dict(),
            "model_args": args}


def save_weights(path: str | os.PathLike, model: nn.Module, *, class_names: list[str] | None = None,
                 preprocessing: dict[str, Any] | None = None, source: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically; returns the path."""
    description = model_description(model)
    record = WeightsFile(state_dict={}, class_names=class_names, preprocessing=preprocessing,
                         source=source, extra=extra or {}, **description)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(record.metadata())})
    return Path(path)


def load_weights_file(path: str | os.PathLike) -> WeightsFile:
    """Read a weights file written by :func:`save_weights` (or any plain safetensors file)."""
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"no such weights file: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ResnetsError(f"{path} is not a readable safetensors file ({error})") from None
    meta = json.loads(header.get(METADATA_KEY, "{}"))
    meta.pop("format_version", None)
    return WeightsFile(state_dict=tensors, **{k: v for k, v in meta.items() if v is not None})


def model_from_weights(path: str | os.PathLike) -> tuple[ResNet, WeightsFile]:
    """Rebuild the model a weights file describes and load its tensors (strictly)."""
    record = load_weights_file(path)
    if record.config is None:
        raise ResnetsError(f"{path} does not record its architecture; pass a model name to load it into")
    config = dict(record.config)
    config["layers"], config["widths"] = tuple(config["layers"]), tuple(config["widths"])
    model = ResNet(ResNetConfig(**config), **record.model_args)
    if record.model_name:
        model.model_name = record.model_name
    load_state_dict_checked(model, record.state_dict, str(path))
    return model, record


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose failure names the file and the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong_shape:
        name = getattr(model, "model_name", type(model).__name__)
        parts = []
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} shape mismatch(es), e.g. {k}: file "
                         f"{tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise ResnetsError(f"{source} does not fit {name}: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)
