"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch

# Fractions of the run after which the ``step`` schedule divides the rate by 10.
STEP_MILESTONES = (0.5, 0.75)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``cosine``: linear warm-up then cosine to zero. ``onecycle``: Smith's one-cycle policy
    (torch's OneCycleLR; its warm-up is ``warmup_steps``, or 25 % of the run when 0). ``step``:
    linear warm-up, then the rate divided by 10 at 50 % and 75 % of the run (He et al.'s CIFAR
    schedule: steps at 32k and 48k of 64k iterations, epochs 82 and 123 of 164). ``linear``: linear
    warm-up, then a straight line to zero (airbench, with no warm-up)."""
    total_steps = max(total_steps, 1)
    if kind == "onecycle":
        pct = warmup_steps / total_steps if warmup_steps else 0.25
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
            pct_start=min(max(pct, 2 / total_steps), 0.99),  # each phase at least one step: torch divides by its length
            cycle_momentum=optimizer.defaults.get("momentum", 0) > 0 or "betas" in optimizer.defaults)
    multiplier = {"step": warmup_step, "linear": warmup_linear}.get(kind, warmup_cosine)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: multiplier(step, total_steps, warmup_steps))


def warmup_step(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier at ``step``: linear warm-up, then 1, 0.1 from half the run, 0.01 from 3/4."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.1 ** sum(step >= fraction * total_steps for fraction in STEP_MILESTONES)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier at ``step``: rises linearly over the warm-up, then follows a half cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def warmup_linear(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier at ``step``: rises linearly over the warm-up, then falls linearly to zero at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1 - (step - warmup_steps) / max(total_steps - warmup_steps, 1))
