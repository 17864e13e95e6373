"""`resnets serve`'s batching with a fake model of known run time (0.2 s a call, batch sizes recorded).

By default there is no timer: a request that finds the model idle runs at once, and the requests
that arrive while a batch runs come back together in the next one. Timings are asserted only
against generous bounds (a shared machine may stall a thread for a while).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resnets.serve.batcher import DynamicBatcher

RUN_TIME = 0.2  # seconds the fake model takes per call
SLACK = 0.5  # generous: far below any timer worth having, far above a thread's scheduling delay


class FakeModel:
    """Sleeps ``RUN_TIME`` per call and records each batch's size; ``hold`` keeps the next call
    running until released (so the test knows requests arrived while that batch ran)."""

    def __init__(self, classes: int = 3) -> None:
        self.classes = classes
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.gate: threading.Event | None = None

    def hold(self) -> threading.Event:
        self.started.clear()
        self.gate = threading.Event()
        return self.gate

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.started.set()
        gate, self.gate = self.gate, None
        if gate is not None:
            assert gate.wait(30), "the test never released the batch"
        time.sleep(RUN_TIME)
        self.sizes.append(len(batch))
        return torch.zeros(len(batch), self.classes)


def one_image() -> torch.Tensor:
    return torch.zeros(1, 3, 8, 8)


@pytest.fixture
def fake():
    return FakeModel()


def timed(future) -> float:
    start = time.monotonic()
    future.result(timeout=30)
    return time.monotonic() - start


def test_a_lone_request_runs_at_once(fake):
    batcher = DynamicBatcher(fake)  # the defaults: no timer
    try:
        for _ in range(3):  # idle each time: never a wait beyond the model's own time
            start = time.monotonic()
            batcher.submit(one_image()).result(timeout=30)
            assert time.monotonic() - start < RUN_TIME + SLACK
    finally:
        batcher.close()
    assert fake.sizes == [1, 1, 1]


def test_requests_arriving_during_a_batch_form_the_next_one(fake):
    batcher = DynamicBatcher(fake, max_batch=32)
    try:
        gate = fake.hold()
        first = batcher.submit(one_image())
        assert fake.started.wait(30)  # the first request is in the model
        during = [batcher.submit(one_image()) for _ in range(6)]
        gate.set()
        for future in [first, *during]:
            assert future.result(timeout=30).shape == (1, fake.classes)
    finally:
        batcher.close()
    assert fake.sizes == [1, 6]


def test_max_batch_splits_what_queued(fake):
    batcher = DynamicBatcher(fake, max_batch=4)
    try:
        gate = fake.hold()
        first = batcher.submit(one_image())
        assert fake.started.wait(30)
        during = [batcher.submit(torch.zeros(n, 3, 8, 8)) for n in (2, 1, 2, 3)]  # 8 images
        gate.set()
        for future, n in zip(during, (2, 1, 2, 3)):
            assert future.result(timeout=30).shape == (n, fake.classes)
        first.result(timeout=30)
    finally:
        batcher.close()
    assert fake.sizes == [1, 3, 2, 3]  # in order; a request within max_batch is never split, no batch is over it


def test_max_wait_ms_keeps_its_timer(fake):
    batcher = DynamicBatcher(fake, max_wait_ms=400)
    try:
        assert timed(batcher.submit(one_image())) >= 0.4 + RUN_TIME - 0.05  # the first waits for company
    finally:
        batcher.close()


def test_model_errors_reach_every_request_of_the_batch():
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    batcher = DynamicBatcher(broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(one_image()).result(timeout=30)
    finally:
        batcher.close()


# -- through the HTTP server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path]]:
    from test_serve import save_tiny_model, write_images

    root = tmp_path_factory.mktemp("batching")
    return save_tiny_model(root / "tiny.safetensors"), write_images(root / "images")


def test_http_requests_during_a_batch_come_back_in_the_next_one(photos):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from resnets.predict import load_for_inference
    from resnets.serve import ServeConfig, create_app
    from test_serve import CLASSES, NAME

    model, images = photos
    fake = FakeModel(len(CLASSES))
    app = create_app(replace(load_for_inference(model, backend="eager"), model=fake), ServeConfig(name=NAME))
    server = app.state.server
    submitted = []
    submit = server.batcher.submit
    server.batcher.submit = lambda batch: submitted.append(len(batch)) or submit(batch)  # counts arrivals

    def ask(path: Path) -> int:
        return client.post(f"/predictions/{NAME}", content=path.read_bytes()).status_code

    with TestClient(app) as client, ThreadPoolExecutor(16) as pool:
        fake.sizes.clear(), submitted.clear()  # the warm-up's pass
        start = time.monotonic()
        assert ask(images[0]) == 200
        assert time.monotonic() - start < RUN_TIME + SLACK + 1.0  # no timer: decode, HTTP, one model call
        gate = fake.hold()
        first = pool.submit(ask, images[0])
        assert fake.started.wait(30)
        during = [pool.submit(ask, path) for path in images * 2]
        deadline = time.monotonic() + 30
        while len(submitted) < 2 + len(during) and time.monotonic() < deadline:  # all decoded and queued
            time.sleep(0.01)
        gate.set()
        assert [f.result(timeout=30) for f in [first, *during]] == [200] * (1 + len(during))
    assert fake.sizes == [1, 1, len(during)]
