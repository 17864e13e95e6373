"""Speed measurement: latency, throughput, memory and efficiency of models on this machine.

Every figure is measured in the same run as torchvision's eager model (the ``reference`` row),
with the contenders' repetitions interleaved so that load from other processes hits them alike;
speed-ups are ratios to that row. Efficiency is the effective GFLOP/s (2 x MACs x images/s) as a
fraction of this machine's fp32 matmul peak, which is measured too: a matmul probe timed among the
contenders' rounds (:func:`matmul_probe`), so that the peak and the models see the same load.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .errors import ResnetsError
from .factory import create_model
from .fileio import save_figure
from .inference import INT8_BACKENDS, check_backend, optimize_for_inference
from .models import get_model_spec, list_models
from .summarize import summary
from .timing import time_interleaved
from .weights.onnx import is_onnx_path

REFERENCE = "torchvision"


def default_backends() -> tuple[str, ...]:
    """eager (PyTorch, BatchNorm folded, channels-last) and ``auto``, what the inference
    commands run by default: the fastest exact backend installed, chosen by a timed probe at
    each batch size (its timings are in the ``auto`` rows)."""
    return ("eager", "auto")


@dataclass
class BenchRow:
    """One model x backend x batch size measurement."""

    model: str
    backend: str
    batch_size: int
    latency_p50_ms: float
    latency_p90_ms: float
    images_per_s: float
    peak_memory_mb: float | None
    gflops: float
    peak_fraction: float  # of ``matmul_peak_gflops``
    matmul_peak_gflops: float  # the matmul probe's best, timed in the same rounds as this row
    speedup: float | None = None  # images/s over the reference row's, same model and batch
    train_images_per_s: float | None = None
    chosen_backend: str | None = None  # ``auto`` rows: the backend its probe chose at this batch
    probe_ms: dict[str, float] | None = None  # ``auto`` rows: the probe's median ms per candidate


@dataclass
class BenchReport:
    machine: dict
    settings: dict
    rows: list[BenchRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"machine": self.machine, "settings": self.settings,
                "results": [asdict(row) for row in self.rows]}


# -- measurement primitives ---------------------------------------------------------------------
PEAK_PROBE = "matmul_peak"  # the runner name of the matmul probe timed among the contenders


def matmul_probe(n: int = 2048) -> tuple[Callable[[], object], float]:
    """One ``n`` x ``n`` fp32 matmul as a runner, and the FLOPs it does.

    Timed among the contenders' rounds (:func:`time_interleaved`), it measures the peak under
    the load they ran under: a peak taken at another moment on a shared machine can be 30 %
    off, which moves every "fraction of peak" by as much.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2.0 * n ** 3


def probe_gflops(seconds: Sequence[float], flops: float) -> float:
    """The best GFLOP/s of a probe's timed calls: the peak, so fractions of it err low."""
    return flops / min(seconds) / 1e9


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-adds of one forward pass at batch 1, counted as `resnets summary` counts them."""
    return summary(model, (1, *input_size)).macs


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that RSS growth shows a call's allocations."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(run: Callable[[], object]) -> float | None:
    """Peak memory one call of ``run`` adds: CUDA max allocated, or sampled RSS growth on CPU."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    _release_free_heap()
    before = _rss_bytes()
    if before is None:
        return None
    peak, done = before, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes() or 0)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return max(peak - before, 0) / 2 ** 20


def train_images_per_s(model: nn.Module, batch: Tensor, repeats: int, warmup: int,
                       channels_last: bool) -> float:
    """Training-step throughput (forward, cross-entropy, backward, SGD step) of a model copy."""
    import copy

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).eval().to(memory_format=fmt)
    batch = batch.contiguous(memory_format=fmt)
    with torch.no_grad():
        classes = model(batch[:1]).shape[1]
    model.train()
    targets = torch.randint(0, classes, (batch.shape[0],))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(batch), targets).backward()
        optimizer.step()

    seconds = time_interleaved({"train": step}, repeats, warmup)["train"]
    return batch.shape[0] / statistics.median(seconds)


# -- models -------------------------------------------------------------------------------------
def build_model(name: str) -> tuple[nn.Module, int]:
    """Our model of that name (or torchvision's where we have none) and its input side."""
    if name in list_models():
        return create_model(name).eval(), get_model_spec(name).input_size
    return torchvision_model(name), 224


def check_model_names(names: Sequence[str]) -> None:
    """A one-line ResnetsError for the first name that is neither ours nor torchvision's."""
    import torchvision

    known = set(list_models()) | set(torchvision.models.list_models(module=torchvision.models))
    for name in names:
        if name not in known and is_onnx_path(name):
            raise ResnetsError(f"bench measures architectures by name, each against torchvision's own, not files: "
                               f"name the architecture {name!r} was exported from (its speed does not depend on "
                               "the weights)")
        if name not in known:
            raise ResnetsError(f"unknown model {name!r}: neither a resnets model (`resnets models`) "
                               "nor a torchvision classification model")


def torchvision_model(name: str) -> nn.Module:
    import torchvision

    check_model_names([name])
    return torchvision.models.get_model(name, weights=None).eval()


def torchvision_peer(name: str, model: nn.Module) -> nn.Module | None:
    """torchvision's eager model of the same architecture with the same weights, if it exists."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        return None
    peer = torchvision.models.get_model(name, weights=None).eval()
    try:
        peer.load_state_dict(model.state_dict())
    except RuntimeError:
        return None
    return peer


def _inference_runner(model: nn.Module, batch: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(batch)

    return run


# -- the benchmark ------------------------------------------------------------------------------
def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ResnetsError(f"batch sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ResnetsError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def machine_info() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None}


def benchmark(models: Sequence[str], backends: Sequence[str], batch_sizes: Sequence[int],
              img_size: int | None = None, train: bool = False, repeats: int = 5, warmup: int = 1,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure each model with each backend at each batch size against torchvision's eager model.

    Args:
        img_size: input side; defaults to each model's own (224, or 32 for CIFAR nets).
        train: also measure training-step images/s at batch sizes > 1 (eager: channels-last +
            foreach SGD; the reference: torchvision's NCHW model with plain SGD).
        repeats, warmup: timed and untimed calls of each backend per batch size.
    """
    for backend in backends:
        check_backend(backend)
    check_model_names(models)
    if repeats < 1 or warmup < 0:
        raise ResnetsError(f"--reps must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    if img_size is not None and img_size < 1:
        raise ResnetsError(f"--img-size must be positive, got {img_size}")
    report = BenchReport(machine_info(), {"backends": list(backends), "batch_sizes": list(batch_sizes),
                                              "img_size": img_size, "repeats": repeats, "warmup": warmup,
                                              "train": train})
    for name in models:
        if progress:
            progress(f"{name}: preparing {', '.join(backends)}")
        report.rows.extend(_bench_model(name, backends, batch_sizes, img_size, train, repeats, warmup,
                                        progress))
    report.machine["matmul_peak_gflops"] = round(max(row.matmul_peak_gflops for row in report.rows), 1)
    return report


def _bench_model(name: str, backends: Sequence[str], batch_sizes: Sequence[int], img_size: int | None,
                 train: bool, repeats: int, warmup: int,
                 progress: Callable[[str], None] | None) -> list[BenchRow]:
    model, native_size = build_model(name)
    side = img_size or native_size
    example = torch.randn(max(batch_sizes), 3, side, side)
    macs = count_macs(model, (3, side, side))
    peer = torchvision_peer(name, model)
    contenders = {REFERENCE: peer} if peer is not None else {}
    contenders |= {backend: _prepare(model, backend, example) for backend in backends if backend != "auto"}
    probe, probe_flops = matmul_probe()
    rows = []
    for batch_size in batch_sizes:
        if progress:
            progress(f"{name}: batch {batch_size}")
        batch = example[:batch_size] if batch_size <= len(example) else torch.randn(batch_size, 3, side, side)
        if "auto" in backends:  # probed at this batch: the choice may differ between batch sizes
            contenders["auto"] = _prepare(model, "auto", batch)
        runners = {label: _inference_runner(module, batch) for label, module in contenders.items()}
        times = time_interleaved({**runners, PEAK_PROBE: probe}, repeats, warmup)
        peak = probe_gflops(times.pop(PEAK_PROBE), probe_flops)
        batch_rows = {}
        for label, seconds in times.items():
            p50 = statistics.median(seconds)
            rate = batch_size / p50
            batch_rows[label] = BenchRow(
                model=name, backend=label, batch_size=batch_size, latency_p50_ms=p50 * 1e3,
                latency_p90_ms=percentile(seconds, 90) * 1e3, images_per_s=rate,
                peak_memory_mb=peak_memory_mb(runners[label]), gflops=2 * macs * rate / 1e9,
                peak_fraction=2 * macs * rate / 1e9 / peak, matmul_peak_gflops=peak)
        if "auto" in batch_rows:
            probed = contenders["auto"].auto_probe
            batch_rows["auto"].chosen_backend, batch_rows["auto"].probe_ms = probed["backend"], probed["probe_ms"]
        reference = batch_rows.get(REFERENCE)
        for row in batch_rows.values():
            row.speedup = row.images_per_s / reference.images_per_s if reference else None
        if train and batch_size > 1:  # BatchNorm cannot train on a single image
            _add_train_rates(batch_rows, model, peer, batch, repeats, warmup)
        rows.extend(batch_rows.values())
    return rows


def _prepare(model: nn.Module, backend: str, example: Tensor) -> nn.Module:
    """``model`` through ``backend`` for inputs shaped like ``example`` (int8: calibrated on it;
    for speed only, any data will do)."""
    calibration = example[:8] if backend in INT8_BACKENDS else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimize_for_inference(model, backend, example[:1] if backend != "auto" else example, calibration)


def _add_train_rates(batch_rows: dict[str, BenchRow], model: nn.Module, peer: nn.Module | None,
                     batch: Tensor, repeats: int, warmup: int) -> None:
    if "eager" in batch_rows:
        batch_rows["eager"].train_images_per_s = train_images_per_s(model, batch, repeats, warmup, True)
    if peer is not None:
        batch_rows[REFERENCE].train_images_per_s = train_images_per_s(peer, batch, repeats, warmup, False)


# -- output -------------------------------------------------------------------------------------
def format_table(report: BenchReport) -> str:
    header = (f"{'model':<18}{'backend':<13}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'img/s':>9}"
              f"{'x ref':>7}{'mem MB':>8}{'GFLOP/s':>9}{'% peak':>8}{'train img/s':>12}")
    lines = [f"matmul peak: up to {report.machine['matmul_peak_gflops']:.1f} GFLOP/s "
             f"({report.machine['threads']} threads; each row's % is of the peak probed in its own rounds)",
             header, "-" * len(header)]
    for r in report.rows:
        speedup = f"{r.speedup:.2f}" if r.speedup is not None else "-"
        memory = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"
        train = f"{r.train_images_per_s:.1f}" if r.train_images_per_s is not None else "-"
        lines.append(f"{r.model:<18}{r.backend:<13}{r.batch_size:>6}{r.latency_p50_ms:>10.1f}"
                     f"{r.latency_p90_ms:>10.1f}{r.images_per_s:>9.1f}{speedup:>7}{memory:>8}"
                     f"{r.gflops:>9.1f}{100 * r.peak_fraction:>7.0f}%{train:>12}")
    for r in report.rows:
        if r.chosen_backend is not None:
            timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted((r.probe_ms or {}).items(),
                                                                             key=lambda item: item[1]))
            lines.append(f"auto: {r.model} at batch {r.batch_size} runs {r.chosen_backend} "
                         f"(probe medians: {timings})")
    return "\n".join(lines)


def plot_report(report: BenchReport, path: str | Path) -> Path:
    """Bar chart of images/s, one panel per batch size, bars grouped by model and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch_sizes = sorted({row.batch_size for row in report.rows})
    models = list(dict.fromkeys(row.model for row in report.rows))
    backends = list(dict.fromkeys(row.backend for row in report.rows))
    figure, axes = plt.subplots(1, len(batch_sizes), figsize=(4.5 * len(batch_sizes), 4), squeeze=False)
    width = 0.8 / len(backends)
    for axis, batch_size in zip(axes[0], batch_sizes):
        for i, backend in enumerate(backends):
            rates = {r.model: r.images_per_s for r in report.rows
                     if r.backend == backend and r.batch_size == batch_size}
            positions = [m + i * width for m, name in enumerate(models) if name in rates]
            axis.bar(positions, [rates[name] for name in models if name in rates], width, label=backend)
        axis.set_xticks([m + width * (len(backends) - 1) / 2 for m in range(len(models))], models)
        axis.set_title(f"batch {batch_size}")
        axis.set_ylabel("images/s")
    axes[0][0].legend(fontsize="small")
    return save_figure(figure, path, dpi=110)
