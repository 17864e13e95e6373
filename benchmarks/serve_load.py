"""Load test of `resnets serve`: concurrent clients sending real JPEGs, against `resnets bench`.

Load mode (default): a ResNet-50 with random-init weights (throughput does not depend on the
weights) is served twice, with ``--max-batch 32`` and with ``--max-batch 1``; 16 client threads
send ``--requests`` JPEGs from Imagenette to each. The same backend's batch-32 images/s from
``resnets.bench`` is measured in the same run (server stopped meanwhile). Prints one JSON
document: throughput, p50/p99 latency, errors, the ratios and whether the targets are met
(>= 85 % of the bench number, >= 2x the max-batch-1 server).

Soak mode (``--soak``): ``--requests`` (default 5000) requests, every third one a bad input
(non-image, truncated JPEG, a 100,000^2-pixel PNG header, empty body, wrong content type, a v2
tensor of the wrong shape); reports 5xx answers (must be 0), good answers whose top-1 differs
from the same model run in-process (must be 0) and the server's RSS after warm-up and after
the soak (must stay within 10 %).

    PYTHONPATH=src python benchmarks/serve_load.py --requests 320
    PYTHONPATH=src python benchmarks/serve_load.py --soak --model resnet18
"""

from __future__ import annotations

import argparse
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
TARGETS = {"fraction_of_bench": 0.85, "speedup_over_max_batch_1": 2.0}


def read_jpegs(count: int) -> list[bytes]:
    with zipfile.ZipFile(DATA) as archive:
        names = [n for n in sorted(archive.namelist()) if n.lower().endswith((".jpg", ".jpeg"))]
        step = max(1, len(names) // count)
        return [archive.read(n) for n in names[::step][:count]]


def save_random_model(name: str, folder: Path) -> Path:
    import torch

    from resnets.models import create_model
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    return save_weights(folder / f"{name}.safetensors", create_model(name).eval())


class Server:
    def __init__(self, weights: Path, *args: str) -> None:
        command = [sys.executable, "-m", "resnets", "serve", str(weights), "--port", "0", "--name", "m", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        self.url = None
        while self.url is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the server did not start: {command}")
            if select.select([self.process.stdout], [], [], 1.0)[0]:
                match = re.search(r"on (http://[\d.]+:\d+)/", self.process.stdout.readline())
                self.url = match.group(1) if match else None
        import httpx

        while True:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


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


def image_requests(jpegs: list[bytes], count: int) -> list[tuple[str, dict]]:
    return [("/predictions/m", {"content": jpegs[i % len(jpegs)], "headers": {"Content-Type": "image/jpeg"}})
            for i in range(count)]


def bench_rate(model: str, backend: str) -> float:
    from resnets.bench import benchmark

    report = benchmark([model], [backend], [32], repeats=3, warmup=1)
    return next(r.images_per_s for r in report.rows if r.backend == backend)


def load_mode(args: argparse.Namespace, weights: Path, jpegs: list[bytes], backend: str) -> dict:
    requests = image_requests(jpegs, args.requests)
    warm = image_requests(jpegs, 2 * args.clients)
    rows = {}
    for label, max_batch in (("server", args.max_batch), ("server_max_batch_1", 1)):
        server = Server(weights, "--backend", backend, "--max-batch", str(max_batch),
                        "--max-wait-ms", str(args.max_wait_ms), "--workers", str(args.workers))
        try:
            fire(server.url, warm, args.clients)
            rows[label] = summarise(*fire(server.url, requests, args.clients))
        finally:
            rows[label]["exit_status"] = server.stop()
    bench = bench_rate(args.model, backend)
    fraction = rows["server"]["throughput_rps"] / bench
    speedup = rows["server"]["throughput_rps"] / rows["server_max_batch_1"]["throughput_rps"]
    return {**rows, "bench_batch32_images_per_s": round(bench, 2), "fraction_of_bench": round(fraction, 3),
            "speedup_over_max_batch_1": round(speedup, 2),
            "targets_met": {"fraction_of_bench": fraction >= TARGETS["fraction_of_bench"],
                            "speedup_over_max_batch_1": speedup >= TARGETS["speedup_over_max_batch_1"]}}


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
    server = Server(weights, "--backend", backend, "--max-batch", str(args.max_batch),
                    "--max-wait-ms", str(args.max_wait_ms), "--workers", str(args.workers))
    try:
        fire(server.url, image_requests(jpegs, 4 * args.clients), args.clients)
        rss_warm = server.rss_mb()
        results, seconds = fire(server.url, requests, args.clients)
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
    parser.add_argument("--requests", type=int, help="requests per server (default 320; soak 5000)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs cycled through")
    parser.add_argument("--soak", action="store_true")
    args = parser.parse_args()
    args.requests = args.requests or (5000 if args.soak else 320)
    from resnets.inference import check_backend

    backend = check_backend(args.backend)
    jpegs = read_jpegs(args.images)
    with tempfile.TemporaryDirectory() as folder:
        weights = save_random_model(args.model, Path(folder))
        run = soak_mode if args.soak else load_mode
        result = run(args, weights, jpegs, backend)
    print(json.dumps({"model": args.model, "weights": "random init (throughput only)", "backend": backend,
                      "clients": args.clients, "cpus": os.cpu_count(), "mode": "soak" if args.soak else "load",
                      **result}, indent=1))


if __name__ == "__main__":
    main()
