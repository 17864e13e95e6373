"""Which device a command runs on: ``--device`` checked once, with one clear line when it cannot be."""

from __future__ import annotations

import torch

from .errors import ResnetsError


def resolve_device(requested: str | torch.device) -> torch.device:
    """``auto`` -> the GPU if PyTorch sees one, else the CPU; anything else is checked, not trusted.

    ``cuda`` on a machine where PyTorch sees no GPU, an index past the last GPU, or a name that
    is no device at all each give a :class:`ResnetsError` naming the problem (not PyTorch's
    traceback from deep inside the first ``.to(device)``).
    """
    if isinstance(requested, torch.device):
        device = requested
    elif requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise ResnetsError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ResnetsError(f"--device {requested}: PyTorch sees no CUDA GPU on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ResnetsError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ResnetsError(f"--device {requested}: this PyTorch has no usable MPS (Apple GPU) device; use --device cpu")
    elif device.type not in ("cpu", "mps"):
        raise ResnetsError(f"--device {requested}: resnets runs on cpu or cuda")
    return device
