"""Untrusted text (class names, file names, metadata) made safe to print on a terminal.

A class name or a file name comes from whoever made the weights file or the data set. Printed
raw, an escape sequence in it can clear the screen, set the window title or hide text, and a
name that is not valid UTF-8 (lone surrogates from ``os.fsdecode``) makes ``print`` raise.
:func:`printable` is the one helper every command uses before printing such text; JSON output
needs none (``json.dumps`` escapes control characters itself and stays exact).
"""

from __future__ import annotations

import unicodedata

# Unicode categories never printed raw: controls (C0, C1, DEL), format characters (bidi
# overrides that reorder what follows, zero-width marks), lone surrogates, line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: object) -> str:
    """``text`` with every control, format or surrogate character escaped (``\\x1b``, ``\\u202e``).

    Plain text, accents and other scripts are unchanged; a backslash is kept as is, so a name
    is only ever longer when it held something unsafe.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
