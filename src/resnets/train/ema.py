"""Exponential moving average of the weights (and BN buffers), evaluated instead of the raw model."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """torch's AveragedModel in EMA mode; ``use_buffers`` keeps BN statistics averaged too."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
