"""Read torchvision / timm / Lightning / DataParallel checkpoints without running any code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers: a pickle that
would call anything else is refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnetsError

# Where training scripts nest the weights, in the order they are preferred.
NESTED_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
# Prefixes added by DataParallel/DDP, Lightning modules and torch.compile.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_torch_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint file, unwrapped and without wrapper prefixes."""
    return unwrap_state_dict(_safe_load(Path(path)), str(path))


def _safe_load(path: Path) -> Any:
    if not path.is_file():
        raise ResnetsError(f"no such checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).strip().splitlines()[0][:160]
        raise ResnetsError(f"{path} holds objects other than tensors and was NOT unpickled (unsafe; "
                           f"{detail}); re-save its state_dict with torch.save(model.state_dict(), ...)") from None
    except Exception as error:  # a damaged file can fail in any of the parser's layers
        detail = f"{type(error).__name__}: {str(error).strip()[:100]}".splitlines()[0]
        raise ResnetsError(f"{path} is truncated or not a PyTorch checkpoint ({detail})") from None


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the tensors in a training checkpoint and strip DataParallel/Lightning prefixes."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if nested is None:
            raise ResnetsError(f"{source} holds no model weights (keys: {', '.join(map(str, list(obj)[:6]))})")
        obj = nested
    if not isinstance(obj, dict):
        raise ResnetsError(f"{source} holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # Wrappers nest (DDP around torch.compile: ``module._orig_mod.``): strip while every key has one.
    while state and (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())
