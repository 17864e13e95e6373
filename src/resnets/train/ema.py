"""Exponential moving average of the weights (and BN buffers), evaluated instead of the raw model."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import ResnetsError


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """torch's AveragedModel in EMA mode; ``use_buffers`` keeps BN statistics averaged too."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_decay_for_steps(half_life_steps: float) -> float:
    """The per-step decay whose EMA forgets half of a weight after ``half_life_steps`` updates.

    A decay means nothing without the number of steps it is applied over: 0.999 has a half-life
    of 693 steps, longer than a whole 10-epoch CIFAR run at batch 512 (980 steps), so its average
    would still be half made of early weights. Choosing the half-life (e.g. a fraction of the run,
    as the fast CIFAR recipes do, Page 2019 / Jordan's airbench) and deriving the decay avoids that.
    """
    if not half_life_steps > 0 or half_life_steps == float("inf"):
        raise ResnetsError(f"EMA half-life must be a positive number of steps, got {half_life_steps}")
    return 0.5 ** (1.0 / half_life_steps)
