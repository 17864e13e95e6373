"""Soak test of `resnets serve` under hostile traffic (issue 24), beside a run without it.

A ResNet-50 with random-init weights (built without pretrained weights, saved with the project's
``save_weights``; no download) is served by a real ``resnets serve`` process. 16 client threads send,
for ``--minutes``, normal requests (one JPEG to ``/predictions``, two as a v2 JSON request) mixed
with hostile ones (``--hostile-share`` of the requests): 20,000 base64 1x1 PNGs in one request, a
20 MB body of 5,000,000 zero-length binary elements (declared as 5,000,000 and as 1), a
100,000^2-pixel PNG header, nine 4096^2 headers (over ``--max-pixels`` together), a truncated
JPEG, a non-image, an empty body, JSON nested 100,000 deep, an FP32 tensor of the wrong shape, and
eight 1x1 PNGs (admitted: they run). A thread polls ``/v2/health/live`` and ``/v2/health/ready``
throughout. Then SIGTERM, timed to the process's exit. A second server, fresh, gets normal traffic
only for ``--baseline-minutes``: the latency to compare with.

Prints one JSON document: the server's peak RSS (VmHWM), RSS after the warm-up, every 30 s and at
the end, normal requests answered with p50/p99 latency beside the baseline's, answers by status
(normal and hostile apart), 5xx count, wrong answers (a normal answer whose probabilities differ
from the same model run in-process on the same images by more than 1e-3, or whose top-1 differs
where the in-process margin is over 1e-4), health-probe failures and their slowest answer, server
log lines, and seconds from SIGTERM to exit. The server's start-up, the images and the in-process
answers are ``benchmarks/_serving.py``'s, shared with ``serve_load.py``.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/serve_soak.py --minutes 10 --baseline-minutes 3
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

from _serving import IMAGENETTE, NAME, ServeProcess, expected_probabilities, is_wrong, jpegs, percentile_ms, \
    save_random_model


# -- inputs --------------------------------------------------------------------------------------
def png(width: int, height: int, pixels: bool = False) -> bytes:
    """A PNG of ``width`` x ``height``: real pixels, or a header declaring them over almost no data."""
    if pixels:
        from PIL import Image

        out = io.BytesIO()
        Image.new("RGB", (width, height), (90, 160, 30)).save(out, "PNG")
        return out.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def v2_images(images: list[bytes], shape: int | None = None) -> dict:
    data = [base64.b64encode(i).decode() for i in images]
    return {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [shape or len(data)], "data": data}]}}


def v2_binary(blob: bytes, shape: int) -> dict:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [shape],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return {"content": header + blob, "headers": {"Inference-Header-Content-Length": str(len(header)),
                                                  "Content-Type": "application/octet-stream"}}


def hostile_requests(jpeg: bytes) -> list[tuple[str, str, dict]]:
    """(kind, path, httpx keyword arguments): built once, sent many times."""
    infer, predictions = f"/v2/models/{NAME}/infer", f"/predictions/{NAME}"
    tiny = png(1, 1, pixels=True)
    empties = struct.pack("<I", 0) * 5_000_000  # 20 MB
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, 223, 224], "data": [0.0] * 8}
    return [("20000_tiny_pngs", infer, v2_images([tiny] * 20_000)),
            ("5M_empty_elements", infer, v2_binary(empties, 5_000_000)),
            ("5M_empty_elements_shape_1", infer, v2_binary(empties, 1)),
            ("pixel_bomb_header", predictions, {"content": png(100_000, 100_000)}),
            ("9_headers_of_4096^2", infer, v2_images([png(4096, 4096)] * 9)),
            ("truncated_jpeg", predictions, {"content": jpeg[:len(jpeg) // 3]}),
            ("not_an_image", predictions, {"content": b"definitely not an image " * 40}),
            ("empty_body", predictions, {"content": b""}),
            ("json_100000_deep", infer, {"content": deep, "headers": {"Content-Type": "application/json"}}),
            ("fp32_wrong_shape", infer, {"json": {"inputs": [tensor]}}),
            ("8_tiny_pngs_admitted", infer, v2_images([tiny] * 8))]


# -- traffic -------------------------------------------------------------------------------------
class Traffic:
    """``clients`` threads sending normal and (a ``hostile_share`` of) hostile requests until stopped;
    ``record`` turns on and off the recording of results."""

    def __init__(self, url: str, normal: list[bytes], hostile: list[tuple[str, str, dict]], clients: int,
                 hostile_share: float) -> None:
        self.url, self.normal, self.hostile, self.share = url, normal, hostile, hostile_share
        self.results: list[tuple[str, str, int, float, object]] = []  # (class, kind, status, seconds, answer)
        self.record = threading.Event()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, index: int) -> None:
        import httpx

        rng = random.Random(index)
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self.stopping.is_set():
                if rng.random() < self.share:
                    kind, path, kwargs = rng.choice(self.hostile)
                    self._send(client, "hostile", kind, path, kwargs)
                elif rng.random() < 0.5:
                    i = rng.randrange(len(self.normal))
                    self._send(client, "normal", f"predictions:{i}", f"/predictions/{NAME}",
                               {"content": self.normal[i]})
                else:
                    i, j = rng.randrange(len(self.normal)), rng.randrange(len(self.normal))
                    self._send(client, "normal", f"v2:{i},{j}", f"/v2/models/{NAME}/infer",
                               v2_images([self.normal[i], self.normal[j]]))

    def _send(self, client, cls: str, kind: str, path: str, kwargs: dict) -> None:
        import httpx

        start = time.perf_counter()
        try:
            response = client.post(path, **kwargs)
            status, answer = response.status_code, response.json() if cls == "normal" and response.is_success else None
        except httpx.TransportError:
            status, answer = 0, None
        if self.record.is_set():
            self.results.append((cls, kind, status, time.perf_counter() - start, answer))

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(600)


class Prober:
    """Polls the two health endpoints every 0.5 s: (path, status, seconds)."""

    def __init__(self, url: str) -> None:
        self.url, self.results, self.stopping = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stopping.wait(0.5):
                for path in ("/v2/health/live", "/v2/health/ready"):
                    start = time.perf_counter()
                    try:
                        status = client.get(path).status_code
                    except httpx.TransportError:
                        status = 0
                    self.results.append((path, status, time.perf_counter() - start))

    def stop(self) -> list:
        self.stopping.set()
        self.thread.join(300)
        return self.results


# -- answers -------------------------------------------------------------------------------------
def wrong_answers(results: list, classes: list[str], expected) -> int:
    index = {name: i for i, name in enumerate(classes)}
    wrong = 0
    for cls, kind, status, _, answer in results:
        if cls != "normal" or status != 200:
            continue
        source, numbers = kind.split(":")
        if source == "predictions":
            wrong += is_wrong([(index[name], p) for name, p in answer.items()], expected[int(numbers)])
        else:
            probs = {o["name"]: o for o in answer["outputs"]}["probabilities"]
            rows = [probs["data"][r * len(classes):(r + 1) * len(classes)] for r in range(probs["shape"][0])]
            images = [int(n) for n in numbers.split(",")]
            wrong += sum(is_wrong(list(enumerate(row)), expected[i]) for row, i in zip(rows, images))
    return wrong


# -- the runs ------------------------------------------------------------------------------------
def phase(weights: Path, folder: Path, args: argparse.Namespace, minutes: float, hostile: list,
          normal: list[bytes], truth: tuple) -> dict:
    """One server under ``minutes`` of traffic after a warm-up, then SIGTERM while the clients still send."""
    log = folder / f"server-{'hostile' if hostile else 'baseline'}.log"
    server = ServeProcess(weights, "--backend", args.backend, "--max-batch", str(args.max_batch), log=log)
    traffic = Traffic(server.url, normal, hostile, args.clients, args.hostile_share if hostile else 0.0)
    time.sleep(args.warmup_s)
    rss_after_warmup = server.memory_mb()
    prober, rss_samples = Prober(server.url), []
    traffic.record.set()
    start = time.monotonic()
    while time.monotonic() - start < 60 * minutes:
        rss_samples.append(server.memory_mb())
        time.sleep(1.0)
    traffic.record.clear()
    rss_end, peak = server.memory_mb(), server.memory_mb("VmHWM")
    probes = prober.stop()
    status, sigterm_seconds = server.stop()
    traffic.stop()
    results = traffic.results
    normal_ok = [r[3] for r in results if r[0] == "normal" and r[2] == 200]
    by_status = {cls: dict(sorted(Counter(str(r[2]) for r in results if r[0] == cls).items()))
                 for cls in ("normal", "hostile") if any(r[0] == cls for r in results)}
    hostile_kinds = {k: dict(Counter(str(r[2]) for r in results if r[1] == k)) for k in sorted(
        {r[1] for r in results if r[0] == "hostile"})}
    return {"minutes": minutes, "normal_answered": len(normal_ok),
            "normal_per_s": round(len(normal_ok) / (60 * minutes), 2),
            "normal_p50_ms": percentile_ms(normal_ok, 0.5), "normal_p99_ms": percentile_ms(normal_ok, 0.99),
            "hostile_sent": sum(1 for r in results if r[0] == "hostile"),
            "answers_by_status": by_status, "hostile_by_kind": hostile_kinds,
            "errors_5xx": sum(1 for r in results if r[2] >= 500), "transport_errors": sum(1 for r in results if r[2] == 0),
            "wrong_answers": wrong_answers(results, *truth),
            "health_probes": len(probes), "health_not_200": sum(1 for p in probes if p[1] != 200),
            "health_slowest_ms": percentile_ms([p[2] for p in probes], 1.0),
            "live_p99_ms": percentile_ms([p[2] for p in probes if p[0].endswith("live")], 0.99),
            "peak_rss_mb": round(peak, 1), "rss_after_warmup_mb": round(rss_after_warmup, 1),
            "rss_max_sampled_mb": round(max(rss_samples, default=rss_end), 1), "rss_end_mb": round(rss_end, 1),
            "rss_every_30s_mb": [round(m, 1) for m in rss_samples[::30]],
            "memory_growth_mb": round(rss_end - rss_after_warmup, 1),
            "memory_growth_pct": round(100 * (rss_end - rss_after_warmup) / rss_after_warmup, 1),
            "server_log_lines": len(log.read_text().splitlines()),
            "sigterm_to_exit_s": round(sigterm_seconds, 2), "exit_status": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="hostile run, after the warm-up")
    parser.add_argument("--baseline-minutes", type=float, default=3.0, help="run without hostile traffic (0: none)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="traffic before measuring (each run)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--hostile-share", type=float, default=0.25, help="fraction of requests that are hostile")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=32, help="distinct normal images")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        folder = Path(tmp)
        weights = save_random_model(args.model, folder, numbered_classes=True)
        normal = jpegs(args.images)
        truth = expected_probabilities(weights, normal, args.backend)
        report = {"command": " ".join(["python", *sys.argv]), "model": args.model, "backend": args.backend,
                  "clients": args.clients, "hostile_share": args.hostile_share, "cores": len(os.sched_getaffinity(0)),
                  "normal_images": "imagenette" if IMAGENETTE.is_file() else "synthetic",
                  "hostile": phase(weights, folder, args, args.minutes, hostile_requests(normal[0]), normal, truth)}
        if args.baseline_minutes > 0:
            report["baseline"] = phase(weights, folder, args, args.baseline_minutes, [], normal, truth)
            for q in ("p50", "p99"):
                base, hostile = report["baseline"][f"normal_{q}_ms"], report["hostile"][f"normal_{q}_ms"]
                report[f"normal_{q}_ratio_to_baseline"] = round(hostile / base, 2) if base and hostile else None
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
