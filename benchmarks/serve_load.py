"""Load test of `resnets serve` against LitServe: concurrent clients sending real JPEGs.

Load mode (default): a ResNet-50 with random-init weights (throughput does not depend on the
weights) is served three ways, all three started up front, each with the same inference backend
(the ``auto`` choice the first server makes, cached, is handed to the others by name):

- ``resnets_default``: ``resnets serve`` at its defaults (``--backend`` aside);
- ``resnets_max_batch_1``: the same with ``--max-batch 1`` (no batching);
- ``litserve``: the same model prepared by ``resnets.predict.load_for_inference`` (the same
  optimized module or onnxruntime session) behind a LitServe ``LitAPI`` with LitServe's own
  batching (``max_batch_size``, ``batch_timeout``; ``--litserve-batch``,
  ``--litserve-timeout-ms``), CPU accelerator, one worker: the request is JSON with the JPEG in
  base64, as LitServe's image examples send it; ``decode_request`` decodes and crops as resnets
  does, ``predict`` runs the batch, the answer is the same top-5.

The servers are measured interleaved, so that drift of the machine falls on all three alike: at
each of ``--clients`` (default 1, 4 and 16 concurrent clients) every server gets a warm-up of two
requests per client, then ``--rounds`` rounds; in each round every server in turn, in an order
rotated by one each round, gets the same ``--requests`` requests. While one server has its turn
the other two are stopped (SIGSTOP to their process groups; ``--no-pause`` leaves them running):
an idle LitServe is not idle, its batching loop polls its queue every millisecond, about a sixth
of a core here, and its wake-ups slowed the server being measured by far more than that. Before
the rounds all three run idle for ``--idle-seconds`` and the cores each uses then are reported;
the CPU time each uses during the others' turns (``/proc/PID/stat`` of its process group, before
and after every turn: none when stopped) is reported too, with each server's CPU per request.

Prints one JSON document on stdout: per server and client count the median throughput over the
rounds (and each round's), p50/p99 latency of all rounds' requests pooled, errors and CPU; the
ratios of the default to the other two (of the medians, and per round with their median and the
rounds the default won); whether the targets hold: the default at least 1.0x ``--max-batch 1``
and 1.0x LitServe in throughput, its p99 no worse than LitServe's. The same side by side as a
table on stderr. ``--bench`` adds ``resnets.bench``'s batch-32 images/s of the same backend.

Soak mode (``--soak``): ``--requests`` (default 5000) requests from as many clients as the largest
of ``--clients`` (16), every third one a bad input (non-image, truncated JPEG, a 100,000^2-pixel
PNG header, empty body, text declared as ``text/plain``, a v2 tensor of the wrong shape); reports
5xx answers or dropped connections (must be 0), good answers that differ from the same model run
in-process (must be 0), bad ones not answered 4xx (must be 0), and the server's RSS after a
warm-up of ``--soak-warmup`` good requests (default 4 per client) and at the end, sampled every
second in between: the growth must stay under 5 %.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/serve_load.py --rounds 9 --requests 90
    flock /tmp/cpu.lock .venv/bin/python benchmarks/serve_load.py --soak
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from _serving import NAME, ServeProcess, expected_probabilities, free_port, is_wrong, jpegs, percentile_ms, \
    save_random_model, wait_ready

TARGETS = {"default_over_max_batch_1": 1.0, "default_over_litserve": 1.0, "p99_litserve_over_default": 1.0}
SERVERS = ("resnets_default", "resnets_max_batch_1", "litserve")
SOAK_GROWTH_LIMIT = 0.05  # issue 25: memory growth under 5 % from after the warm-up to the end


class LitServeServer(ServeProcess):
    """The same model behind LitServe (:func:`litserve_main`, in a process group of its own)."""

    path = "/predict"
    health = "/health"

    def __init__(self, weights: Path, backend: str, max_batch: int, timeout_ms: float) -> None:
        port = free_port()
        command = [sys.executable, __file__, "--litserve-worker", str(weights), "--backend", backend,
                   "--port", str(port), "--litserve-batch", str(max_batch), "--litserve-timeout-ms", str(timeout_ms)]
        self.process = subprocess.Popen(command, start_new_session=True)
        self.url, self.backend, self.log = f"http://127.0.0.1:{port}", backend, None
        wait_ready(self.url + self.health, self.process)

    @staticmethod
    def request(jpeg: bytes) -> dict:
        return {"json": {"image": base64.b64encode(jpeg).decode("ascii")}}

    def stop(self) -> tuple[int, float]:
        start = time.monotonic()
        os.killpg(self.process.pid, signal.SIGTERM)  # LitServe's API and inference processes
        try:
            status = self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            status = self.process.wait(60)
        return status, time.monotonic() - start


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


def image_requests(images: list[bytes], count: int, server: ServeProcess | None = None,
                   offset: int = 0) -> list[tuple[str, dict]]:
    """``count`` requests cycling through ``images`` from ``offset``, in ``server``'s form (default:
    resnets serve's)."""
    form = server or ServeProcess
    return [(form.path, form.request(images[(offset + i) % len(images)])) for i in range(count)]


def bench_rate(model: str, backend: str) -> float:
    from resnets.bench import benchmark

    report = benchmark([model], [backend], [32], repeats=3, warmup=1)
    return next(r.images_per_s for r in report.rows if r.backend == backend)


def start_server(kind: str, weights: Path, backend: str, args: argparse.Namespace) -> ServeProcess:
    if kind == "litserve":
        return LitServeServer(weights, backend, args.litserve_batch, args.litserve_timeout_ms)
    flags = ["--backend", backend] + (["--max-batch", "1"] if kind == "resnets_max_batch_1" else [])
    return ServeProcess(weights, *flags)


# -- load mode ---------------------------------------------------------------------------------
def load_mode(args: argparse.Namespace, weights: Path, images: list[bytes], backend: str) -> dict:
    """All three servers up front; at each client count, interleaved rounds (:func:`interleaved`)."""
    servers: dict[str, ServeProcess] = {}
    rows: dict[str, dict] = {}
    try:
        for kind in SERVERS:
            servers[kind] = start_server(kind, weights, backend, args)
            backend = servers[kind].backend or backend  # auto's choice, passed on by name to the others
            rows[kind] = {"backend": servers[kind].backend, "rss_after_start_mb": round(servers[kind].memory_mb(), 1)}
        for kind, cores in idle_cpu_cores(servers, args.idle_seconds).items():
            rows[kind]["idle_cpu_cores"] = cores
        for clients in args.clients:
            for kind, row in interleaved(servers, images, clients, args.rounds, args.requests,
                                         not args.no_pause).items():
                rows[kind][str(clients)] = row
    finally:
        for kind, server in servers.items():
            pause(server, False)
            rows[kind]["exit_status"] = server.stop()[0]
    result = {"rounds": args.rounds, "requests_per_turn": args.requests, "idle_servers_paused": not args.no_pause,
              "servers": rows,
              "comparison": compare(rows, args.clients)}
    result["targets_met"] = all(all(c["targets_met"].values()) for c in result["comparison"].values())
    if args.bench:
        result["bench_batch32_images_per_s"] = round(bench_rate(args.model, backend), 2)
    return result


def pause(server: ServeProcess, stop: bool) -> None:
    """SIGSTOP (``stop``) or SIGCONT to every process of ``server``'s process group."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGSTOP if stop else signal.SIGCONT)


def idle_cpu_cores(servers: dict[str, ServeProcess], seconds: float) -> dict[str, float]:
    """The cores each server uses while all of them run and none has requests, over ``seconds``."""
    for server in servers.values():
        pause(server, False)
    before, start = {k: s.cpu_seconds() for k, s in servers.items()}, time.perf_counter()
    time.sleep(seconds)
    after, wall = {k: s.cpu_seconds() for k, s in servers.items()}, time.perf_counter() - start
    return {k: round((after[k] - before[k]) / wall, 4) for k in servers}


def interleaved(servers: dict[str, ServeProcess], images: list[bytes], clients: int, rounds: int,
                requests: int, pause_idle: bool = True) -> dict[str, dict]:
    """``rounds`` rounds of ``requests`` requests from ``clients`` threads to each server in turn (the
    order rotated each round; every server gets the same images in a round), after a warm-up; per
    server the rounds' throughputs and median, pooled latencies, errors, the CPU it used per request
    (and the clients' CPU), and the CPU it used while another server had its turn (``pause_idle``:
    it was stopped with SIGSTOP meanwhile, so none)."""
    kinds = list(servers)
    for kind in kinds:
        pause(servers[kind], False)
    for kind in kinds:
        fire(servers[kind].url, image_requests(images, 2 * clients, servers[kind]), clients)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    latencies: dict[str, list[float]] = {k: [] for k in kinds}
    errors = dict.fromkeys(kinds, 0)
    idle_cpu, idle_wall = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0)
    busy_cpu, client_cpu = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0)
    for r in range(rounds):
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            server, others = servers[kind], [k for k in kinds if k != kind]
            batch = image_requests(images, requests, server, offset=r * requests)
            for k in kinds:
                pause(servers[k], pause_idle and k != kind)
            cpu_before, start = {k: servers[k].cpu_seconds() for k in kinds}, time.perf_counter()
            own_before = time.process_time()
            results, seconds = fire(server.url, batch, clients)
            client_cpu[kind] += time.process_time() - own_before
            cpu_after, wall = {k: servers[k].cpu_seconds() for k in kinds}, time.perf_counter() - start
            busy_cpu[kind] += cpu_after[kind] - cpu_before[kind]
            for k in others:
                idle_cpu[k] += cpu_after[k] - cpu_before[k]
                idle_wall[k] += wall
            rates[kind].append(len(results) / seconds)
            latencies[kind].extend(latency for latency, _, _ in results)
            errors[kind] += sum(1 for _, status, _ in results if status != 200)
        print(f"clients {clients}, round {r + 1}/{rounds}: "
              + ", ".join(f"{k} {rates[k][-1]:.2f} req/s" for k in kinds), file=sys.stderr, flush=True)
    for kind in kinds:
        pause(servers[kind], False)
    return {k: {"throughput_rps": round(statistics.median(rates[k]), 2),
                "throughput_rounds": [round(rate, 2) for rate in rates[k]],
                "requests": len(latencies[k]), "latency_p50_ms": percentile_ms(latencies[k], 0.5),
                "latency_p99_ms": percentile_ms(latencies[k], 0.99), "errors": errors[k],
                "server_cpu_ms_per_request": round(1e3 * busy_cpu[k] / len(latencies[k]), 1),
                "client_cpu_ms_per_request": round(1e3 * client_cpu[k] / len(latencies[k]), 1),
                "cpu_in_others_turns_s": round(idle_cpu[k], 2), "others_turns_s": round(idle_wall[k], 1)}
            for k in kinds}


def compare(rows: dict[str, dict], clients: list[int]) -> dict:
    """Per client count: the default's median throughput over the other two's (and the same per round,
    with its median and the rounds the default won), LitServe's pooled p99 over the default's."""
    comparison = {}
    for count in map(str, clients):
        default, single, lit = (rows[kind][count] for kind in SERVERS)
        ratios = {"default_over_max_batch_1": round(default["throughput_rps"] / single["throughput_rps"], 3),
                  "default_over_litserve": round(default["throughput_rps"] / lit["throughput_rps"], 3),
                  "p99_litserve_over_default": round(lit["latency_p99_ms"] / default["latency_p99_ms"], 3)}
        per_round = {"default_over_max_batch_1": [round(a / b, 3) for a, b in zip(
                         default["throughput_rounds"], single["throughput_rounds"])],
                     "default_over_litserve": [round(a / b, 3) for a, b in zip(
                         default["throughput_rounds"], lit["throughput_rounds"])]}
        comparison[count] = {**ratios, "round_ratios": per_round,
                             "round_ratio_medians": {k: round(statistics.median(v), 3) for k, v in per_round.items()},
                             "rounds_won": {k: sum(v >= 1.0 for v in values) for k, values in per_round.items()},
                             "targets_met": {k: v >= TARGETS[k] for k, v in ratios.items()}}
    return comparison


def table(result: dict, clients: list[int]) -> str:
    """The three servers side by side: median req/s (the rounds' range), p50/p99 ms, errors; the
    ratios (of the medians, median of the rounds', rounds the default won); then the servers' CPU."""
    rounds = result["rounds"]
    lines = [f"{'clients':>7}  " + "  ".join(f"{kind:>36}" for kind in SERVERS)
             + f"  {'default/mb1':>17}  {'default/lit':>17}  p99 lit/default"]
    for count in map(str, clients):
        cells = []
        for kind in SERVERS:
            row = result["servers"][kind][count]
            cells.append(f"{row['throughput_rps']:5.2f} ({min(row['throughput_rounds']):5.2f}-"
                         f"{max(row['throughput_rounds']):5.2f}) {row['latency_p50_ms']:4.0f}/"
                         f"{row['latency_p99_ms']:4.0f} ms" + (f" {row['errors']}err" if row["errors"] else ""))
        c = result["comparison"][count]
        won = c["rounds_won"]
        paired = c["round_ratio_medians"]
        lines.append(f"{count:>7}  " + "  ".join(f"{cell:>36}" for cell in cells)
                     + "".join(f"  {c[k]:5.2f}x {paired[k]:4.2f}x {won[k]}/{rounds}"
                               for k in ("default_over_max_batch_1", "default_over_litserve"))
                     + f"  {c['p99_litserve_over_default']:14.2f}x")
    servers = result["servers"]
    idle = ", ".join(f"{kind} {servers[kind]['idle_cpu_cores']:.3f}" for kind in SERVERS)
    turns = ", ".join(f"{kind} {sum(servers[kind][str(c)]['cpu_in_others_turns_s'] for c in clients):.2f} s in "
                      f"{sum(servers[kind][str(c)]['others_turns_s'] for c in clients):.0f} s" for kind in SERVERS)
    cpu = "; ".join(f"{kind} " + "/".join(f"{servers[kind][str(c)]['server_cpu_ms_per_request']:.0f}" for c in clients)
                    for kind in SERVERS)
    lines += [f"cells: median req/s over {rounds} rounds (range), p50/p99 ms pooled; ratios: of the medians, "
              "the median of the rounds' ratios, rounds the default won.",
              f"CPU cores used idle, all running: {idle}.",
              f"CPU used during the other servers' turns "
              f"({'stopped' if result['idle_servers_paused'] else 'running'}): {turns}.",
              f"server CPU ms per request: {cpu} (at {'/'.join(map(str, clients))} clients)"]
    return "\n".join(lines)


# -- soak mode ---------------------------------------------------------------------------------
def bad_inputs(jpeg: bytes, size: int) -> list[tuple[str, dict]]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, size - 1, size], "data": [0.0] * 4}
    predictions = f"/predictions/{NAME}"
    return [(predictions, {"content": b"definitely not an image"}),
            (predictions, {"content": jpeg[:len(jpeg) // 2]}),
            (predictions, {"content": bomb}),
            (predictions, {"content": b""}),
            (predictions, {"content": b"plain text", "headers": {"Content-Type": "text/plain"}}),
            (f"/v2/models/{NAME}/infer", {"json": {"inputs": [tensor]}})]


class MemorySampler:
    """The server's RSS every ``every`` seconds, in a thread, until stopped: (seconds, MiB) each."""

    def __init__(self, server: ServeProcess, every: float = 1.0) -> None:
        self.server, self.every, self.samples = server, every, []
        self.stopping, self.start = threading.Event(), time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            self.samples.append((round(time.monotonic() - self.start, 1), round(self.server.memory_mb(), 1)))

    def stop(self) -> list[tuple[float, float]]:
        self.stopping.set()
        self.thread.join()
        return self.samples


def soak_mode(args: argparse.Namespace, weights: Path, images: list[bytes], backend: str) -> dict:
    classes, expected = expected_probabilities(weights, images, backend)
    index = {name: i for i, name in enumerate(classes)}
    from resnets.models import get_model_spec

    bad = bad_inputs(images[0], get_model_spec(args.model).input_size)
    requests, truth = [], []
    for i in range(args.requests):
        if i % 3 == 2:
            requests.append(bad[(i // 3) % len(bad)])
            truth.append(None)
        else:
            requests.append(image_requests(images, 1, offset=i)[0])
            truth.append(i % len(images))
    flags = [item for flag, value in (("--max-batch", args.max_batch), ("--max-wait-ms", args.max_wait_ms),
                                      ("--workers", args.workers)) if value is not None for item in (flag, str(value))]
    server = ServeProcess(weights, "--backend", backend, *flags)
    clients = max(args.clients)
    try:
        fire(server.url, image_requests(images, args.soak_warmup or 4 * clients), clients)
        rss_warm = server.memory_mb()
        sampler = MemorySampler(server)
        results, seconds = fire(server.url, requests, clients)
        samples = sampler.stop()
        rss_after, peak = server.memory_mb(), server.memory_mb("VmHWM")
    finally:
        status = server.stop()[0]
    five_xx = sum(1 for _, code, _ in results if code >= 500 or code == 0)
    wrong = sum(1 for (_, code, body), want in zip(results, truth) if want is not None and (
        code != 200 or is_wrong([(index[name], p) for name, p in json.loads(body).items()], expected[want])))
    bad_not_4xx = sum(1 for (_, code, _), want in zip(results, truth) if want is None and not 400 <= code < 500)
    growth = rss_after / rss_warm - 1
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)][1] for q in (1, 2, 3)] if samples else []
    return {"requests": len(results), "bad_requests": truth.count(None), "clients": clients,
            "warmup_requests": args.soak_warmup or 4 * clients, "seconds": round(seconds, 1),
            "throughput_rps": round(len(results) / seconds, 2),
            "responses_5xx_or_dropped": five_xx, "wrong_good_answers": wrong, "bad_not_answered_4xx": bad_not_4xx,
            "rss_after_warmup_mb": round(rss_warm, 1), "rss_at_quarters_mb": quarters,
            "rss_max_sampled_mb": max((s[1] for s in samples), default=None),
            "rss_after_soak_mb": round(rss_after, 1), "peak_rss_mb": round(peak, 1),
            "rss_growth": round(growth, 4), "rss_growth_limit": SOAK_GROWTH_LIMIT, "rss_samples": samples,
            "exit_status": status,
            "passed": five_xx == 0 and wrong == 0 and bad_not_4xx == 0 and growth < SOAK_GROWTH_LIMIT
            and status == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--requests", type=int, help="requests per server and round (default 60; soak: in all, "
                        "default 5000)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per client count (default 9)")
    parser.add_argument("--no-pause", action="store_true", help="leave the servers that wait for their turn "
                        "running (default: stopped with SIGSTOP; LitServe polls its queue every millisecond when idle)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="all servers idle and running, before "
                        "the rounds: the CPU each uses then is reported (default 10)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrent clients (soak: the largest)")
    parser.add_argument("--max-batch", type=int, help="soak: the server's --max-batch (default: its own)")
    parser.add_argument("--max-wait-ms", type=float, help="soak: the server's --max-wait-ms (default: its own)")
    parser.add_argument("--workers", type=int, help="soak: the server's --workers (default: its own)")
    parser.add_argument("--soak-warmup", type=int, help="soak: good requests before the first RSS reading "
                        "(default 4 per client)")
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
    args.requests = args.requests or (5000 if args.soak else 60)
    args.clients = [int(c) for c in args.clients.split(",")]
    from resnets.inference import check_backend

    backend = check_backend(args.backend)
    images = jpegs(args.images)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        weights = save_random_model(args.model, Path(folder))
        run = soak_mode if args.soak else load_mode
        result = run(args, weights, images, backend)
    if not args.soak:
        print(table(result, args.clients), file=sys.stderr)
    print(json.dumps({"command": " ".join(["python", *sys.argv]), "model": args.model,
                      "weights": "random init (throughput only)", "backend": backend, "clients": args.clients,
                      "requests": args.requests, "cpus": len(os.sched_getaffinity(0)),
                      "mode": "soak" if args.soak else "load", "wall_s": round(time.monotonic() - started, 1),
                      **result}, indent=1))


if __name__ == "__main__":
    main()
