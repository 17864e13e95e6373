"""Augmentation policies (torchvision transforms.v2), one description for both training paths.

:class:`AugmentPolicy` builds the per-image uint8 pipeline (a policy, ColorJitter, RandomErasing)
that both loaders run before the preset's crop and flip, with the global RNG seeded from (seed,
epoch, draw), so the same image, seed and epoch give the same pixels in both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from ..errors import ResnetsError
from .sampling import mix_seed

# Each policy's transform, by name.
_POLICY_STEPS = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment,
                 "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET), "augmix": v2.AugMix}
POLICIES = tuple(_POLICY_STEPS)


@dataclass(frozen=True)
class AugmentPolicy:
    """``name`` (one of :data:`POLICIES`, or None), ``random_erasing`` (probability) and
    ``color_jitter`` (strength); all off is no policy at all (``bool(policy)`` is False)."""

    name: str | None = None
    random_erasing: float = 0.0
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in POLICIES:
            raise ResnetsError(f"--augment-policy must be one of {', '.join(POLICIES)}, got {self.name!r}")
        if not 0 <= self.random_erasing <= 1:
            raise ResnetsError(f"--random-erasing must be a probability in [0, 1], got {self.random_erasing!r}")
        if not self.color_jitter >= 0:
            raise ResnetsError(f"--color-jitter must be >= 0, got {self.color_jitter!r}")

    def __bool__(self) -> bool:
        return self.name is not None or self.random_erasing > 0 or self.color_jitter > 0

    def transform(self) -> v2.Compose:
        """The per-image pipeline on uint8 tensors (an identity when the policy is off)."""
        steps: list[v2.Transform] = []
        if self.name is not None:
            steps.append(_POLICY_STEPS[self.name]())
        if self.color_jitter > 0:
            s = self.color_jitter
            steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
        if self.random_erasing > 0:
            steps.append(v2.RandomErasing(p=self.random_erasing, value=0))
        return v2.Compose(steps)


def seed_image(seed: int, epoch: int, draw: int) -> None:
    """Seed the global RNG (which v2 transforms draw from) for one image of one epoch."""
    torch.manual_seed(mix_seed(seed, epoch, draw))


def apply_per_image(transform: v2.Transform, images: torch.Tensor, draws: torch.Tensor, seed: int,
                    epoch: int) -> torch.Tensor:
    """``transform`` on each uint8 image of a batch, seeded by (seed, epoch, draw); the caller's
    global RNG state is left as it was."""
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for i, draw in enumerate(draws.tolist()):
            seed_image(seed, epoch, draw)
            out[i] = transform(images[i])
    return out
