"""Timing that is fair to every contender on a shared machine: interleaved rounds.

Load from other processes comes and goes within seconds, so contenders are never timed one
after the other: each round gives every one of them a turn, and noise hits them alike. Used by
``bench`` and ``compare``, by ``auto``'s backend probe (:func:`resnets.inference.probe_backends`)
and by the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import time
from typing import Callable


def time_interleaved(runners: dict[str, Callable[[], object]], repeats: int,
                     warmup: int, settle: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each runner; one call of each per round, so noise hits all alike.

    With ``settle`` a runner's turn is an untimed call, then the timed one: a call right after
    another runtime's pays for that runtime's threads still spinning (PyTorch's OpenMP threads
    after eager or a matmul; ORT's with spinning on), up to 50 % at batch 1 and always on the
    same runner, as the order is fixed. The untimed call takes that cost."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            if settle:
                run()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times
