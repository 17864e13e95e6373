"""Protobuf text format (``.prototxt``), read and written without Caffe or protoc.

A message is a ``dict`` mapping each field name to the *list* of its values in file order,
so repeated fields (``bottom``, ``top``, ``layer``) and optional ones read the same way and
nothing in the file is lost. Values are ``int``, ``float``, ``bool``, ``str`` (quoted strings),
:class:`EnumValue` (bare identifiers such as ``MAX`` or ``TRAIN``) or nested messages.

Why not protobuf's ``text_format`` with a descriptor built in Python (as :mod:`.caffemodel`
does for the binary)? It rejects every field its schema lacks, so it would need all of
caffe.proto declared here, and still the fields of the many Caffe forks (SSD, R-FCN...)
would fail; it accepts ``stride: 0`` and ``group: 0`` (value checks stay ours, in
:mod:`.validate`); its errors name no file; and deep nesting ends in a bare RecursionError.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

from ...errors import ResnetsError

Message = dict[str, list[Any]]

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+|\#[^\n]*)
  | (?P<newline>\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<word>[-+]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)

_CLOSE = {"{": "}", "<": ">"}
# Caffe's messages nest a few levels (layer > param > shape); a file nesting deeper is not a
# network definition, and unbounded recursion would end in a RecursionError.
MAX_NESTING = 64
# The largest real definitions (ResNet-269, DenseNet-264 train_val) are well under 1 MiB; the
# parsed form costs tens of bytes per token, so a cap keeps a hostile file's parse small.
MAX_PROTOTXT_BYTES = 16 << 20
_TRUE, _FALSE = {"true", "True", "t"}, {"false", "False", "f"}
_SPECIAL_FLOATS = {"inf": float("inf"), "infinity": float("inf"), "nan": float("nan")}


class EnumValue(str):
    """A bare identifier in the text format (``pool: MAX``): written back without quotes."""


def first(message: Message, field: str, default: Any = None) -> Any:
    """The first value of ``field`` (an optional field's value), or ``default`` if absent."""
    values = message.get(field)
    return values[0] if values else default


def load_prototxt_text(path_or_text: str | os.PathLike) -> tuple[str, str]:
    """(text, source name): a path is read; a string holding a message is taken as the text."""
    path = Path(path_or_text)
    if isinstance(path_or_text, str) and _looks_like_text(path_or_text) and not _is_file(path):
        return path_or_text, "<prototxt text>"
    if not _is_file(path):
        raise ResnetsError(f"prototxt file {str(path)!r} not found; check the path")
    size = path.stat().st_size
    if size > MAX_PROTOTXT_BYTES:
        raise ResnetsError(f"{path} holds {size / 2**20:.0f} MiB, more than any network definition "
                           f"(limit {MAX_PROTOTXT_BYTES >> 20} MiB); pass the .prototxt, not the weights")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise ResnetsError(f"{path} is not a text prototxt (binary data?); pass the .prototxt, "
                           "not the .caffemodel") from None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long to be a path
        return False


def _looks_like_text(value: str) -> bool:
    return "{" in value or "\n" in value or re.match(r"\s*[A-Za-z_]\w*\s*:(?![\\/])", value) is not None


def parse_prototxt(path_or_text: str | os.PathLike) -> Message:
    """Parse a text-format message (a Caffe ``NetParameter``) into nested dicts of lists.

    Comments, repeated fields, ``field: {`` / ``field {`` / ``field <``, separators and any
    indentation are accepted. A syntax error, nesting deeper than :data:`MAX_NESTING` or a text
    over :data:`MAX_PROTOTXT_BYTES` is a one-line :class:`ResnetsError` naming ``file:line``.
    """
    text, source = load_prototxt_text(path_or_text)
    if len(text) > MAX_PROTOTXT_BYTES:
        raise ResnetsError(f"{source} is longer than any network definition (limit {MAX_PROTOTXT_BYTES >> 20} MiB)")
    return _Parser(text, source).parse()


class _Parser:
    """Recursive descent over a lazily tokenized text (one token of look-ahead)."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self._tokens = self._tokenize(text)
        self._lookahead = next(self._tokens, None)
        self._last_line = 1
        self.depth = 0

    def _tokenize(self, text: str) -> Iterator[tuple[str, str, int]]:
        line, index = 1, 0
        while index < len(text):
            match = _TOKEN.match(text, index)
            if match is None:
                raise self._error(line, f"unexpected character {text[index]!r}")
            kind = match.lastgroup
            if kind == "newline":
                line += 1
            elif kind != "space":
                yield kind, match.group(), line
            index = match.end()

    def _error(self, line: int, what: str) -> ResnetsError:
        return ResnetsError(f"{self.source}:{line}: prototxt syntax error: {what}")

    def _advance(self) -> None:
        if self._lookahead is not None:
            self._last_line = self._lookahead[2]
        self._lookahead = next(self._tokens, None)

    def _next(self, expected: str) -> tuple[str, str, int]:
        token = self._lookahead
        if token is None:
            raise self._error(self._last_line, f"file ends where {expected} was expected (unclosed '{{'?)")
        self._advance()
        return token

    def parse(self) -> Message:
        return self._fields(closing=None)

    def _message(self, closing: str, line: int) -> Message:
        """A nested message, after its opening brace."""
        if self.depth >= MAX_NESTING:
            raise self._error(line, f"messages nest deeper than {MAX_NESTING} levels; not a network definition")
        self.depth += 1
        message = self._fields(closing)
        self.depth -= 1
        return message

    def _fields(self, closing: str | None) -> Message:
        message: Message = {}
        while True:
            token = self._lookahead
            if token is None:
                if closing is not None:
                    self._next(f"'{closing}'")
                return message
            kind, text, line = token
            if kind == "punct" and text == closing:
                self._advance()
                return message
            if kind == "punct" and text in ";,":
                self._advance()
                continue
            if kind != "word":
                raise self._error(line, f"expected a field name, found {text!r}")
            self._advance()
            message.setdefault(text, []).extend(self._field_value(text))

    def _field_value(self, name: str) -> list[Any]:
        kind, text, line = self._next(f"a value for {name!r}")
        if kind == "punct" and text in _CLOSE:
            return [self._message(_CLOSE[text], line)]
        if not (kind == "punct" and text == ":"):
            raise self._error(line, f"expected ':' or '{{' after {name!r}, found {text!r}")
        kind, text, line = self._next(f"a value for {name!r}")
        if kind == "punct" and text in _CLOSE:
            return [self._message(_CLOSE[text], line)]
        if kind == "punct" and text == "[":
            return self._list(name)
        return [self._scalar(kind, text, line, name)]

    def _list(self, name: str) -> list[Any]:
        values: list[Any] = []
        while True:
            kind, text, line = self._next(f"']' closing the list of {name!r}")
            if kind == "punct" and text == "]":
                return values
            if kind == "punct" and text == ",":
                continue
            if kind == "punct" and text in _CLOSE:
                values.append(self._message(_CLOSE[text], line))
            else:
                values.append(self._scalar(kind, text, line, name))

    def _scalar(self, kind: str, text: str, line: int, name: str) -> Any:
        if kind == "string":
            value = text[1:-1]
            # Adjacent string literals concatenate, as in C and protobuf.
            while (token := self._lookahead) is not None and token[0] == "string":
                value += token[1][1:-1]
                self._advance()
            if "\\" not in value:
                return value
            # Non-ASCII text survives as \uXXXX escapes, which unicode_escape turns back.
            return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
        if kind == "number":
            try:
                return _number(text)
            except ValueError:  # "09" (not octal), or more digits than Python converts
                raise self._error(line, f"invalid number {text[:40]!r} for {name!r}") from None
        if kind == "word":
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            if text.lstrip("-+").lower() in _SPECIAL_FLOATS:
                value = _SPECIAL_FLOATS[text.lstrip("-+").lower()]
                return -value if text.startswith("-") else value
            return EnumValue(text)
        raise self._error(line, f"expected a value for {name!r}, found {text!r}")


def _number(text: str) -> int | float:
    """A number token as protobuf's text format reads it: hexadecimal after 0x, octal after a
    leading 0, else decimal; a float with an optional f suffix."""
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    number = text.rstrip("fF")
    if re.fullmatch(r"[-+]?0[0-7]+", number):
        return int(number, 8)
    if re.fullmatch(r"[-+]?0\d+", number):
        raise ValueError(f"invalid octal number {text!r}")
    if re.fullmatch(r"[-+]?\d+", number):
        return int(number)
    return float(number)


def format_prototxt(message: Message, indent: int = 0) -> str:
    """The text format of ``message`` (the inverse of :func:`parse_prototxt`)."""
    pad = "  " * indent
    lines = []
    for name, values in message.items():
        for value in values:
            if isinstance(value, dict):
                lines += [f"{pad}{name} {{", format_prototxt(value, indent + 1), f"{pad}}}"]
            else:
                lines.append(f"{pad}{name}: {_format_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, EnumValue):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)  # a float's str is its repr: it reads back exactly
