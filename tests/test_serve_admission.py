"""`resnets serve` survives hostile requests (issue 24): admission before decoding, split batches,
one log line per request, health answered while a request is worked on, supervised workers.

Most tests run the app in-process (FastAPI's TestClient) with the tiny ResNet-20 of `test_serve`;
the acceptance test runs a real `resnets serve` process and sends it thousands of tiny images and
a 20 MB body of 5,000,000 empty elements, then a normal request.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from resnets.serve import ServeConfig, create_app  # noqa: E402
from resnets.serve.admission import Limits, ServeError  # noqa: E402
from resnets.serve.batcher import DynamicBatcher  # noqa: E402
from resnets.serve.v2 import float_tensor, image_elements, parse_request, split_body  # noqa: E402
from resnets.serve.workers import SupervisedPool  # noqa: E402
from test_serve import CLASSES, NAME, RunningServer, png_header, save_tiny_model, write_images  # noqa: E402

INFER = f"/v2/models/{NAME}/infer"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("admission")
    return save_tiny_model(root / "tiny.safetensors"), write_images(root / "images")


@pytest.fixture(scope="module")
def predictor(assets):
    from resnets.predict import load_for_inference

    return load_for_inference(assets[0], backend="eager")


def tiny_png(colour: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (1, 1)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def json_images(images: list[bytes], shape: int | None = None) -> dict:
    data = [base64.b64encode(i).decode() for i in images]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data) if shape is None else shape],
                        "data": data}]}


def binary_request(elements: list[bytes] | bytes, shape: int) -> tuple[bytes, dict]:
    """A v2 request with the binary-data extension: JSON header, then length-prefixed elements."""
    blob = elements if isinstance(elements, bytes) else b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [shape],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"}


class Recording:
    """The model, recording the size of every batch it is given; ``die_next`` makes the next call
    end its thread (a ``SystemExit``, which no per-batch handler may swallow for good)."""

    def __init__(self, model) -> None:
        self.model = model
        self.sizes: list[int] = []
        self.die_next = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.die_next:
            self.die_next = False
            raise SystemExit("the worker thread dies")
        self.sizes.append(len(batch))
        return self.model(batch)


def recorded_app(predictor, **config):
    recording = Recording(predictor.model)
    app = create_app(replace(predictor, model=recording), ServeConfig(name=NAME, **config))
    return app, recording


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The names of the images decoded (every call of the server's decoder)."""
    import resnets.serve.server as server_module

    seen: list[str] = []
    real = server_module.decode_to_uint8

    def counting(predictor, data: bytes, name: str):
        seen.append(name)
        return real(predictor, data, name)

    monkeypatch.setattr(server_module, "decode_to_uint8", counting)
    return seen


# -- admission -----------------------------------------------------------------------------------
def test_more_images_than_max_images_is_413_before_any_decoding(predictor, decodes):
    app, _ = recorded_app(predictor, max_images=8)
    nine = [tiny_png()] * 9
    with TestClient(app) as client:
        for request in [{"json": json_images(nine)},  # shape and data agree: 9 > 8
                        {"json": json_images(nine, shape=1)},  # a short shape, a long data list
                        {"json": json_images([tiny_png()], shape=20_000)},  # the declared shape alone
                        dict(zip(("content", "headers"), binary_request(nine, 9)))]:
            refused = client.post(INFER, **request)
            assert refused.status_code == 413, refused.text
            assert "--max-images" in refused.json()["error"] and "8" in refused.json()["error"]
        assert decodes == []
        eight = client.post(INFER, json=json_images([tiny_png()] * 8))
        assert eight.status_code == 200, eight.text
    assert len(decodes) == 8


def test_more_pixels_than_max_pixels_is_413_before_any_decoding(predictor, decodes):
    app, _ = recorded_app(predictor, max_pixels=3 * 64 * 64)
    with TestClient(app) as client:
        four = client.post(INFER, json=json_images([tiny_png(size=(64, 64))] * 4))
        assert four.status_code == 413 and "--max-pixels" in four.json()["error"], four.text
        assert f"{4 * 64 * 64} pixels" in four.json()["error"]
        bomb = client.post(INFER, json=json_images([png_header(100_000, 100_000)]))  # the per-image budget
        assert bomb.status_code == 413, bomb.text
        single = client.post(f"/predictions/{NAME}", content=tiny_png(size=(128, 128)))
        assert single.status_code == 413 and "--max-pixels" in single.json()["error"]
        assert decodes == []
        three = client.post(INFER, json=json_images([tiny_png(size=(64, 64))] * 3))
        assert three.status_code == 200, three.text


def test_zero_length_elements_are_refused_where_they_are_read(predictor, decodes):
    app, _ = recorded_app(predictor)
    empties = struct.pack("<I", 0) * 5_000_000  # 20 MB of empty elements
    with TestClient(app) as client:
        for shape, status, words in [(5_000_000, 413, "--max-images"), (1, 400, "empty image[0]"),
                                     (3, 400, "empty image[0]")]:
            body, headers = binary_request(empties, shape)
            refused = client.post(INFER, content=body, headers=headers)
            assert refused.status_code == status and words in refused.json()["error"], refused.text
        body, headers = binary_request([tiny_png(), b"", tiny_png()], 3)
        middle = client.post(INFER, content=body, headers=headers)
        assert middle.status_code == 400 and "empty image[1]" in middle.json()["error"]
        as_json = client.post(INFER, json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                                       "data": [base64.b64encode(tiny_png()).decode(), ""]}]})
        assert as_json.status_code == 400 and "empty image[1]" in as_json.json()["error"]
        assert decodes == []
        assert client.post(f"/predictions/{NAME}", content=tiny_png()).status_code == 200


def test_a_request_over_max_batch_runs_in_batches_and_answers_as_one(predictor, assets):
    _, photos = assets
    app, recording = recorded_app(predictor, max_batch=4, max_images=64)
    images = [p.read_bytes() for p in photos] * 3 + [tiny_png()] * 2  # 14 images, several sizes
    with TestClient(app) as client:
        recording.sizes.clear()  # the warm-up's pass
        answer = client.post(INFER, json=json_images(images))
        assert answer.status_code == 200, answer.text
        assert recording.sizes == [4, 4, 4, 2]
        singles = [client.post(INFER, json=json_images([image])).json() for image in images]
    probs = {o["name"]: o for o in answer.json()["outputs"]}["probabilities"]
    assert probs["shape"] == [len(images), len(CLASSES)]
    alone = [{o["name"]: o for o in s["outputs"]}["probabilities"]["data"] for s in singles]
    np.testing.assert_allclose(np.reshape(probs["data"], probs["shape"]), np.asarray(alone), atol=1e-5)


def test_the_batcher_takes_batches_of_at_most_max_batch():
    """Splitting is the server's (Server.run_batches, tested above through a request of 14 at
    --max-batch 4); the batcher refuses a larger batch rather than split it a second way."""
    batcher = DynamicBatcher(lambda batch: batch.flatten(1)[:, :3], max_batch=4)
    try:
        with pytest.raises(ValueError, match="over max_batch 4"):
            batcher.submit(torch.randn(5, 3, 2, 2))
        batch = torch.randn(4, 3, 2, 2)
        torch.testing.assert_close(batcher.submit(batch).result(timeout=30), torch.softmax(batch.flatten(1)[:, :3], 1))
    finally:
        batcher.close()
    assert isinstance(batcher.submit(torch.randn(1, 3, 2, 2)).exception(timeout=5), RuntimeError)  # stopped


# -- logging -------------------------------------------------------------------------------------
def test_one_log_line_per_request_never_one_per_element(predictor, assets, caplog):
    caplog.set_level(logging.INFO)
    app, _ = recorded_app(predictor, max_images=2000)
    jpeg = assets[1][1].read_bytes()
    truncated = jpeg[:len(jpeg) // 2]
    requests = [{"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1500],
                                      "data": [""] * 1500}]}},  # 1,500 empty elements
                {"json": json_images([truncated] * 1500)},  # 1,500 images that fail to decode
                {"json": json_images([tiny_png()] * 3000)},  # over --max-images
                {"json": json_images([tiny_png()] * 3)}]  # a good one
    with TestClient(app) as client:
        caplog.clear()
        statuses = [client.post(INFER, **request).status_code for request in requests]
        gc.collect()  # an exception nobody retrieved is logged when its future is collected
    assert statuses == [400, 400, 413, 200]
    lines = [r for r in caplog.records if not r.name.startswith("httpx")]
    assert [r.name for r in lines] == ["resnets.serve"] * len(requests), [r.getMessage() for r in lines]
    assert all(INFER in r.getMessage() for r in lines)
    assert "--max-images" in lines[2].getMessage() and "empty image[0]" in lines[0].getMessage()


# -- the event loop stays free -------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["parse", "decode"])
def test_live_answers_while_a_slow_request_is_worked_on(predictor, monkeypatch, stage):
    """The request's parsing (or decoding) is held in its thread until the test has seen
    /v2/health/live answer; were that work on the event loop, live could not answer."""
    import resnets.serve.server as server_module
    import resnets.serve.v2 as v2_module

    module, name = (v2_module, "parse_request") if stage == "parse" else (server_module, "decode_to_uint8")
    real, gate, entered = getattr(module, name), threading.Event(), threading.Event()

    def held(*args):
        entered.set()
        gate.wait(20)
        return real(*args)

    monkeypatch.setattr(module, name, held)
    app, _ = recorded_app(predictor)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(client.post, INFER, json=json_images([tiny_png()]))
        assert entered.wait(20)
        try:
            live = pool.submit(client.get, "/v2/health/live").result(timeout=10)
            ready = client.get("/v2/health/ready")
        finally:
            gate.set()
        assert live.status_code == 200 and ready.status_code == 200
        assert slow.result(timeout=30).status_code == 200


def test_slow_explanations_never_hold_the_decode_threads(predictor, monkeypatch):
    """Two explanations held in progress (ScoreCAM takes minutes on a CPU) with one decode worker:
    an image request is still decoded and answered; the explanations run one at a time."""
    import resnets.serve.app as app_module

    gate, running, most = threading.Event(), [], [0]

    def held(*args, **kwargs):
        running.append(1)
        most[0] = max(most[0], len(running))
        gate.wait(20)
        running.pop()
        raise ServeError(400, "held explanation")

    monkeypatch.setattr(app_module, "explain_image", held)
    app, _ = recorded_app(predictor, workers=1)
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(client.post, f"/explain/{NAME}", content=tiny_png()) for _ in range(2)]
        wait_until(lambda: running)
        try:
            answered = pool.submit(client.post, f"/predictions/{NAME}", content=tiny_png()).result(timeout=15)
        finally:
            gate.set()
        assert answered.status_code == 200
        assert [s.result(timeout=30).status_code for s in slow] == [400, 400] and most[0] == 1


# -- supervised workers --------------------------------------------------------------------------
def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies by design
def test_the_batcher_restarts_a_dead_worker_and_answers_the_waiting_requests():
    calls = []

    def model(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        if len(calls) == 1:
            raise SystemExit("dies")
        return torch.zeros(len(batch), 3)

    batcher = DynamicBatcher(model)
    try:
        with pytest.raises(RuntimeError, match="worker thread failed"):
            batcher.submit(torch.zeros(1, 3, 2, 2)).result(timeout=30)
        wait_until(lambda: not batcher.alive)
        assert batcher.submit(torch.zeros(2, 3, 2, 2)).result(timeout=30).shape == (2, 3)  # restarted by submit
        assert batcher.alive and batcher.restarts == 1
    finally:
        batcher.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies by design
def test_the_pool_restarts_a_dead_thread():
    pool = SupervisedPool(2, name="test-pool")
    try:
        with pytest.raises(SystemExit):
            pool.submit(lambda: (_ for _ in ()).throw(SystemExit("dies"))).result(timeout=30)
        wait_until(lambda: not pool.alive)
        assert pool.ensure_running() == 1 and pool.alive and pool.restarts == 1
        assert [pool.submit(lambda i=i: i * i).result(timeout=30) for i in range(5)] == [0, 1, 4, 9, 16]
    finally:
        pool.shutdown()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies by design
def test_ready_is_503_until_a_dead_worker_is_back(predictor):
    app, recording = recorded_app(predictor, watchdog_s=3600.0)  # no watchdog: the test restarts it
    server = app.state.server
    with TestClient(app) as client:
        assert client.get("/v2/health/ready").status_code == 200
        recording.die_next = True
        failed = client.post(f"/predictions/{NAME}", content=tiny_png())
        assert failed.status_code == 500 and "restarted" in failed.json()["error"]
        wait_until(lambda: not server.batcher.alive)
        for path in ("/v2/health/ready", f"/v2/models/{NAME}/ready"):
            down = client.get(path)
            assert down.status_code == 503 and "restarted" in down.json()["error"], down.text
        assert server.supervise() == 1
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
        assert client.post(f"/predictions/{NAME}", content=tiny_png()).status_code == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies by design
def test_the_watchdog_brings_ready_back_without_a_request(predictor):
    app, recording = recorded_app(predictor, watchdog_s=0.05)
    server = app.state.server
    with TestClient(app) as client:
        recording.die_next = True
        assert client.post(f"/predictions/{NAME}", content=tiny_png()).status_code == 500
        deadline = time.monotonic() + 20
        while client.get("/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v2/health/ready").status_code == 200
        assert server.batcher.restarts == 1
        assert client.post(f"/predictions/{NAME}", content=tiny_png()).status_code == 200


# -- a real server under hostile requests ----------------------------------------------------------
class Prober:
    """Polls /v2/health/live and /v2/health/ready from a thread: (path, status, seconds) each."""

    def __init__(self, url: str) -> None:
        self.url, self.results, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                for path in ("/v2/health/live", "/v2/health/ready"):
                    start = time.monotonic()
                    try:
                        status = client.get(path).status_code
                    except httpx.TransportError:
                        status = 0
                    self.results.append((path, status, time.monotonic() - start))
                time.sleep(0.25)

    def finish(self) -> list[tuple[str, int, float]]:
        self.stop.set()
        self.thread.join(60)
        return self.results


@pytest.mark.serial
def test_a_real_server_answers_a_normal_request_at_once_after_hostile_ones(assets, tmp_path):
    model, photos = assets
    running = RunningServer(model, "--max-images", "3000", "--log-level", "info", "--workers", "2",
                            log=tmp_path / "server.log")
    normal = photos[0].read_bytes()
    try:
        prober = Prober(running.url)
        with httpx.Client(base_url=running.url, timeout=120) as client:
            swarm = client.post(INFER, json=json_images([tiny_png()] * 20_000))  # 20,000 1x1 PNGs
            assert swarm.status_code == 413 and "--max-images" in swarm.json()["error"]
            for shape, status in [(5_000_000, 413), (1, 400)]:
                body, headers = binary_request(struct.pack("<I", 0) * 5_000_000, shape)
                refused = client.post(INFER, content=body, headers=headers)
                assert refused.status_code == status, refused.text
            with ThreadPoolExecutor(1) as pool:  # 2,500 tiny images, admitted: run in batches
                many = pool.submit(client.post, INFER, json=json_images([tiny_png()] * 2500))
                time.sleep(0.5)
                start = time.monotonic()
                answer = client.post(f"/predictions/{NAME}", content=normal)
                seconds = time.monotonic() - start
                assert answer.status_code == 200 and seconds < 10, (answer.text, seconds)
                done = many.result(timeout=300)
                assert done.status_code == 200, done.text
                assert {o["name"]: o for o in done.json()["outputs"]}["labels"]["shape"][0] == 2500
            start = time.monotonic()
            after = client.post(f"/predictions/{NAME}", content=normal)
            assert after.status_code == 200 and time.monotonic() - start < 10
            assert after.json() == answer.json()
        probes = prober.finish()
    finally:
        status = running.stop()
    assert status == 0
    assert probes and all(code == 200 for _, code, _ in probes), [p for p in probes if p[1] != 200][:5]
    assert max(seconds for _, _, seconds in probes) < 10
    infer_lines = [line for line in running.stderr().splitlines() if INFER in line]
    assert len(infer_lines) == 4, infer_lines[:10]  # one line per request, none per element


# -- properties of the v2 body parser --------------------------------------------------------------
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = Limits(max_images=8, max_pixels=4 * 4 * 8)
SIZE = 4
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=30)
SHAPES = st.one_of(JSON, st.lists(st.integers(min_value=-3, max_value=10**12), max_size=5),
                   st.lists(st.sampled_from([1, 2, 3, SIZE, 9, 10**9]), min_size=1, max_size=5))
SPECS = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["image", "input"]), JSON), "datatype": st.sampled_from(["BYTES", "FP32"]),
    "shape": SHAPES, "data": st.one_of(JSON, st.lists(st.one_of(st.text(max_size=12), st.floats(), JSON),
                                                       max_size=70)),
    "parameters": st.one_of(JSON, st.fixed_dictionaries({"binary_data_size": st.one_of(
        st.integers(min_value=-5, max_value=400), JSON)}))})


def length_prefixed(elements: list[bytes], tail: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements) + tail


BINARY = st.one_of(st.binary(max_size=300),
                   st.builds(length_prefixed, st.lists(st.binary(max_size=20), max_size=12), st.binary(max_size=6)))


def only_client_errors(call) -> object:
    """``call()``'s result, or a :class:`ServeError` with a 4xx status: nothing else may come out."""
    try:
        return call()
    except ServeError as error:
        assert 400 <= error.status < 500 and error.message, (error.status, error.message)
        return None


@FUZZ
@given(body=st.binary(max_size=400), length=st.one_of(st.none(), st.text(max_size=6),
                                                      st.integers(0, 500).map(str)))
def test_split_body_refuses_arbitrary_bytes_with_a_4xx(body, length):
    answer = only_client_errors(lambda: split_body(body, length))
    if answer is not None:
        header, binary = answer
        assert isinstance(header, dict) and isinstance(binary, bytes)


@FUZZ
@given(spec=SPECS, binary=BINARY)
def test_image_elements_and_float_tensor_refuse_arbitrary_json_with_a_4xx(spec, binary):
    images = only_client_errors(lambda: image_elements(spec, binary, LIMITS))
    if images is not None:
        assert 1 <= len(images) <= LIMITS.max_images and all(isinstance(i, bytes) and i for i in images)
    tensor = only_client_errors(lambda: float_tensor(spec, binary, SIZE, LIMITS))
    if tensor is not None:
        assert tensor.shape[1:] == (3, SIZE, SIZE) and 1 <= len(tensor) <= LIMITS.max_images
        assert torch.isfinite(tensor).all()


@FUZZ
@given(header=st.one_of(JSON, st.fixed_dictionaries({"inputs": st.lists(SPECS, max_size=2)}, optional={
    "outputs": JSON, "parameters": JSON, "id": JSON})), binary=BINARY, binary_header=st.booleans())
def test_parse_request_refuses_arbitrary_requests_with_a_4xx(header, binary, binary_header):
    text = json.dumps(header).encode()
    body = text + binary if binary_header else text
    only_client_errors(lambda: parse_request(body, str(len(text)) if binary_header else None, LIMITS, SIZE))


@pytest.mark.parametrize("topk", [0, -1, "3", 2.5, True])
def test_a_bad_v2_topk_is_refused_before_any_image_is_decoded(topk, monkeypatch):
    """It was checked when the answer was built, after decoding and running up to 256 images."""
    import resnets.serve.v2 as v2_module

    def no_decoding(*args):
        raise AssertionError("image elements read before parameters.topk was checked")

    monkeypatch.setattr(v2_module, "image_elements", no_decoding)
    header = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}],
              "parameters": {"topk": topk}}
    with pytest.raises(ServeError) as refused:
        parse_request(json.dumps(header).encode(), None, LIMITS, SIZE)
    assert refused.value.status == 400 and "topk" in refused.value.message
