"""Training recipes as YAML files: ``resnets train --config FILE|NAME``, ``--print-config``.

A recipe maps ``resnets train`` flags (``lr``, ``batch-size`` or ``batch_size``...) to values;
the command line overrides it. The keys and values are checked here against the train
parser's own options (the number rules of :data:`resnets.train.config.NUMBER_RULES`, the
choices, on/off flags), so a recipe holds exactly what the command line could say. Shipped
recipes live in ``resnets/recipes/*.yaml`` and are addressed by their name.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ResnetsError
from .config import NUMBER_RULES

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
# Options of the train parser that are about the recipe itself, not the run.
_NOT_SETTINGS = ("help", "config", "print_config")
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


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a recipe may use -> its parser action: flag names (``--no-progress`` as
    ``no-progress`` and ``no_progress``) and destinations (``progress``)."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in _NOT_SETTINGS or not action.option_strings:
            continue
        keys[action.dest] = action
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = keys[option[2:].replace("-", "_")] = action
    return keys


def _flag_name(action: argparse.Action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))[2:]


def _inverted(action: argparse.Action, key: str) -> bool:
    """Whether ``key: true`` means ``dest = False`` (``no-progress: true``, ``no-stream: true``)."""
    negative = isinstance(action, (argparse._StoreFalseAction, argparse.BooleanOptionalAction))
    return negative and key.replace("_", "-").startswith("no-") and f"--{key.replace('_', '-')}" in action.option_strings


def _is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction)


def _checked(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """``value`` for ``action``'s destination, or a one-line error naming the key."""
    def bad(why: str) -> ResnetsError:
        return ResnetsError(f"{where}: {key}: {why}, got {value!r}")

    if value is None:
        if action.default is None:
            return None
        raise bad("needs a value (null is not allowed here)")
    if _is_switch(action):
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return not value if _inverted(action, key) else value
    if action.dest in NUMBER_RULES:
        problem = NUMBER_RULES[action.dest].problem(value)
        if problem is not None:
            raise ResnetsError(f"{where}: {key}: {problem}")
        return float(value) if NUMBER_RULES[action.dest].kind is float else value
    if not isinstance(value, str):
        raise bad("must be text")
    if action.choices is not None and value not in action.choices:
        raise bad(f"must be one of {', '.join(action.choices)}")
    return value


def read_recipe(name_or_path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The settings a recipe file holds, as ``{dest: value}`` of ``parser``, each checked."""
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
    options, values = _options(parser), {}
    for key, value in document.items():
        action = options.get(key) if isinstance(key, str) else None
        if action is None:
            raise ResnetsError(f"{path}: {key!r} is not a flag of `resnets train` (see resnets train --help)")
        values[action.dest] = _checked(action, key, value, str(path))
    return values


def recipe_yaml(values: dict[str, Any], parser: argparse.ArgumentParser) -> str:
    """``values`` (parsed train arguments) as a recipe: one key per flag, under its flag name;
    reading it back with :func:`read_recipe` gives the same settings."""
    import yaml

    document = {}
    for action in parser._actions:
        if action.dest in _NOT_SETTINGS or not action.option_strings or action.dest not in values:
            continue
        key, value = _flag_name(action), values[action.dest]
        document[key] = not value if _inverted(action, key) else value
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
