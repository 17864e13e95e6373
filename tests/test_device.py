"""--device is checked once, up front: one clear error instead of PyTorch's traceback."""

from __future__ import annotations

import pytest
import torch

from resnets.device import resolve_device
from resnets.errors import ResnetsError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name, message", [("tpu", "unknown device 'tpu'"), ("xla", "runs on cpu or cuda")])
def test_names_that_are_not_devices_here(name, message):
    with pytest.raises(ResnetsError, match=message):
        resolve_device(name)


def test_cuda_is_checked_against_what_pytorch_sees():
    if not torch.cuda.is_available():
        with pytest.raises(ResnetsError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ResnetsError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 64}")
