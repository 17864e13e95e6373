"""Read ``paddle.vision.models.resnet*`` ``.pdparams`` without Paddle and without running code.

A ``.pdparams`` file is a pickle of ``{name: numpy array}``. It is read with an unpickler that
resolves only the globals numpy needs to rebuild arrays (and ``OrderedDict``): a file asking for
anything else is refused before any of it runs. Paddle's names are torchvision's except
``_mean``/``_variance`` for BN statistics, and its Linear weight is stored (in, out).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import ResnetsError
from ..safepickle import load_numpy_pickle

# Bookkeeping entries paddle.save may add beside the parameters.
_PADDLE_META_KEYS = ("StructuredToParameterName@@",)


def read_paddle(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision-named state dict from a Paddle ResNet ``.pdparams`` file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            params = load_numpy_pickle(handle)
    except pickle.UnpicklingError as error:
        raise ResnetsError(f"{path} holds objects other than arrays and was NOT unpickled (unsafe; {error})") from None
    except Exception as error:  # a damaged pickle can fail in many ways
        raise ResnetsError(f"{path} is truncated or not a Paddle .pdparams file ({type(error).__name__})") from None
    if not isinstance(params, dict):
        raise ResnetsError(f"{path} holds a {type(params).__name__}, not Paddle parameters")
    state = {}
    for name, value in params.items():
        if name in _PADDLE_META_KEYS or not isinstance(value, np.ndarray):
            continue
        key = name.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        array = value.T if key == "fc.weight" else value
        state[key] = torch.from_numpy(np.ascontiguousarray(array))
    return state
