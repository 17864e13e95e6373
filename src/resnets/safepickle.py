"""The one unpickler for pickles from outside: CIFAR's batches and Paddle's ``.pdparams``.

A pickle can run any code while it loads. These files only ever hold dicts, lists, strings,
numbers and numpy arrays, so :class:`NumpyOnlyUnpickler` resolves just the globals numpy needs
to rebuild arrays (plus ``OrderedDict`` and the latin-1 ``bytes`` codec of protocol-2 pickles);
any other global is refused before it is resolved, so a doctored file fails instead of running.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles written by Python 3 rebuild ``bytes``; only latin-1 is accepted."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing to decode bytes with codec {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _latin1_bytes}
    for package in ("numpy.core", "numpy._core"):  # the module name depends on the writer's numpy
        allowed[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        if hasattr(_numeric, "_frombuffer"):
            allowed[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; any other global is refused before it is resolved."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def load_numpy_pickle(source: bytes | BinaryIO, encoding: str = "ASCII") -> Any:
    """Unpickle ``source`` (bytes or a binary file) with :class:`NumpyOnlyUnpickler`.

    Raises ``pickle.UnpicklingError`` for a refused global; a damaged pickle raises whatever
    ``pickle`` raises (EOFError, ValueError...): callers turn both into their one-line error.
    """
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    return NumpyOnlyUnpickler(handle, encoding=encoding).load()
