"""What an epoch visits: class-balanced draws and repeated augmentation, deterministic in (seed, epoch).

:class:`EpochPlan` gives an epoch's global order of *draws*, before sharding. A draw is a
"virtual index" ``item + k * size`` for the k-th time ``item`` appears in the epoch, so that
each appearance gets its own augmentation seed (seed, epoch, draw) while ``draw % size`` names
the image. Both the in-memory loader and the streaming loader read the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import ResnetsError

SAMPLERS = ("shuffle", "balanced")


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def shard_indices(order: torch.Tensor, rank: int, world_size: int, drop_last: bool) -> torch.Tensor:
    """This rank's part of an epoch's ``order``, as ``DistributedSampler`` cuts it.

    Every rank gets the same number of items: the tail is dropped when ``drop_last``, else
    the order is padded by wrapping around (so a few items appear twice in the epoch).
    """
    total = len(order)
    if drop_last:
        order = order[: total - total % world_size]
    elif total % world_size:
        padding = world_size - total % world_size
        order = torch.cat([order, order.repeat(padding // total + 1)[:padding]])
    return order[rank::world_size]


def occurrence_ids(order: torch.Tensor, size: int) -> torch.Tensor:
    """``order`` (item indices, repeats allowed) as draws: ``item + k * size`` for its k-th appearance."""
    values, perm = torch.sort(order, stable=True)
    position = torch.arange(len(order))
    new_group = torch.ones(len(order), dtype=torch.bool)
    new_group[1:] = values[1:] != values[:-1]
    group_start = torch.cummax(torch.where(new_group, position, 0), 0).values
    occurrence = torch.empty_like(order)
    occurrence[perm] = position - group_start
    return order + occurrence * size


@dataclass(frozen=True)
class EpochPlan:
    """An epoch's draws: ``balanced`` gives every class the same number of draws (with
    replacement for small classes, ``size // classes`` each); ``repeats`` shows each drawn image
    that many times in a row (torchvision's RASampler: under DDP the copies land on different
    ranks), so an epoch has ``len(self)`` draws."""

    labels: tuple[int, ...]
    seed: int = 0
    balanced: bool = False
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ResnetsError(f"--aug-repeats must be an integer >= 1, got {self.repeats!r}")
        if not self.labels:
            raise ResnetsError("no training images to sample from")

    @classmethod
    def of(cls, labels: Sequence[int] | torch.Tensor, seed: int = 0, sampler: str = "shuffle",
           repeats: int = 1) -> "EpochPlan":
        if sampler not in SAMPLERS:
            raise ResnetsError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
        if sampler != "balanced":  # a plain shuffle needs only the count (labels may be multi-hot)
            values = [0] * len(values)
        return cls(tuple(int(v) for v in values), seed, sampler == "balanced", repeats)

    @property
    def size(self) -> int:
        return len(self.labels)

    def _draws_per_epoch(self) -> int:
        if not self.balanced:
            return self.size
        classes = len(set(self.labels))
        return max(1, self.size // classes) * classes

    def __len__(self) -> int:
        return self._draws_per_epoch() * self.repeats

    def items(self, epoch: int) -> torch.Tensor:
        """The epoch's image indices in order (with their repeats)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        if self.balanced:
            order = self._balanced(generator)
        else:
            order = torch.randperm(self.size, generator=generator)
        return order.repeat_interleave(self.repeats)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's draws (see the module's docstring), before sharding."""
        return occurrence_ids(self.items(epoch), self.size)

    def _balanced(self, generator: torch.Generator) -> torch.Tensor:
        """``per_class`` draws of each class: its members in a shuffled cycle, then one shuffle of all."""
        labels = torch.tensor(self.labels)
        classes = torch.unique(labels)
        per_class = self._draws_per_epoch() // len(classes)
        parts = []
        for label in classes.tolist():
            members = torch.nonzero(labels == label).flatten()
            cycles = -(-per_class // len(members))
            picks = torch.cat([members[torch.randperm(len(members), generator=generator)] for _ in range(cycles)])
            parts.append(picks[:per_class])
        order = torch.cat(parts)
        return order[torch.randperm(len(order), generator=generator)]


class PlanSampler(torch.utils.data.Sampler):
    """This rank's draws of an :class:`EpochPlan` for a DataLoader (``set_epoch`` each epoch)."""

    def __init__(self, plan: EpochPlan, rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        self.plan, self.rank, self.world_size, self.drop_last = plan, rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        total = len(self.plan)
        return total // self.world_size if self.drop_last else -(-total // self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(self.plan.order(self.epoch), self.rank, self.world_size, self.drop_last).tolist())
