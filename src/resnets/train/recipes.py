"""Training recipes as YAML files: ``resnets train --config FILE|NAME``, ``--print-config``.

A recipe maps ``resnets train`` flags (``lr``, ``batch-size`` or ``batch_size``...) to values,
checked as the flags are; the command line overrides it. Shipped recipes live in
``resnets/recipes/*.yaml`` and are addressed by their name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ResnetsError
from ..settings import recipe_values, settings_yaml
from ..textparse import load_yaml, read_limited
from .config import TrainConfig

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
MAX_RECIPE_BYTES = 1 << 20


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``--config NAME``)."""
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """The file ``--config`` names: an existing path, else a shipped recipe's name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and shipped.is_file():
        return shipped
    raise ResnetsError(f"--config {name_or_path}: no such file and no shipped recipe of that name "
                       f"(shipped: {', '.join(list_recipes())})")


def read_recipe(name_or_path: str, command: str = "train") -> dict[str, Any]:
    """The settings a recipe file holds, as ``{field: value}`` of :class:`TrainConfig`, each checked."""
    path = recipe_path(name_or_path)
    document = load_yaml(read_limited(path, MAX_RECIPE_BYTES), str(path), max_bytes=MAX_RECIPE_BYTES)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ResnetsError(f"{path}: a recipe is a mapping of train flags to values, "
                           f"found {type(document).__name__}")
    return recipe_values(TrainConfig, document, str(path), command)


def recipe_yaml(values: dict[str, Any]) -> str:
    """``values`` (parsed train arguments) as a recipe: one key per flag, under its flag name;
    reading it back with :func:`read_recipe` gives the same settings."""
    return settings_yaml(values, TrainConfig)
