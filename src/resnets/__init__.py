"""resnets: the ResNet family for PyTorch.

Build (:func:`create_model`), load anything (:func:`load_model`: run directory, weights file of
any format, ``NAME`` or ``NAME:TAG``), inspect (:func:`summary`), feed (:class:`Preprocessing`,
on every model as ``model.preprocessing``), speed up (:func:`optimize_for_inference`), explain
(:func:`explain_image`), embed and search (:func:`embed_dataset`, :func:`search`), and more
through the ``resnets`` command line.

The names are imported on first use (PEP 562), so ``import resnets`` and the command line start
without loading torch: ``resnets --help`` is instant, and Ctrl-C while torch loads is caught by
the command line like any other.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "ResnetsError": "errors",
    "ResNet": "models", "ResNetConfig": "models", "get_model_spec": "models", "list_models": "models",
    "create_model": "factory",
    "Preprocessing": "preprocessing",
    "load_model": "factory",
    "save_weights": "weights", "load_weights_file": "weights",
    "decode_predictions": "weights.imagenet",
    "summary": "summarize",
    "optimize_for_inference": "inference",
    "load_for_inference": "predict",
    "explain_image": "explain", "Explanation": "explain",
    "embed_dataset": "embed", "search": "embed", "load_index": "embed", "EmbeddingIndex": "embed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resnets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
