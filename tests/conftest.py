"""Shared test helpers."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

# `make fuzz` (`pytest --hypothesis-profile=fuzz tests/test_fuzz_*.py`): many more examples per
# property, RESNETS_FUZZ_EXAMPLES each; `make test` keeps Hypothesis' default budget.
settings.register_profile("fuzz", max_examples=int(os.environ.get("RESNETS_FUZZ_EXAMPLES", "10000")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# A suite started in the background (`make test &`, a CI step) inherits SIGINT ignored, and an
# ignored signal stays ignored in every command the tests start, so the Ctrl-C tests' commands
# would never see theirs. A handled signal is reset to the default in a started program.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The inference backend probe's cache (resnets.inference) stays out of the user's home: one file per
# test session, inherited by the commands the tests start.
os.environ.setdefault("RESNETS_BACKEND_CACHE",
                      os.path.join(tempfile.mkdtemp(prefix="resnets-tests-"), "inference-backends.json"))

# Two xdist workers on two cores: one thread each, or they fight over the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    Freshly built models have mean 0, var 1, weight 1, bias 0, which would hide a BatchNorm
    that is mis-wired or mis-converted; with random values such a bug changes the logits.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture
def run_cli(capsys):
    """Run `resnets ARGS...` in-process; returns (exit status, stdout, stderr)."""
    from resnets.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two threads that wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
