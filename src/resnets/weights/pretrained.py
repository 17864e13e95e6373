"""Pretrained weights by name: ``create_model("resnet50", weights="imagenet")``.

Entries come from torchvision's weight enums (``IMAGENET1K_V1``, ``IMAGENET1K_V2``), read at
run time so URL, transforms, class names and published accuracy are torchvision's own, not
retyped. ``"imagenet"`` means torchvision's ``DEFAULT`` for that model. torchvision publishes
only the first 8 hex digits of each file's SHA-256 (in the file name); that prefix is what
is checked.

timm's ``*.tv_in1k``/``*.a1_in1k`` tags are not listed: their Hugging Face files' SHA-256 could
not be confirmed offline, and an unchecked download is worse than none.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ResnetsError
from ..models import list_models
from ..preprocessing import Preprocessing
from .hub import cached_download
from .torch_checkpoint import read_torch_checkpoint

DEFAULT_TAG = "imagenet"


@dataclass(frozen=True)
class PretrainedWeights:
    """One downloadable set of weights for a registered model."""

    model_name: str
    tag: str
    url: str
    filename: str
    sha256: str | None
    hash_prefix: str | None
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    accuracy: dict[str, float]
    source: str

    def download(self, progress: bool = True) -> str:
        return str(cached_download(self.url, self.filename, sha256=self.sha256, hash_prefix=self.hash_prefix,
                                   progress=progress))


def _from_torchvision(model_name: str, tag: str, enum_member: Any) -> PretrainedWeights:
    meta, transforms = enum_member.meta, enum_member.transforms()
    filename = enum_member.url.rsplit("/", 1)[-1]
    prefix = re.search(r"-([0-9a-f]{8,})\.pth$", filename)
    return PretrainedWeights(
        model_name=model_name, tag=tag, url=enum_member.url, filename=filename, sha256=None,
        hash_prefix=prefix.group(1) if prefix else None,
        preprocessing=Preprocessing(transforms.crop_size[0], transforms.resize_size[0], transforms.interpolation.value,
                                    tuple(transforms.mean), tuple(transforms.std)),
        class_names=tuple(meta["categories"]),
        accuracy={k: float(v) for k, v in meta["_metrics"]["ImageNet-1K"].items()},
        source=f"torchvision {type(enum_member).__name__}.{enum_member.name} ({meta.get('recipe', '')})")


@functools.cache
def _registry() -> dict[tuple[str, str], PretrainedWeights]:
    from torchvision.models import get_model_weights, list_models as tv_models

    entries: dict[tuple[str, str], PretrainedWeights] = {}
    for name in set(list_models()) & set(tv_models()):
        enum = get_model_weights(name)
        for member in enum:
            entries[(name, member.name)] = _from_torchvision(name, member.name, member)
        default = entries[(name, enum.DEFAULT.name)]
        entries[(name, DEFAULT_TAG)] = dataclasses.replace(default, tag=DEFAULT_TAG)
    return entries


def list_pretrained(model_name: str | None = None) -> list[PretrainedWeights]:
    """Every registered weights entry (of one model, if named), ``imagenet`` aliases included."""
    return [w for (name, _), w in sorted(_registry().items()) if model_name in (None, name)]


def get_pretrained(model_name: str, tag: str = DEFAULT_TAG) -> PretrainedWeights:
    entry = _registry().get((model_name, tag))
    if entry is None:
        tags = sorted(t for (n, t) in _registry() if n == model_name)
        hint = f"choose from {', '.join(tags)}" if tags else "no pretrained weights are registered for it"
        raise ResnetsError(f"no pretrained weights {tag!r} for {model_name}; {hint}")
    return entry


def load_pretrained_state_dict(entry: PretrainedWeights, progress: bool = True) -> dict[str, torch.Tensor]:
    return read_torch_checkpoint(entry.download(progress=progress))
