"""Load test of `resnets serve` against LitServe: concurrent clients sending real JPEGs.

Load mode (default): a ResNet-50 with random-init weights (throughput does not depend on the
weights) is served three ways, one at a time, each with the same inference backend (the
``auto`` choice the first server makes, cached, is handed to the others by name):

- ``resnets_default``: ``resnets serve`` at its defaults (``--backend`` aside);
- ``resnets_max_batch_1``: the same with ``--max-batch 1`` (no batching);
- ``litserve``: the same model prepared by ``resnets.predict.load_for_inference`` (the same
  optimized module or onnxruntime session) behind a LitServe ``LitAPI`` with LitServe's own
  batching (``max_batch_size``, ``batch_timeout``; ``--litserve-batch``,
  ``--litserve-timeout-ms``), CPU accelerator, one worker: the request is JSON with the JPEG in
  base64, as LitServe's image examples send it; ``decode_request`` decodes and crops as resnets
  does, ``predict`` runs the batch, the answer is the same top-5.

At each of ``--clients`` (default 1, 4 and 16 concurrent clients) every server gets a warm-up
of two requests per client, then ``--requests`` requests. Prints one JSON document on stdout
(throughput, p50/p99 latency and errors per server and client count; the ratios of the default
to the other two; whether the targets hold: the default at least 1.0x ``--max-batch 1`` and
1.0x LitServe in throughput, its p99 no worse than LitServe's) and the same side by side as a
table on stderr. ``--bench`` adds ``resnets.bench``'s batch-32 images/s of the same backend.

Soak mode (``--soak``): ``--requests`` (default 5000) requests, every third one a bad input
(non-image, truncated JPEG, a 100,000^2-pixel PNG header, empty body, wrong content type, a v2
tensor of the wrong shape); reports 5xx answers (must be 0), good answers whose top-1 differs
from the same model run in-process (must be 0) and the server's RSS after warm-up and after
the soak (must stay within 10 %).

    PYTHONPATH=src python benchmarks/serve_load.py --requests 240
    PYTHONPATH=src python benchmarks/serve_load.py --soak --model resnet18
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

SHARED_DATA = os.environ.get("RESNETS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(SHARED_DATA) / "imagenette-224-train.zip"
TARGETS = {"default_over_max_batch_1": 1.0, "default_over_litserve": 1.0, "p99_litserve_over_default": 1.0}
SERVERS = ("resnets_default", "resnets_max_batch_1", "litserve")


def read_jpegs(count: int) -> list[bytes]:
    with zipfile.ZipFile(DATA) as archive:
        names = [n for n in sorted(archive.namelist()) if n.lower().endswith((".jpg", ".jpeg"))]
        step = max(1, len(names) // count)
        return [archive.read(n) for n in names[::step][:count]]


def save_random_model(name: str, folder: Path) -> Path:
    import torch

    from resnets import create_model
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    return save_weights(folder / f"{name}.safetensors", create_model(name).eval())


class Server:
    """``resnets serve`` in a process of its own; ``backend`` is what it says it runs."""

    path = "/predictions/m"
    health = "/v2/health/ready"

    def __init__(self, weights: Path, *args: str) -> None:
        command = [sys.executable, "-m", "resnets", "serve", str(weights), "--port", "0", "--name", "m", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 300
        self.url = self.backend = None
        while self.url is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the server did not start: {command}")
            if select.select([self.process.stdout], [], [], 1.0)[0]:
                match = re.search(r"\((\S+)\) on (http://[\d.]+:\d+)/", self.process.stdout.readline())
                self.backend, self.url = match.groups() if match else (None, None)
        wait_ready(self.url + self.health, self.process)

    def request(self, jpeg: bytes) -> dict:
        return {"content": jpeg, "headers": {"Content-Type": "image/jpeg"}}

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"the server at {url} did not become ready")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LitServeServer(Server):
    """The same model behind LitServe (:func:`litserve_main`, in a process of its own)."""

    path = "/predict"
    health = "/health"

    def __init__(self, weights: Path, backend: str, max_batch: int, timeout_ms: float) -> None:
        port = free_port()
        command = [sys.executable, __file__, "--litserve-worker", str(weights), "--backend", backend,
                   "--port", str(port), "--litserve-batch", str(max_batch), "--litserve-timeout-ms", str(timeout_ms)]
        self.process = subprocess.Popen(command, start_new_session=True)
        self.url, self.backend = f"http://127.0.0.1:{port}", backend
        wait_ready(self.url + self.health, self.process)

    def request(self, jpeg: bytes) -> dict:
        return {"json": {"image": base64.b64encode(jpeg).decode("ascii")}}

    def stop(self) -> int:
        os.killpg(self.process.pid, signal.SIGTERM)  # LitServe's API and inference processes
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(60)


def litserve_main(weights: str, backend: str, port: int, max_batch: int, timeout_ms: float) -> None:
    """Serve ``weights`` through LitServe: the model resnets would serve, LitServe's batching."""
    import litserve as ls

    api = ResNetAPI(weights, backend, max_batch_size=max_batch, batch_timeout=timeout_ms / 1e3)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


try:  # LitServe pickles the API into its worker process: the class must live at module level
    import litserve
except ImportError:  # soak mode, and the resnets servers, need no LitServe
    litserve = None

if litserve is not None:
    class ResNetAPI(litserve.LitAPI):
        """ResNet-50 as resnets prepares it (``load_for_inference``: the same backend), LitServe's way.

        (``decode_request``/``encode_response`` carry no annotations: LitServe reads them as the
        request and response types.)"""

        def __init__(self, weights: str, backend: str, **batching: float) -> None:
            super().__init__(**batching)
            self.weights, self.backend = weights, backend

        def setup(self, device):
            from resnets.predict import load_for_inference

            self.predictor = load_for_inference(self.weights, backend=self.backend)

        def decode_request(self, request):
            from resnets.data.images import decode_image

            image = decode_image(base64.b64decode(request["image"]), "request")
            return self.predictor.preprocessing.to_uint8(image)

        def batch(self, inputs):
            import torch

            return torch.stack(inputs)

        def predict(self, batch):
            import torch

            from resnets.metrics import probabilities

            with torch.inference_mode():
                return probabilities(self.predictor.model(self.predictor.normalise(batch)))

        def unbatch(self, output):
            return list(output)

        def encode_response(self, probs):
            from resnets.metrics import top_classes

            top = top_classes(probs[None], self.predictor.class_names, 5)[0]
            return {t["class"]: t["probability"] for t in top}


def fire(url: str, requests: list[tuple[str, dict]], clients: int) -> tuple[list[tuple[float, int, bytes]], float]:
    """Send ``requests`` (path, httpx keyword arguments) from ``clients`` threads; (latency, status, body) each."""
    import httpx

    results: list = [None] * len(requests)
    counter = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                path, kwargs = requests[i]
                start = time.perf_counter()
                try:
                    response = session.post(path, **kwargs)
                    results[i] = (time.perf_counter() - start, response.status_code, response.content)
                except httpx.TransportError as error:
                    results[i] = (time.perf_counter() - start, 0, str(error).encode())

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def summarise(results: list[tuple[float, int, bytes]], seconds: float) -> dict:
    latencies = sorted(r[0] for r in results)
    return {"requests": len(results), "seconds": round(seconds, 2),
            "throughput_rps": round(len(results) / seconds, 2),
            "latency_p50_ms": round(1e3 * statistics.median(latencies), 1),
            "latency_p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "errors": sum(1 for r in results if r[1] != 200)}


def image_requests(jpegs: list[bytes], count: int, server: Server | None = None) -> list[tuple[str, dict]]:
    """``count`` requests cycling through ``jpegs``, in ``server``'s form (default: resnets serve's)."""
    if server is None:
        return [(Server.path, {"content": jpegs[i % len(jpegs)], "headers": {"Content-Type": "image/jpeg"}})
                for i in range(count)]
    return [(server.path, server.request(jpegs[i % len(jpegs)])) for i in range(count)]


def bench_rate(model: str, backend: str) -> float:
    from resnets.bench import benchmark

    report = benchmark([model], [backend], [32], repeats=3, warmup=1)
    return next(r.images_per_s for r in report.rows if r.backend == backend)


def start_server(kind: str, weights: Path, backend: str, args: argparse.Namespace) -> Server:
    if kind == "litserve":
        return LitServeServer(weights, backend, args.litserve_batch, args.litserve_timeout_ms)
    flags = ["--backend", backend] + (["--max-batch", "1"] if kind == "resnets_max_batch_1" else [])
    return Server(weights, *flags)


def load_mode(args: argparse.Namespace, weights: Path, jpegs: list[bytes], backend: str) -> dict:
    """Each server in turn, at each client count: warm-up, then ``--requests`` requests."""
    rows: dict[str, dict] = {}
    for kind in SERVERS:
        server = start_server(kind, weights, backend, args)
        backend = server.backend or backend  # auto's choice, passed on by name to the others
        rows[kind] = {"backend": server.backend}
        try:
            for clients in args.clients:
                fire(server.url, image_requests(jpegs, 2 * clients, server), clients)
                rows[kind][str(clients)] = summarise(*fire(server.url, image_requests(jpegs, args.requests, server),
                                                           clients))
        finally:
            rows[kind]["exit_status"] = server.stop()
    result = {"servers": rows, "comparison": compare(rows, args.clients)}
    result["targets_met"] = all(all(c["targets_met"].values()) for c in result["comparison"].values())
    if args.bench:
        result["bench_batch32_images_per_s"] = round(bench_rate(args.model, backend), 2)
    return result


def compare(rows: dict[str, dict], clients: list[int]) -> dict:
    """Per client count: the default's throughput over the other two, LitServe's p99 over the default's."""
    comparison = {}
    for count in map(str, clients):
        default, single, lit = (rows[kind][count] for kind in SERVERS)
        ratios = {"default_over_max_batch_1": round(default["throughput_rps"] / single["throughput_rps"], 3),
                  "default_over_litserve": round(default["throughput_rps"] / lit["throughput_rps"], 3),
                  "p99_litserve_over_default": round(lit["latency_p99_ms"] / default["latency_p99_ms"], 3)}
        comparison[count] = {**ratios, "targets_met": {k: v >= TARGETS[k] for k, v in ratios.items()}}
    return comparison


def table(result: dict, clients: list[int]) -> str:
    """The three servers side by side: req/s, p50/p99 ms, errors; then the ratios."""
    lines = [f"{'clients':>7}  " + "  ".join(f"{kind:>30}" for kind in SERVERS) + "  default/mb1  default/lit  "
             "p99 lit/default"]
    for count in map(str, clients):
        cells = []
        for kind in SERVERS:
            row = result["servers"][kind][count]
            cells.append(f"{row['throughput_rps']:7.2f} req/s {row['latency_p50_ms']:6.0f}/"
                         f"{row['latency_p99_ms']:6.0f} ms" + (f" {row['errors']}err" if row["errors"] else ""))
        ratio = result["comparison"][count]
        lines.append(f"{count:>7}  " + "  ".join(f"{cell:>30}" for cell in cells)
                     + f"  {ratio['default_over_max_batch_1']:10.2f}x  {ratio['default_over_litserve']:10.2f}x  "
                       f"{ratio['p99_litserve_over_default']:14.2f}x")
    return "\n".join(lines)


def bad_inputs(jpeg: bytes, size: int) -> list[tuple[str, dict]]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, size - 1, size], "data": [0.0] * 4}
    return [("/predictions/m", {"content": b"definitely not an image"}),
            ("/predictions/m", {"content": jpeg[:len(jpeg) // 2]}),
            ("/predictions/m", {"content": bomb}),
            ("/predictions/m", {"content": b""}),
            ("/predictions/m", {"content": jpeg, "headers": {"Content-Type": "text/plain"}}),
            ("/v2/models/m/infer", {"json": {"inputs": [tensor]}})]


def expected_top1(weights: Path, jpegs: list[bytes], backend: str) -> list[str]:
    import torch

    from resnets.data.images import decode_image
    from resnets.predict import load_for_inference

    predictor = load_for_inference(weights, backend=backend)
    batch = torch.cat([predictor.normalise(predictor.preprocessing.to_uint8(decode_image(j, "x"))[None])
                       for j in jpegs])
    with torch.inference_mode():
        return [predictor.class_names[i] for i in predictor.model(batch).argmax(1).tolist()]


def soak_mode(args: argparse.Namespace, weights: Path, jpegs: list[bytes], backend: str) -> dict:
    expected = expected_top1(weights, jpegs, backend)
    from resnets.models import get_model_spec

    bad = bad_inputs(jpegs[0], get_model_spec(args.model).input_size)
    requests, truth = [], []
    for i in range(args.requests):
        if i % 3 == 2:
            requests.append(bad[(i // 3) % len(bad)])
            truth.append(None)
        else:
            requests.append(image_requests(jpegs, i + 1)[i])
            truth.append(expected[i % len(jpegs)])
    flags = [item for flag, value in (("--max-batch", args.max_batch), ("--max-wait-ms", args.max_wait_ms),
                                      ("--workers", args.workers)) if value is not None for item in (flag, str(value))]
    server = Server(weights, "--backend", backend, *flags)
    clients = max(args.clients)
    try:
        fire(server.url, image_requests(jpegs, 4 * clients), clients)
        rss_warm = server.rss_mb()
        results, seconds = fire(server.url, requests, clients)
        rss_after = server.rss_mb()
    finally:
        status = server.stop()
    five_xx = sum(1 for _, code, _ in results if code >= 500 or code == 0)
    wrong = sum(1 for (_, code, body), want in zip(results, truth)
                if want is not None and (code != 200 or next(iter(json.loads(body))) != want))
    bad_not_4xx = sum(1 for (_, code, _), want in zip(results, truth) if want is None and not 400 <= code < 500)
    growth = rss_after / rss_warm - 1
    return {"requests": len(results), "bad_requests": truth.count(None), "seconds": round(seconds, 1),
            "responses_5xx_or_dropped": five_xx, "wrong_good_answers": wrong, "bad_not_answered_4xx": bad_not_4xx,
            "rss_after_warmup_mb": round(rss_warm, 1), "rss_after_soak_mb": round(rss_after, 1),
            "rss_growth": round(growth, 3), "exit_status": status,
            "passed": five_xx == 0 and wrong == 0 and bad_not_4xx == 0 and growth <= 0.10 and status == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--requests", type=int, help="requests per server and client count (default 240; soak 5000)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent clients (soak: the first)")
    parser.add_argument("--max-batch", type=int, help="soak: the server's --max-batch (default: its own)")
    parser.add_argument("--max-wait-ms", type=float, help="soak: the server's --max-wait-ms (default: its own)")
    parser.add_argument("--workers", type=int, help="soak: the server's --workers (default: its own)")
    parser.add_argument("--litserve-batch", type=int, default=32, help="LitServe's max_batch_size (default 32, "
                        "as resnets serve's --max-batch)")
    parser.add_argument("--litserve-timeout-ms", type=float, default=10.0, help="LitServe's batch_timeout in ms "
                        "(default 10)")
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs cycled through")
    parser.add_argument("--bench", action="store_true", help="also resnets.bench's batch-32 rate of the backend")
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--litserve-worker", metavar="WEIGHTS", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.litserve_worker:
        return litserve_main(args.litserve_worker, args.backend, args.port, args.litserve_batch,
                             args.litserve_timeout_ms)
    args.requests = args.requests or (5000 if args.soak else 240)
    args.clients = [int(c) for c in args.clients.split(",")]
    from resnets.inference import check_backend

    backend = check_backend(args.backend)
    jpegs = read_jpegs(args.images)
    with tempfile.TemporaryDirectory() as folder:
        weights = save_random_model(args.model, Path(folder))
        run = soak_mode if args.soak else load_mode
        result = run(args, weights, jpegs, backend)
    if not args.soak:
        print(table(result, args.clients), file=sys.stderr)
    print(json.dumps({"model": args.model, "weights": "random init (throughput only)", "backend": backend,
                      "clients": args.clients, "requests": args.requests, "cpus": os.cpu_count(),
                      "mode": "soak" if args.soak else "load", **result}, indent=1))


if __name__ == "__main__":
    main()
