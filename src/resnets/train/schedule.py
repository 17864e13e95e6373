"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``cosine``: linear warm-up then cosine to zero. ``onecycle``: Smith's one-cycle policy
    (torch's OneCycleLR; its warm-up is ``warmup_steps``, or 25 % of the run when 0)."""
    total_steps = max(total_steps, 1)
    if kind == "onecycle":
        pct = warmup_steps / total_steps if warmup_steps else 0.25
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
            pct_start=min(max(pct, 1 / total_steps), 0.99),
            cycle_momentum=optimizer.defaults.get("momentum", 0) > 0 or "betas" in optimizer.defaults)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier at ``step``: rises linearly over the warm-up, then follows a half cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
