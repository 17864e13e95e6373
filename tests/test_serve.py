"""`resnets serve`: both protocols agree with `resnets predict`, batching, bad input, token, SIGTERM.

A real server (`python -m resnets serve`, uvicorn, 127.0.0.1, a free port) answers most tests;
the body-size limit while streaming and the token are checked in-process (FastAPI's TestClient).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from conftest import randomize_batchnorm  # noqa: E402

CLASSES = ["apple", "bus", "cloud", "dolphin", "elephant", "forest"]
NAME = "tiny"
START_TIMEOUT = 60.0


# -- fixtures ------------------------------------------------------------------------------------
def save_tiny_model(path: Path) -> Path:
    """A CIFAR-size ResNet-20 with six named classes and non-trivial BatchNorm statistics."""
    import torch

    from resnets.factory import create_model
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("resnet20", num_classes=len(CLASSES)), seed=1)
    return save_weights(path, model, class_names=CLASSES)


def write_images(folder: Path) -> list[Path]:
    """CIFAR-size photos (smooth random colour fields), PNG and JPEG, one not square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, fmt) in enumerate([((32, 32), "PNG"), ((32, 32), "JPEG"), ((48, 40), "JPEG"), ((32, 32), "PNG")]):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        path = folder / f"photo{i}.{fmt.lower().replace('jpeg', 'jpg')}"
        image.save(path, fmt)
        paths.append(path)
    return paths


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


class RunningServer:
    """`resnets serve` in a child process, bound to 127.0.0.1 on a free port."""

    def __init__(self, model: Path, *args: str, name: str | None = NAME, log: Path | None = None) -> None:
        """``log``: a file for the server's stderr (a server logging every request would fill a pipe)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        named = ["--name", name] if name else []  # None: the model's architecture names it
        command = [sys.executable, "-m", "resnets", "serve", str(model), "--port", "0", *named, *args]
        self.log = log
        stderr = subprocess.PIPE if log is None else open(log, "w")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        if log is not None:
            stderr.close()
        self.url = self._read_url()
        self.wait_ready()

    def _read_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
                if match:
                    return match.group(1)
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.stderr()}")
        self.stop()
        raise AssertionError("the server did not start in time")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server never became ready")

    def stderr(self) -> str:
        """What the server wrote on stderr (read once it has exited)."""
        return self.log.read_text() if self.log is not None else self.process.stderr.read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("serve")
    return save_tiny_model(root / "tiny.safetensors"), write_images(root / "images")


@pytest.fixture(scope="module")
def server(assets):
    model, _ = assets
    running = RunningServer(model, "--max-wait-ms", "50", "--max-body-mb", "1", "--workers", "2")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def expected(assets) -> dict[str, list[dict]]:
    """`resnets predict --json` on the images: name -> top-5 [{class, probability}]."""
    model, images = assets
    out = subprocess.run([sys.executable, "-m", "resnets", "predict", str(model), *map(str, images), "--json",
                          "--topk", "5"], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return {Path(r["path"]).name: r["top"] for r in json.loads(out)}


def assert_same_top(answer: list[tuple[str, float]], top: list[dict]) -> None:
    assert [name for name, _ in answer] == [t["class"] for t in top]
    np.testing.assert_allclose([p for _, p in answer], [t["probability"] for t in top], atol=1e-4)


# -- protocols ----------------------------------------------------------------------------------
def test_torchserve_requests_answer_as_predict(server, assets, expected):
    _, images = assets
    for path in images:
        raw = httpx.post(f"{server.url}/predictions/{NAME}", content=path.read_bytes(), timeout=30)
        form = httpx.post(f"{server.url}/predictions/{NAME}", files={"data": (path.name, path.read_bytes())},
                          timeout=30)
        for response in (raw, form):
            assert response.status_code == 200, response.text
            assert_same_top(list(response.json().items()), expected[path.name])


def test_v2_requests_answer_as_predict(server, assets, expected):
    _, images = assets
    metadata = httpx.get(f"{server.url}/v2/models/{NAME}", timeout=10).json()
    assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
        "image": ("BYTES", [-1]), "input": ("FP32", [-1, 3, 32, 32])}
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASSES)]} in metadata["outputs"]

    payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                           "data": [base64.b64encode(p.read_bytes()).decode() for p in images]}]}
    as_json = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=payload, timeout=30)
    assert as_json.status_code == 200, as_json.text

    # the binary-data extension: JSON header, then each image prefixed by its length
    blob = b"".join(struct.pack("<I", len(p.read_bytes())) + p.read_bytes() for p in images)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    as_binary = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=header + blob, timeout=30,
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "Content-Type": "application/octet-stream"})
    assert as_binary.status_code == 200, as_binary.text
    for response in (as_json, as_binary):
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        probs = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
        labels = np.asarray(outputs["labels"]["data"]).reshape(outputs["labels"]["shape"])
        assert probs.shape == (len(images), len(CLASSES)) and labels.shape == (len(images), 5)
        for row, (path, names) in enumerate(zip(images, labels)):
            answer = [(str(n), float(probs[row, CLASSES.index(n)])) for n in names]
            assert_same_top(answer, expected[path.name])


def test_v2_fp32_tensor_input(server, assets, expected):
    """An already-normalised [N, 3, S, S] tensor gives what the image gives."""
    from resnets.data.images import decode_image
    from resnets.preprocessing import Preprocessing
    from resnets.weights.format import load_weights_file

    model, images = assets
    preprocessing = Preprocessing.from_dict(load_weights_file(model).preprocessing.to_dict())
    batch = np.stack([preprocessing.transform()(decode_image(p.read_bytes(), p.name)).numpy() for p in images[:2]])
    payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape),
                           "data": batch.reshape(-1).tolist()}], "outputs": [{"name": "labels"}],
               "parameters": {"topk": 3}}
    response = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    (labels,) = response.json()["outputs"]
    assert labels["name"] == "labels" and labels["shape"] == [2, 3]
    assert labels["data"] == [t["class"] for p in images[:2] for t in expected[p.name][:3]]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "application/octet-stream",
                                          "image/png", "text/plain"])
def test_an_image_body_is_an_image_whatever_its_declared_type(server, assets, expected, content_type):
    """As TorchServe: the bytes decide (curl --data-binary declares a form; a JPEG may be labelled PNG)."""
    _, images = assets
    path = images[1]  # a JPEG
    headers = {"Content-Type": content_type} if content_type else {}
    for url in (f"/predictions/{NAME}", f"/explain/{NAME}"):
        request = httpx.Request("POST", f"{server.url}{url}", content=path.read_bytes(), headers=headers)
        assert request.headers.get("content-type") == content_type  # sent as declared, nothing added
        with httpx.Client(timeout=60) as client:
            response = client.send(request)
        assert response.status_code == 200, f"{url} {content_type}: {response.text}"
        if url.startswith("/predictions"):
            assert_same_top(list(response.json().items()), expected[path.name])
        else:
            assert response.headers["content-type"] == "image/png"


# -- multi-label --------------------------------------------------------------------------------
def _sigmoid_probs(model, images: list[Path]):
    """The model's own sigmoid probabilities on the images, through its preprocessing record."""
    import torch

    from resnets.data.images import decode_image

    batch = torch.stack([model.preprocessing.transform()(decode_image(p.read_bytes(), p.name)) for p in images])
    with torch.no_grad():
        return model.eval()(batch).sigmoid().numpy()


def _uneven_threshold(probs: np.ndarray) -> float:
    """A threshold far from every probability that gives the images different numbers of labels."""
    values = np.unique(probs)
    middles = (values[1:] + values[:-1]) / 2
    uneven = [(gap, t) for gap, t in zip(np.diff(values) / 2, middles)
              if len({int((row >= t).sum()) for row in probs}) > 1 and 0 < t < 1]
    gap, threshold = max(uneven)
    assert gap > 1e-4, "no threshold clear of the probabilities"
    return float(threshold)


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory, assets):
    """A multi-label model saved with a recorded threshold, and per image its labels at or above it
    (class, probability; most probable first), computed from the reloaded model's own logits."""
    import torch

    from resnets.factory import create_model, load_model
    from resnets.multilabel import mark_multi_label
    from resnets.weights.format import save_weights

    _, images = assets
    torch.manual_seed(3)
    model = randomize_batchnorm(create_model("resnet20", num_classes=len(CLASSES)), seed=4)
    threshold = _uneven_threshold(_sigmoid_probs(model, images))
    path = save_weights(tmp_path_factory.mktemp("multi") / "multi.safetensors",
                        mark_multi_label(model, threshold), class_names=CLASSES)
    probs = _sigmoid_probs(load_model(path), images)
    labels = {p.name: sorted(((CLASSES[c], float(q)) for c, q in enumerate(row) if q >= threshold),
                             key=lambda pair: -pair[1]) for p, row in zip(images, probs)}
    return path, threshold, probs, labels


def test_multi_label_model_answers_its_labels_at_or_above_its_threshold(multi_label, assets):
    from fastapi.testclient import TestClient

    from resnets.predict import load_for_inference
    from resnets.serve import ServeConfig, create_app

    path, threshold, probs, labels = multi_label
    _, images = assets
    assert len({len(v) for v in labels.values()}) > 1  # not a fixed k: the images carry different numbers
    app = create_app(load_for_inference(path, backend="eager"), ServeConfig(name=NAME, topk=2))
    with TestClient(app) as client:
        card = client.get("/card").json()
        assert card["multi_label"] is True and card["threshold"] == pytest.approx(threshold)
        for image in images:  # TorchServe style: {label: probability}, topk does not apply
            for url in (f"/predictions/{NAME}", f"/predictions/{NAME}?topk=1"):
                answer = client.post(url, content=image.read_bytes())
                assert answer.status_code == 200, answer.text
                assert [n for n, _ in labels[image.name]] == list(answer.json())
                np.testing.assert_allclose(list(answer.json().values()), [q for _, q in labels[image.name]],
                                           atol=1e-4)
        assert client.get(f"/v2/models/{NAME}").json()["outputs"][1] == {"name": "labels", "datatype": "BYTES",
                                                                         "shape": [-1, -1]}
        payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                               "data": [base64.b64encode(p.read_bytes()).decode() for p in images]}]}
        response = client.post(f"/v2/models/{NAME}/infer", json=payload)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    got = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_allclose(got, probs, atol=1e-4)  # independent sigmoids, not a softmax
    width = max(len(v) for v in labels.values())
    assert outputs["labels"]["shape"] == [len(images), width]
    assert outputs["labels"]["parameters"]["threshold"] == pytest.approx(threshold)
    rows = np.asarray(outputs["labels"]["data"]).reshape(len(images), width).tolist()
    for image, row in zip(images, rows):
        assert [n for n in row if n] == [n for n, _ in labels[image.name]]
        assert row[len(labels[image.name]):] == [""] * (width - len(labels[image.name]))


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_are_batched(server, assets, expected):
    _, images = assets
    before = httpx.get(f"{server.url}/metrics", timeout=10).text

    def ask(i: int) -> tuple[str, dict]:
        path = images[i % len(images)]
        return path.name, httpx.post(f"{server.url}/predictions/{NAME}", content=path.read_bytes(), timeout=60).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    for name, answer in answers:
        assert_same_top(list(answer.items()), expected[name])
    after = httpx.get(f"{server.url}/metrics", timeout=10).text
    batches = metric(after, "resnets_batch_size_count") - metric(before, "resnets_batch_size_count")
    singles = (metric(after, 'resnets_batch_size_bucket{le="1.0"}')
               - metric(before, 'resnets_batch_size_bucket{le="1.0"}'))
    images_run = metric(after, "resnets_batch_size_sum") - metric(before, "resnets_batch_size_sum")
    assert images_run == 16
    assert batches - singles >= 1, f"no batch of more than one image among {batches:.0f}"
    assert batches < 16
    assert metric(after, 'resnets_requests_total{endpoint="predictions"}') >= 16


# -- bad input ----------------------------------------------------------------------------------
def bad_requests(images: list[Path]) -> list[tuple[str, dict, int, str]]:
    """(what, httpx.request keyword arguments, expected status, words the error must contain)."""
    jpeg = images[1].read_bytes()
    predictions, infer = f"/predictions/{NAME}", f"/v2/models/{NAME}/infer"
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}
    pixel = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 200, 30)).save(pixel, "PNG")
    small = pixel.getvalue()
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 4}}]}).encode()
    empty_element = (header + struct.pack("<I", 0), {"Inference-Header-Content-Length": str(len(header))})
    return [
        ("not an image", {"url": predictions, "content": b"GIF? no, just some text"}, 400, "not an image"),
        ("truncated JPEG", {"url": predictions, "content": jpeg[:len(jpeg) // 2]}, 400, "truncated"),
        ("100,000 x 100,000 pixels", {"url": predictions, "content": png_header(100_000, 100_000)}, 413,
         "decompression bomb"),
        ("just over PIL's pixel limit (PIL only warns)", {"url": predictions, "content": png_header(10_000, 10_000)},
         413, "pixels"),
        ("empty body", {"url": predictions, "content": b""}, 400, "empty"),
        ("text declared as text", {"url": predictions, "content": b"a caption, not a photo",
                                   "headers": {"Content-Type": "text/plain"}}, 415, "content type"),
        ("form fields, not an image", {"url": predictions, "content": b"a=1&b=2",
                                       "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
         415, "not an image"),
        ("text declared as an image", {"url": predictions, "content": b"a caption, not a photo",
                                       "headers": {"Content-Type": "image/jpeg"}}, 400, "not an image"),
        ("multipart without 'data'", {"url": predictions, "files": {"image": ("a.jpg", jpeg)}}, 400, "'data'"),
        ("unknown model", {"url": "/predictions/resnet9000", "content": jpeg}, 404, "unknown model"),
        ("unknown v2 model", {"url": "/v2/models/resnet9000/infer", "json": {"inputs": [tensor]}}, 404,
         "unknown model"),
        ("tensor of the wrong shape", {"url": infer, "json": {"inputs": [{**tensor, "shape": [1, 3, 16, 16]}]}},
         400, "shape must be [N, 3, 32, 32]"),
        ("tensor with too few values", {"url": infer, "json": {"inputs": [{**tensor, "data": [0.0] * 10}]}},
         400, "3072 expected"),
        ("tensor of the wrong dtype", {"url": infer, "json": {"inputs": [{**tensor, "datatype": "INT64"}]}},
         400, "datatype"),
        ("tensor of strings", {"url": infer, "json": {"inputs": [{**tensor, "data": ["x"] * 3072}]}},
         400, "numbers"),
        ("invalid base64", {"url": infer, "json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                               "data": ["***"]}]}}, 400, "base64"),
        ("base64 of a non-image", {"url": infer, "json": {"inputs": [{"name": "image", "datatype": "BYTES",
                                                                      "shape": [1], "data": ["aGVsbG8="]}]}},
         400, "image[0]"),
        ("v2 body not JSON", {"url": infer, "content": b"{nope", "headers": {"Content-Type": "application/json"}},
         400, "not valid JSON"),
        ("v2 wrong content type", {"url": infer, "content": b"{}", "headers": {"Content-Type": "image/png"}},
         415, "content type"),
        ("unknown output", {"url": infer, "json": {"inputs": [tensor], "outputs": [{"name": "logits"}]}},
         400, "unknown output"),
        ("body over --max-body-mb", {"url": predictions, "content": b"\xff" * (2**20 + 10)}, 413, "limit"),
        ("257 images, over --max-images", {"url": infer, "json": {"inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [257], "data": [base64.b64encode(small).decode()] * 257}]}},
         413, "--max-images"),
        ("a zero-length binary element", {"url": infer, "content": empty_element[0], "headers": empty_element[1]},
         400, "empty image[0]"),
    ]


def test_bad_inputs_are_refused_and_the_server_keeps_answering(server, assets, expected):
    _, images = assets
    good = images[0]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for what, request, status, words in bad_requests(images):
            url = request.pop("url")
            try:
                response = client.post(url, **request)
            except httpx.TransportError:  # the server may close while a too-large body is still being sent
                if status != 413:
                    raise
                continue
            assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
            assert words.lower() in response.json()["error"].lower(), f"{what}: {response.json()}"
            ok = client.post(f"/predictions/{NAME}", content=good.read_bytes())
            assert ok.status_code == 200, f"after {what}: {ok.text}"
            assert_same_top(list(ok.json().items()), expected[good.name])
        metrics = client.get("/metrics").text
    assert 'resnets_request_errors_total{endpoint="predictions",status="413"}' in metrics
    assert server.process.poll() is None


def test_content_length_over_the_limit_is_refused_before_the_body(server):
    """The limit is applied to the declared length: nothing of the body needs to arrive."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {50 * 2**20}\r\n\r\n".encode())
        reply = b""
        while b"--max-body-mb" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    reply = reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 413") and "--max-body-mb" in reply


def test_a_client_that_leaves_mid_upload_is_a_499_not_a_server_error(server, assets, expected):
    """Starlette's ClientDisconnect used to reach the catch-all: a 500 in the metrics and an ERROR
    line with a traceback for what is the client's doing."""
    _, images = assets
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(2):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(f"POST /predictions/{NAME} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode() + b"\xff\xd8" * 500)
    deadline = time.time() + 10
    while time.time() < deadline:
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        if 'status="499"' in metrics:
            break
        time.sleep(0.2)
    assert 'resnets_request_errors_total{endpoint="predictions",status="499"}' in metrics, metrics
    assert 'status="500"' not in metrics
    ok = httpx.post(f"{server.url}/predictions/{NAME}", content=images[0].read_bytes(), timeout=30)
    assert ok.status_code == 200
    assert_same_top(list(ok.json().items()), expected[images[0].name])


@pytest.fixture(scope="module")
def in_process(assets):
    from resnets.predict import load_for_inference
    from resnets.serve import ServeConfig, create_app

    model, _ = assets
    predictor = load_for_inference(model, backend="eager")
    return predictor, create_app


def test_streamed_body_over_the_limit_and_token(in_process, assets, expected):
    from fastapi.testclient import TestClient

    from resnets.serve import ServeConfig

    predictor, create_app = in_process
    _, images = assets
    app = create_app(predictor, ServeConfig(name=NAME, max_body_mb=0.5, token="s3cret"))
    auth = {"Authorization": "Bearer s3cret"}

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(8):
            yield b"\0" * 2**17

    with TestClient(app) as client:
        assert client.get("/v2/health/live").status_code == 200  # health and the page stay open
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/").status_code == 200
        for path in (f"/predictions/{NAME}", f"/v2/models/{NAME}/infer", f"/explain/{NAME}"):
            refused = client.post(path, content=images[0].read_bytes())
            assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert client.get("/metrics").status_code == 401
        wrong = client.post(f"/predictions/{NAME}", content=images[0].read_bytes(),
                            headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        streamed = client.post(f"/predictions/{NAME}", content=chunks(), headers=auth)
        assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
        ok = client.post(f"/predictions/{NAME}", content=images[0].read_bytes(), headers=auth)
        assert ok.status_code == 200
        assert_same_top(list(ok.json().items()), expected[images[0].name])


def test_explain_answers_a_png_or_says_it_cannot(in_process, assets):
    from fastapi.testclient import TestClient

    from resnets.serve import ServeConfig

    predictor, create_app = in_process
    _, images = assets
    with TestClient(create_app(predictor, ServeConfig(name=NAME))) as client:
        response = client.post(f"/explain/{NAME}", content=images[2].read_bytes())
        try:
            import resnets.explain  # noqa: F401
        except ImportError:
            assert response.status_code == 501 and "explain" in response.json()["error"]
            return
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        overlay = Image.open(io.BytesIO(response.content))
        assert overlay.size[0] >= 40 and response.headers["X-Target-Class"] in CLASSES
        bad = client.post(f"/explain/{NAME}", content=b"not an image")
        assert bad.status_code == 400


# -- process life -------------------------------------------------------------------------------
def test_sigterm_answers_requests_in_flight_then_exits_0(assets, expected):
    model, images = assets
    running = RunningServer(model, "--max-wait-ms", "2000", "--backend", "eager")  # requests wait 2 s: in flight
    results: list[httpx.Response | BaseException] = []

    def ask(path: Path) -> None:
        try:
            results.append(httpx.post(f"{running.url}/predictions/{NAME}", content=path.read_bytes(), timeout=30))
        except BaseException as error:  # noqa: BLE001 - reported by the assertions below
            results.append(error)

    threads = [threading.Thread(target=ask, args=(p,)) for p in images[:3]]
    for thread in threads:
        thread.start()
    time.sleep(0.8)
    assert not results, "the requests should still be waiting in the batcher"
    running.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(f"{running.url}/v2/health/live", timeout=2)
    for thread in threads:
        thread.join(30)
    status = running.stop()
    assert status == 0, running.process.stderr.read()
    assert len(results) == 3 and all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
    assert {next(iter(r.json())) for r in results} <= set(CLASSES)


def test_cli_errors_are_one_line(assets, run_cli):
    model, _ = assets
    status, _, err = run_cli("serve", str(model), "--port", "70000")
    assert status == 2 and err.count("\n") == 1 and "--port" in err
    status, _, err = run_cli("serve", str(model.with_name("missing.safetensors")), "--port", "0")
    assert status == 2 and err.count("\n") == 1 and "missing.safetensors" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        status, _, err = run_cli("serve", str(model), "--port", str(taken.getsockname()[1]))
    assert status == 2 and err.count("\n") == 1 and "cannot listen" in err
    status, _, err = run_cli("serve", str(model), "--max-batch", "0")
    assert status == 2 and "--max-batch" in err
    for flag in ("--max-images", "--max-pixels"):
        status, _, err = run_cli("serve", str(model), flag, "0")
        assert status == 2 and err.count("\n") == 1 and flag in err
