"""The one interleaved timing loop (resnets.timing): who runs when, and what is counted."""

from __future__ import annotations

import pytest

from resnets import timing


@pytest.fixture
def fake_clock(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])
    return clock


def _runner(name: str, calls: list[str], clock: dict, costs: list[float]):
    """Appends its name per call and advances the fake clock by its next cost."""
    def run() -> None:
        calls.append(name)
        clock["now"] += costs[sum(1 for c in calls if c == name) - 1]
    return run


def test_rounds_interleave_and_settling_calls_are_not_counted(fake_clock):
    calls: list[str] = []
    # each runner's calls cost 10, 1, 10, 2, 10, 3 ... after one warm-up call: the settling calls
    # are the expensive ones (a neighbour's spinning threads), the timed ones the cheap ones
    costs = [5.0] + [c for k in range(1, 4) for c in (10.0, float(k))]
    runners = {name: _runner(name, calls, fake_clock, costs) for name in ("a", "b")}
    times = timing.time_interleaved(runners, repeats=3, warmup=1, settle=True)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert times == {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0]}


def test_without_settling_each_call_is_timed_once_per_round(fake_clock):
    calls: list[str] = []
    costs = [1.0, 2.0, 3.0]
    runners = {name: _runner(name, calls, fake_clock, costs) for name in ("a", "b", "c")}
    times = timing.time_interleaved(runners, repeats=3, warmup=0)
    assert calls == ["a", "b", "c"] * 3
    assert times == {name: [1.0, 2.0, 3.0] for name in "abc"}


def test_the_backend_probe_takes_the_median_of_settled_turns(fake_clock):
    import torch

    from resnets import inference

    calls: list[str] = []
    costs = {"fast": [9.0, 0.001, 9.0, 0.003, 9.0, 0.002], "slow": [0.5, 0.010, 0.5, 0.030, 0.5, 0.020]}

    def module(name):
        def call(x):
            calls.append(name)
            fake_clock["now"] += costs[name][sum(1 for c in calls if c == name) - 1]
            return x
        return call

    probe = inference.probe_backends({n: module(n) for n in costs}, torch.zeros(1), warmup=0, runs=3)
    assert probe == {"fast": 2.0, "slow": 20.0}  # milliseconds, the untimed calls' 9 s and 0.5 s not seen
