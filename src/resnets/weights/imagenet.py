"""The 1000 ImageNet-1k classes (index, WordNet id, name) and Keras-style ``decode_predictions``.

The table ships with the package (``imagenet_classes.json``): WordNet ids in the standard
order of the ILSVRC-2012 class index, names as torchvision spells them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import NamedTuple

import torch

from ..errors import ResnetsError
from ..metrics import probabilities, top_classes


class ImageNetClass(NamedTuple):
    index: int
    wnid: str
    name: str


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1000 classes in label order."""
    rows = json.loads((resources.files(__package__) / "imagenet_classes.json").read_text())
    return tuple(ImageNetClass(row["index"], row["wnid"], row["name"]) for row in rows)


def imagenet_class_names() -> list[str]:
    return [c.name for c in imagenet_classes()]


def decode_predictions(scores: torch.Tensor, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Per image, the ``top`` classes as ``(wnid, name, probability)``, most likely first.

    ``scores`` is a (batch, 1000) tensor of logits or probabilities: rows that are not already
    probability distributions are passed through a softmax.
    """
    scores = torch.as_tensor(scores).detach().float().cpu()
    if scores.ndim == 1:
        scores = scores.unsqueeze(0)
    classes = imagenet_classes()
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ResnetsError(f"decode_predictions expects (batch, {len(classes)}) scores, got {tuple(scores.shape)}")
    if not 1 <= top <= len(classes):
        raise ResnetsError(f"top must be in 1..{len(classes)}, got {top}")
    is_prob = bool((scores >= 0).all()) and torch.allclose(scores.sum(1), torch.ones(len(scores)), atol=1e-3)
    probs = scores if is_prob else probabilities(scores)
    return [[(classes[row["index"]].wnid, row["class"], float(row["probability"])) for row in rows]
            for rows in top_classes(probs, [c.name for c in classes], top)]
