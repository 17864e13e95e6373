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
from safetensors.torch import load_file, save
from torch import nn

from ..errors import ResnetsError, first_line
from ..fileio import atomic_write_bytes
from ..models import ResNet, ResNetConfig, get_model_spec, list_models
from ..multilabel import task_of
from ..preprocessing import Preprocessing
from ..textparse import load_json

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
    preprocessing: Preprocessing | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "model_name": self.model_name, "config": self.config,
                "model_args": self.model_args, "class_names": self.class_names,
                "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
                "source": self.source, "extra": self.extra}


def model_description(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model``: its registry name, architecture config and constructor arguments."""
    if not isinstance(model, ResNet):
        return {"model_name": getattr(model, "model_name", None), "config": None, "model_args": {}}
    args = {"num_classes": model.num_classes, "in_chans": model.in_chans, "drop_rate": model.drop_rate}
    return {"model_name": model.model_name, "config": model.config.to_dict(), "model_args": args}


def save_weights(path: str | os.PathLike, model: nn.Module, *, class_names: list[str] | None = None,
                 preprocessing: Preprocessing | None = None, source: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and its record atomically; returns the path.

    ``class_names`` and ``preprocessing`` default to the model's own (``model.class_names``,
    ``model.preprocessing``), so a model loaded from a file is saved with what it was loaded with.
    """
    data = weights_bytes(model, class_names=class_names, preprocessing=preprocessing, source=source, extra=extra,
                         name=str(path))
    atomic_write_bytes(path, data)
    return Path(path)


def weights_bytes(model: nn.Module, *, class_names: list[str] | None = None,
                  preprocessing: Preprocessing | None = None, source: str | None = None,
                  extra: dict[str, Any] | None = None, name: str = "weights") -> bytes:
    """The bytes :func:`save_weights` writes (for a caller that already holds a temporary file).

    Serialised in memory and written by Python, so a full disk is an ``OSError`` (ENOSPC) that
    the CLI reports in one line, not safetensors' own error type.
    """
    class_names = class_names if class_names is not None else getattr(model, "class_names", None)
    preprocessing = preprocessing if preprocessing is not None else getattr(model, "preprocessing", None)
    record = WeightsFile(state_dict={}, class_names=_checked_class_names(class_names, model, name),
                         preprocessing=preprocessing, source=source, extra=_with_task(model, extra),
                         **model_description(model))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save(tensors, metadata={METADATA_KEY: json.dumps(record.metadata())})


def load_weights_file(path: str | os.PathLike) -> WeightsFile:
    """Read a weights file written by :func:`save_weights` (or any plain safetensors file).

    The metadata is checked field by field: a file is untrusted until it has been.
    """
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"no such weights file: {path}" if not path.exists() else f"{path} is not a file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ResnetsError(f"{path} is not a readable safetensors file ({str(error).splitlines()[0]})") from None
    meta = _parse_metadata(header.get(METADATA_KEY), path)
    return WeightsFile(state_dict=tensors, **meta)


def _parse_metadata(text: str | None, path: Path) -> dict[str, Any]:
    """The ``resnets`` metadata of a file, each field type-checked."""
    if text is None:
        return {}
    meta = load_json(text, f"{path}: its metadata")
    if not isinstance(meta, dict):
        raise ResnetsError(f"{path}: its metadata is not a JSON object")
    types = {"model_name": str, "config": dict, "model_args": dict, "class_names": list,
             "preprocessing": dict, "source": str, "extra": dict}
    parsed: dict[str, Any] = {}
    for key, kind in types.items():
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise ResnetsError(f"{path}: metadata field {key} should be a {kind.__name__}, got {type(value).__name__}")
        parsed[key] = value
    if "class_names" in parsed and not all(isinstance(c, str) for c in parsed["class_names"]):
        raise ResnetsError(f"{path}: metadata class_names must be strings")
    if "preprocessing" in parsed:
        try:
            parsed["preprocessing"] = Preprocessing.from_dict(parsed["preprocessing"])
        except ResnetsError as error:
            raise ResnetsError(f"{path}: {error}") from None
    return parsed


def _checked_class_names(class_names: list[str] | None, model: nn.Module, where: str) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    outputs = getattr(model, "num_classes", None)
    if outputs is not None and outputs != len(names):
        raise ResnetsError(f"{where}: {len(names)} class names for a head of {outputs} outputs")
    return names


def model_from_weights(path: str | os.PathLike) -> tuple[ResNet, WeightsFile]:
    """Rebuild the model a weights file describes and load its tensors (strictly).

    The recorded architecture is validated and its size compared with the tensors the file
    holds before anything is allocated, so a doctored record cannot make the tool allocate
    more than the file itself.
    """
    record = load_weights_file(path)
    if record.config is None:
        raise ResnetsError(f"{path} does not record its architecture; pass a model name to load it into")
    config, args = checked_architecture(record, str(path))
    model = ResNet(config, **args)
    attach_record(model, record)
    load_state_dict_checked(model, record.state_dict, str(path))
    return model, record


def checked_architecture(record: WeightsFile, source: str) -> tuple[ResNetConfig, dict[str, Any]]:
    """The recorded config and model arguments, validated, and no larger than the file's tensors."""
    try:
        config = ResNetConfig.from_dict(record.config or {})
        args = _model_args(record.model_args)
    except ResnetsError as error:
        raise ResnetsError(f"{source}: {error}") from None
    _check_size_against_file(config, args, record.state_dict, source)
    return config, args


def _with_task(model: nn.Module, extra: dict[str, Any] | None) -> dict[str, Any]:
    """``extra`` with the model's task record (multi-label and its threshold) when it has one."""
    return {**(getattr(model, "task_record", None) or {}), **(extra or {})}


def attach_record(model: ResNet, record: WeightsFile) -> ResNet:
    """Give ``model`` the name, class names, preprocessing and task a weights file records."""
    model.task_record = task_of(record.extra, record.source or "weights file")
    if record.model_name:
        model.model_name = record.model_name
    if record.class_names is not None:
        model.class_names = _checked_class_names(record.class_names, model, record.source or "weights file")
    if record.preprocessing is not None:
        model.preprocessing = record.preprocessing
    elif model.model_name in list_models():
        model.preprocessing = get_model_spec(model.model_name).preprocessing
    return model


def _model_args(args: dict[str, Any]) -> dict[str, Any]:
    allowed = {"num_classes": int, "in_chans": int, "drop_rate": (int, float)}
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ResnetsError(f"unknown model argument(s) {', '.join(unknown)}")
    for key, kind in allowed.items():
        if key in args and (isinstance(args[key], bool) or not isinstance(args[key], kind)):
            raise ResnetsError(f"model argument {key} has the wrong type ({args[key]!r})")
    if not 0 <= args.get("num_classes", 0) <= MAX_CLASSES or not 1 <= args.get("in_chans", 3) <= 64:
        raise ResnetsError(f"model arguments out of range ({args})")
    return dict(args)


MAX_CLASSES = 1_000_000


def _check_size_against_file(config: ResNetConfig, args: dict[str, Any], tensors: dict[str, torch.Tensor],
                             source: str) -> None:
    """Refuse a record whose model would hold more numbers than the file carries."""
    try:
        with torch.device("meta"):
            shapes = ResNet(config, **args)
    except (ValueError, TypeError) as error:  # a combination the blocks refuse (groups on a BasicBlock...)
        raise ResnetsError(f"{source}: its architecture record cannot be built ({first_line(error)})") from None
    needed = sum(t.numel() for t in shapes.state_dict().values())
    present = sum(t.numel() for t in tensors.values())
    if needed > present:
        raise ResnetsError(f"{source} records a model of {needed:,} numbers but holds {present:,}; "
                           "its architecture record does not fit its tensors")


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
