"""Training recipes as YAML files: ``resnets train --config FILE|NAME``, ``--print-config``.

A recipe maps ``resnets train`` flags (``lr``, ``batch-size`` or ``batch_size``...) to values;
the command line overrides it. The keys and values are checked against the settings' one
declaration (:class:`resnets.train.config.TrainConfig`: number rules, choices, on/off flags), so a
recipe holds exactly what the command line could say. Shipped
recipes live in ``resnets/recipes/*.yaml`` and are addressed by their name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ResnetsError
from ..settings import recipe_values, settings_yaml
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
    import yaml

    path = recipe_path(name_or_path)
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ResnetsError(f"{path}: larger than {MAX_RECIPE_BYTES} bytes; not a recipe")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.context_mark or error.problem_mark  # the context: where an unclosed [ or " began
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ResnetsError(f"{path}: not valid YAML{line}: {error.problem or error.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ResnetsError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
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
