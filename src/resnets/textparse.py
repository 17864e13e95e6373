"""Bounded parsing of untrusted text and array headers: YAML, JSON and ``.npy``.

Every reader of a user's YAML or JSON (recipes, label rows, index sidecars, weights metadata,
KServe v2 bodies) and of an index's ``.npy`` goes through here, so that no input, however built,
ends in anything but a one-line :class:`ResnetsError` naming the limit: nesting is measured
before the recursive parsers run (no ``RecursionError``), YAML aliases are counted and their
expansion measured before anything is constructed (no alias bomb), number literals are refused
past :data:`MAX_NUMBER_DIGITS` (Python's int-string limit is never reached), an ``.npy`` header
is checked against the file's size before its array is allocated, and every value shown in a
message is shortened by :func:`shorten`.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import tokenize
from typing import Any

import numpy as np
import yaml

from .errors import ResnetsError, first_line
from .fileio import open_regular
from .terminal import printable

MAX_TEXT_BYTES = 64 << 20
MAX_DEPTH = 64
MAX_ALIASES = 32
MAX_NUMBER_DIGITS = 100
MAX_ARRAY_BYTES = 16 << 30
VALUE_CHARS = 80

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = VALUE_CHARS


def shorten(value: object, limit: int = VALUE_CHARS, ellipsis: str = "...") -> str:
    """``value`` as terminal-safe text of at most ``limit`` characters (``ellipsis`` marks a cut;
    labels drawn on images use "…"); containers are summarised by :mod:`reprlib`, so even a huge
    or deep value costs little."""
    text = value if isinstance(value, str) else _REPR.repr(value)
    text = printable(text[:limit + 1])
    return text if len(text) <= limit else text[:limit - len(ellipsis)] + ellipsis


def read_limited(path: str | os.PathLike, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of a regular file (:func:`resnets.fileio.open_regular`: a FIFO, device
    or folder is refused without blocking), refusing a larger one before reading any of it."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:  # the second: it grew since fstat
        raise ResnetsError(f"{printable(os.fspath(path))}: larger than {max_bytes} bytes")
    return data


# -- JSON --------------------------------------------------------------------------------------
def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings: one linear scan, no recursion."""
    stripped = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(stripped, np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def load_json(data: str | bytes, where: str, max_bytes: int = MAX_TEXT_BYTES, max_depth: int = MAX_DEPTH,
              invalid: str = "not valid JSON") -> Any:
    """``json.loads`` within bounds: size, nesting depth (measured first) and number length;
    anything else is ``ResnetsError(f"{where}: ...")`` (``invalid`` words a syntax error)."""
    if len(data) > max_bytes:
        raise ResnetsError(f"{where}: larger than {max_bytes} bytes")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
        except UnicodeDecodeError:
            raise ResnetsError(f"{where}: {invalid} (not UTF-8 text)") from None
    depth = json_depth(data) if data.count("[") + data.count("{") > max_depth else 0
    if depth > max_depth:
        raise ResnetsError(f"{where}: nested {depth} deep, over the limit of {max_depth}")

    def number(kind: type):
        def parse(literal: str) -> Any:
            if len(literal) > MAX_NUMBER_DIGITS:
                raise ResnetsError(f"{where}: number {shorten(literal)} is longer than "
                                   f"{MAX_NUMBER_DIGITS} characters")
            return kind(literal)
        return parse

    try:
        return json.loads(data, parse_int=number(int), parse_float=number(float))
    except json.JSONDecodeError as error:
        raise ResnetsError(f"{where}: {invalid} ({shorten(str(error), 2 * VALUE_CHARS)})") from None


# -- YAML --------------------------------------------------------------------------------------
def _scalar_tag(event: yaml.ScalarEvent) -> str | None:
    if event.tag not in (None, "!"):
        return event.tag
    if not event.implicit[0]:
        return None
    for tag, pattern in yaml.SafeLoader.yaml_implicit_resolvers.get(event.value[:1], []):
        if pattern.match(event.value):
            return tag
    return None


def _yaml_checked(text: str, where: str, max_depth: int, max_aliases: int, max_size: int) -> None:
    """Walk the event stream (linear, no recursion): depth, aliases, expanded size, numbers."""
    stack: list[list] = [[0, None]]  # per open collection: [expanded size, anchor]
    sizes: dict[str, int | None] = {}  # anchor -> expanded size (None while still open)
    aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > max_aliases:
                raise ResnetsError(f"{where}: more than {max_aliases} YAML aliases (*name); not a recipe")
            if event.anchor in sizes and sizes[event.anchor] is None:
                raise ResnetsError(f"{where}: a YAML alias refers to its own collection ({shorten(event.anchor)})")
            stack[-1][0] += sizes.get(event.anchor) or 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if event.anchor:
                sizes[event.anchor] = None
            stack.append([1, event.anchor])
            if len(stack) - 1 > max_depth:
                raise ResnetsError(f"{where}: nested deeper than the limit of {max_depth}")
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
            if anchor:
                sizes[anchor] = size
            stack[-1][0] += size
        elif isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_NUMBER_DIGITS and _scalar_tag(event) in _NUMBER_TAGS:
                raise ResnetsError(f"{where}: number {shorten(event.value)} is longer than "
                                   f"{MAX_NUMBER_DIGITS} characters")
            if event.anchor:
                sizes[event.anchor] = 1 + len(event.value)
            stack[-1][0] += 1 + len(event.value)
        if aliases and stack[-1][0] > max_size:
            raise ResnetsError(f"{where}: its YAML aliases expand to more than {max_size} characters")


def load_yaml(text: str | bytes, where: str, max_bytes: int = 1 << 20, max_depth: int = MAX_DEPTH,
              max_aliases: int = MAX_ALIASES) -> Any:
    """``yaml.safe_load`` within bounds: size, depth, alias count and expansion (all measured on the
    event stream before anything is built), number length; any failure is one ``ResnetsError``."""
    if len(text) > max_bytes:
        raise ResnetsError(f"{where}: larger than {max_bytes} bytes")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        _yaml_checked(text, where, max_depth, max_aliases, max_bytes)
        return yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - the safe loader
    except yaml.MarkedYAMLError as error:
        mark = error.context_mark or error.problem_mark  # the context: where an unclosed [ or " began
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ResnetsError(f"{where}: not valid YAML{line}: {shorten(error.problem or error.context, 160)}") from None
    except ResnetsError:
        raise
    # PyYAML's constructors also fail with Python's errors (an empty ``!!int`` is an IndexError)
    except (yaml.YAMLError, ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as error:
        raise ResnetsError(f"{where}: not valid YAML: {shorten(first_line(error), 160)}") from None


# -- .npy --------------------------------------------------------------------------------------
def load_npy(path: str | os.PathLike, where: str, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """An ``.npy`` array whose header has been checked against the file's size (and ``max_bytes``)
    before anything is allocated; never unpickles. Regular files only (:func:`~resnets.fileio.open_regular`)."""
    fmt = np.lib.format
    with open_regular(path) as handle:
        try:
            version = fmt.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(handle)
        except (ValueError, SyntaxError, TypeError, tokenize.TokenError, RecursionError, MemoryError) as error:
            # numpy tokenizes and literal_evals the header text (at most 10,000 bytes): a header cut
            # inside a bracket is a TokenError, a deeply nested one a RecursionError (found by fuzzing)
            raise ResnetsError(f"{where}: not a NumPy .npy file ({shorten(first_line(error))})") from None
        if dtype.hasobject:
            raise ResnetsError(f"{where}: holds Python objects; only numeric arrays are read")
        need = math.prod(shape) * dtype.itemsize
        held = os.fstat(handle.fileno()).st_size - handle.tell()
        if need != held or need > max_bytes:
            raise ResnetsError(f"{where}: its header declares shape {shorten(shape)} of {dtype} ({need} bytes) "
                               f"but the file holds {held} bytes of data (limit {max_bytes})")
        handle.seek(0)
        try:
            return fmt.read_array(handle, allow_pickle=False)
        except ValueError as error:
            raise ResnetsError(f"{where}: not a readable .npy file ({shorten(first_line(error))})") from None
