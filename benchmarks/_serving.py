"""What the serving benchmarks share (``serve_load.py``, ``serve_soak.py``): the images, a
random-init model saved as the project's weights, a real ``resnets serve`` process (started,
waited for, measured from ``/proc``, stopped), and the answers of the same model run in-process."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

SHARED_DATA = Path(os.environ.get("RESNETS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
IMAGENETTE = SHARED_DATA / "imagenette-224-train.zip"
NAME = "m"  # the served model's name in the URLs
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def jpegs(count: int) -> list[bytes]:
    """``count`` Imagenette JPEGs spread over the archive when the shared data is there, else smooth
    random colour fields as JPEGs."""
    if IMAGENETTE.is_file():
        with zipfile.ZipFile(IMAGENETTE) as archive:
            names = [n for n in sorted(archive.namelist()) if n.lower().endswith((".jpg", ".jpeg"))]
            return [archive.read(n) for n in names[::max(1, len(names) // count)][:count]]
    import numpy as np
    from PIL import Image

    rng, images = np.random.default_rng(0), []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        out = io.BytesIO()
        small.resize((320, 256), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        images.append(out.getvalue())
    return images


def save_random_model(name: str, folder: Path, numbered_classes: bool = False) -> Path:
    """The registered model ``name`` with random-init weights (seed 0; nothing downloaded), saved
    with ``save_weights`` (with class names ``class0000``... if ``numbered_classes``); serving
    throughput does not depend on the weights."""
    import torch

    from resnets import create_model
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    model = create_model(name).eval()
    names = [f"class{i:04d}" for i in range(model.num_classes)] if numbered_classes else None
    return save_weights(folder / f"{name}.safetensors", model, class_names=names)


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


def group_cpu_seconds(group: int) -> float:
    """CPU seconds (user + system, with reaped children's) of every process in process group ``group``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:  # pgrp; then utime, stime, cutime, cstime are fields 11-14
            total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS


class ServeProcess:
    """``resnets serve`` in a process (and process group) of its own, ready when constructed;
    ``backend`` is the backend it says it runs, ``url`` where. Its stderr goes to ``log`` if given."""

    path = f"/predictions/{NAME}"
    health = "/v2/health/ready"

    def __init__(self, weights: Path, *args: str, log: Path | None = None) -> None:
        command = [sys.executable, "-m", "resnets", "serve", str(weights), "--port", "0", "--name", NAME, *args]
        stderr = open(log, "w") if log is not None else None
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            start_new_session=True)
        finally:
            if stderr is not None:
                stderr.close()
        self.log = log
        deadline = time.monotonic() + 300
        self.url = self.backend = None
        while self.url is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                tail = log.read_text()[-2000:] if log is not None else ""
                raise SystemExit(f"the server did not start: {command}\n{tail}")
            if select.select([self.process.stdout], [], [], 1.0)[0]:
                match = re.search(r"\((\S+)\) on (http://[\d.]+:\d+)/", self.process.stdout.readline())
                self.backend, self.url = match.groups() if match else (None, None)
        wait_ready(self.url + self.health, self.process)

    @staticmethod
    def request(jpeg: bytes) -> dict:
        """httpx keyword arguments of a request for ``jpeg`` to :attr:`path`."""
        return {"content": jpeg, "headers": {"Content-Type": "image/jpeg"}}

    def memory_mb(self, field: str = "VmRSS") -> float:
        """The server's resident memory (``VmRSS``) or its peak (``VmHWM``), in MiB."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server's processes."""
        return group_cpu_seconds(self.process.pid)

    def stop(self) -> tuple[int, float]:
        """SIGTERM to the server; (exit status, seconds to exit). Killed after 300 s."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            status = self.process.wait()
        return status, time.monotonic() - start


def expected_probabilities(weights: Path, images: list[bytes], backend: str) -> tuple[list[str], object]:
    """The model's class names and its probabilities (images, classes) computed in this process,
    one image at a time, as the server decodes and crops them."""
    import torch

    from resnets.data.images import decode_image
    from resnets.metrics import probabilities
    from resnets.predict import load_for_inference

    predictor = load_for_inference(weights, backend=backend)
    with torch.inference_mode():
        rows = [probabilities(predictor.model(predictor.normalise(
            predictor.preprocessing.to_uint8(decode_image(j, "image"))[None])), False)[0] for j in images]
    return list(predictor.class_names), torch.stack(rows).numpy()


def percentile_ms(seconds: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank below) of durations in seconds, in ms; None for none."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def is_wrong(probs: list[tuple[int, float]], expected) -> bool:
    """Whether a server's probabilities (class index, probability; some classes) differ from the
    in-process ones ``expected`` (all classes): by more than 1e-3 anywhere, or in the top-1 where the
    in-process margin between the first two is over 1e-4 (a near tie may fall either way)."""
    import numpy as np

    indices, values = zip(*probs)
    if np.abs(np.asarray(values) - expected[list(indices)]).max() > 1e-3:
        return True
    ranked = np.sort(expected)[::-1]
    return int(np.argmax(expected)) != indices[int(np.argmax(values))] and ranked[0] - ranked[1] > 1e-4
