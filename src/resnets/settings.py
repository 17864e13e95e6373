"""Settings declared once: a dataclass field says a setting's name, type, default, help, number
rule and choices, and everything else is generated from it.

:func:`setting` declares a field (``lr: float | None = setting(None, "peak rate", rule=...)``).
From the dataclass, :func:`add_arguments` builds the argparse options, :func:`check_settings`
validates an instance (the Python API, a resumed ``config.json``), :func:`recipe_values` checks a
YAML recipe's keys and values, and :func:`settings_yaml` prints the settings as such a recipe.
(Why not jsonargparse or tyro: see ARCHITECTURE.md.)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .errors import ResnetsError

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Bound:
    """The allowed values of one numeric setting: its type and range, finite always."""

    kind: type                  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False      # low itself excluded
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed ("must be ..."), or None if it is."""
        wanted = "an integer" if self.kind is int else "a finite number"
        ok_type = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or \
                (isinstance(value, float) and not math.isfinite(value)) or \
                (self.low is not None and (value < self.low or (self.low_open and value == self.low))) or \
                (self.high is not None and (value > self.high or (self.high_open and value == self.high))):
            return f"must be {wanted}{self._range()}, got {value!r}"
        return None

    def _range(self) -> str:
        low, high = (f"{v}" if self.kind is int or v is None else f"{v:g}" for v in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {low}"
        return "" if self.high is None else f" {'<' if self.high_open else '<='} {high}"


FRACTION_OPEN = Bound(float, 0, 1, low_open=True, high_open=True)
UNIT = Bound(float, 0, 1)
DECAY = Bound(float, 0, 1, high_open=True)


@dataclass(frozen=True)
class Setting:
    """What a field's metadata says about it as a setting (see :func:`setting`)."""

    help: str | None = None
    rule: Bound | None = None            # numbers: type and range
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    const: Any = None                    # value of the bare flag (``--ema`` alone means 0.999)
    both_ways: bool = False              # on/off flag as --x / --no-x (BooleanOptionalAction)
    flag: bool = True                    # a command-line flag (False: Python API and files only)
    commands: tuple[str, ...] = ()       # other commands that take it too ("lr-find")


def setting(default: Any = _MISSING, help: str | None = None, *, default_factory: Any = _MISSING,
            **options: Any) -> Any:
    """A dataclass field declared as a setting; ``options`` are :class:`Setting`'s fields."""
    metadata = {"setting": Setting(help=help, **options)}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> Iterator[tuple[dataclasses.Field, Setting, type]]:
    """(field, its Setting, its value type) of every declared setting of ``cls``, in order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("setting")
        if spec is not None:
            yield f, spec, _value_type(hints[f.name])


def _value_type(hint: Any) -> type:
    """``int | None`` -> int; ``bool`` -> bool; a mapping -> dict."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    base = typing.get_origin(options[0]) or options[0]
    return base if isinstance(base, type) else object


def flag_name(f: dataclasses.Field, spec: Setting) -> str:
    """The field's command-line flag without dashes: ``no-progress`` for a setting on by default."""
    name = f.name.replace("_", "-")
    inverted = f.default is True and not spec.both_ways
    return f"no-{name}" if inverted else name


def number_rules(cls: type) -> dict[str, Bound]:
    """Every numeric setting's rule."""
    return {f.name: spec.rule for f, spec, _ in declared(cls) if spec.rule is not None}


def problem(f: dataclasses.Field, spec: Setting, kind: type, value: Any) -> str | None:
    """Why ``value`` cannot be field ``f``'s value (``must be ...``), or None."""
    if value is None:
        return None if f.default is None or f.default is _MISSING else "needs a value (null is not allowed here)"
    if spec.rule is not None:
        return spec.rule.problem(value)
    if kind is bool and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if kind is str and not isinstance(value, str):
        return f"must be text, got {value!r}"
    if kind is dict and not isinstance(value, dict):
        return f"must be a mapping, got {value!r}"
    if spec.choices is not None and value not in spec.choices:
        return f"must be one of {', '.join(spec.choices)}, got {value!r}"
    return None


def check_settings(instance: Any) -> None:
    """One-line :class:`ResnetsError` for the first declared setting whose value breaks its rule."""
    for f, spec, kind in declared(type(instance)):
        why = problem(f, spec, kind, getattr(instance, f.name))
        if why is not None:
            raise ResnetsError(f"--{f.name.replace('_', '-')} {why}")


def parse_arg(name: str, rule: Bound) -> Callable[[str], int | float]:
    """An argparse ``type=``: parses the text as ``rule``'s kind and applies the rule."""
    def parse(text: str) -> int | float:
        try:
            value = rule.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if rule.kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        why = rule.problem(value)
        if why is not None:
            raise argparse.ArgumentTypeError(why)
        return value

    parse.__name__ = name
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type, command: str | None = None,
                  required: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """The options of ``cls``'s settings (those of ``command`` only, when given), defaults shown in
    the help. A parser made with ``argument_default=argparse.SUPPRESS`` leaves out what is not
    given, so that the caller can layer defaults, a recipe and the flags itself."""
    suppress = parser.argument_default is argparse.SUPPRESS
    for f, spec, kind in declared(cls):
        if not spec.flag or f.name in skip or (command is not None and command not in spec.commands):
            continue
        name = flag_name(f, spec)
        options: dict[str, Any] = {"dest": f.name, "help": _help(f, spec, kind)}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction if spec.both_ways else \
                "store_false" if name.startswith("no-") else "store_true"
        else:
            if spec.rule is not None:
                options["type"] = parse_arg(f.name, spec.rule)
            options.update(choices=spec.choices, metavar=spec.metavar)
            if spec.const is not None:
                options.update(nargs="?", const=spec.const)
        if f.name in required:
            options["required"] = True
        elif f.default is not _MISSING and not suppress:
            options["default"] = f.default
        parser.add_argument(f"--{name}", **options)


def _help(f: dataclasses.Field, spec: Setting, kind: type) -> str | None:
    """The help text with the default appended (not for off switches, None or choices shown)."""
    text = spec.help or ""
    shown = f.default not in (None, False, True, _MISSING) and "default" not in text
    if shown:
        text = f"{text} (default: {f.default})".strip()
    return text or None


def recipe_keys(cls: type) -> dict[str, tuple[dataclasses.Field, Setting, type, bool]]:
    """Every key a recipe may use -> (field, setting, type, inverted): flag names with dashes or
    underscores (``no-progress``, ``no_progress``: inverted) and field names (``progress``)."""
    keys = {}
    for f, spec, kind in declared(cls):
        if not spec.flag:
            continue
        name = flag_name(f, spec)
        keys[f.name] = (f, spec, kind, False)
        for key in {name, *([f"no-{f.name.replace('_', '-')}"] if spec.both_ways else [])}:
            inverted = key.startswith("no-") and not f.name.startswith("no_")
            keys[key] = keys[key.replace("-", "_")] = (f, spec, kind, inverted)
    return keys


def recipe_values(cls: type, document: dict, where: str, command: str) -> dict[str, Any]:
    """A recipe's ``{key: value}`` as ``{field: value}``, each checked, or a one-line error
    naming the file and the key."""
    keys, values = recipe_keys(cls), {}
    for key, value in document.items():
        entry = keys.get(key) if isinstance(key, str) else None
        if entry is None:
            raise ResnetsError(f"{where}: {key!r} is not a flag of `resnets {command}` "
                               f"(see resnets {command} --help)")
        f, spec, kind, inverted = entry
        why = problem(f, spec, kind, value)
        if why is not None:
            raise ResnetsError(f"{where}: {key}: {why}")
        if kind is float and value is not None:
            value = float(value)
        values[f.name] = not value if inverted else value
    return values


def settings_yaml(values: dict[str, Any], cls: type) -> str:
    """``values`` ({field: value}) as a recipe, one key per flag in declaration order;
    :func:`recipe_values` reads it back to the same settings."""
    import yaml

    document = {}
    for f, spec, _ in declared(cls):
        if spec.flag and f.name in values:
            name = flag_name(f, spec)
            document[name] = not values[f.name] if name.startswith("no-") else values[f.name]
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
