"""Per-class weights of the cross-entropy loss, for imbalanced classes (``--class-weights``).

``auto``: inverse frequency, ``n / (classes * count)`` (sklearn's "balanced"); ``effective``:
Cui et al. 2019, ``(1 - beta) / (1 - beta ** count)``; a JSON file: ``{"class name": weight}``
(classes it leaves out weigh 1). Weights are scaled to a mean of 1 over the classes, so the
loss keeps its usual size and the learning rate its meaning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ResnetsError
from ..textparse import MAX_TEXT_BYTES, load_json, read_limited

KINDS = ("auto", "effective")


def check_class_weights(spec: str | None) -> None:
    """Refuse (one line) a ``--class-weights`` that is neither a kind nor an existing file."""
    if spec is None or spec in KINDS:
        return
    if not Path(spec).is_file():
        raise ResnetsError(f"--class-weights must be auto, effective or a JSON file of {{class: weight}}; "
                           f"{spec!r} is none of these")


def class_weights(spec: str | None, labels: Sequence[int] | torch.Tensor, class_names: list[str],
                  beta: float = 0.999) -> torch.Tensor | None:
    """The loss weight of each class (float32, mean 1), or None for ``spec`` None."""
    if spec is None:
        return None
    check_class_weights(spec)
    if spec in KINDS:
        counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=len(class_names)).double()
        present = counts > 0
        if spec == "auto":
            weights = counts.sum() / (present.sum() * counts.clamp(min=1))
        else:
            weights = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts.clamp(min=1)))
        weights = torch.where(present, weights, 0.0)  # an absent class has no loss to weigh
    else:
        weights = _weights_file(Path(spec), class_names)
    return (weights * len(weights) / weights.sum()).float()


def _weights_file(path: Path, class_names: list[str]) -> torch.Tensor:
    try:
        given = load_json(read_limited(path, MAX_TEXT_BYTES), f"--class-weights {path}",
                          invalid="not a readable JSON file")
    except OSError as error:
        raise ResnetsError(f"--class-weights {path}: not a readable JSON file ({str(error).splitlines()[0]})") \
            from None
    if not isinstance(given, dict):
        raise ResnetsError(f"--class-weights {path}: a JSON object {{class: weight}} was expected")
    unknown = sorted(set(given) - set(class_names))
    if unknown:
        raise ResnetsError(f"--class-weights {path} names {len(unknown)} class(es) the data lacks: "
                           f"{', '.join(map(repr, unknown[:5]))}")
    weights = torch.ones(len(class_names), dtype=torch.float64)
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ResnetsError(f"--class-weights {path}: the weight of {name!r} must be a number >= 0, "
                               f"got {value!r}")
        weights[class_names.index(name)] = value
    if weights.sum() <= 0:
        raise ResnetsError(f"--class-weights {path}: every weight is 0")
    return weights
