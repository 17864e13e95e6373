"""``resnets convert``: a weights file of any supported format -> the project's format (file -> file).

The file is loaded like any other (:mod:`resnets.weights.load`) and the model written with
:func:`save_weights`, recording its name, architecture, class names and preprocessing, so
``create_model(weights=DST)`` alone rebuilds it.
"""

from __future__ import annotations

import os

from ..fileio import check_output_is_not_input
from ..models import ResNet
from .format import save_weights
from .load import SOURCES, ImportedWeights, build_model, read_weights

__all__ = ["SOURCES", "convert"]


def convert(src: str | os.PathLike, dst: str | os.PathLike, source: str = "auto", model_name: str | None = None,
            num_classes: int | None = None, drop_head: bool = False,
            caffemodel: str | os.PathLike | None = None) -> tuple[ResNet, ImportedWeights]:
    """Convert ``src`` (any supported format) to a self-describing safetensors file at ``dst``
    (which must not be ``src`` or ``caffemodel``: refused before anything is read)."""
    check_output_is_not_input(dst, src, caffemodel)
    imported = read_weights(src, source, model_name, caffemodel, num_classes)
    model = build_model(imported, num_classes=num_classes, drop_head=drop_head)
    save_weights(dst, model, source=imported.source, extra={"notes": imported.notes} if imported.notes else None)
    return model, imported
