"""ResNets beside other CNNs: size, cost, speed on this machine and published ImageNet accuracy.

Speed and size are measured here on randomly initialised models (no weights are downloaded);
accuracy is the top-1 torchvision publishes in its weights' metadata for the same architecture,
read offline. Every model runs through the same :func:`~resnets.inference.optimize_for_inference`
backend, so latencies compare architectures, not runtimes.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .bench import build_model, check_model_names, count_macs
from .errors import ResnetsError
from .fileio import save_figure
from .inference import INT8_BACKENDS, check_backend, optimize_for_inference
from .timing import time_interleaved

DEFAULT_MODELS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0",
                                   "regnet_y_400mf", "densenet121", "vgg16")


@dataclass
class CompareRow:
    model: str
    params_m: float
    gmacs: float
    latency_ms: float  # batch 1, median
    images_per_s: float  # at the throughput batch size
    top1: float | None  # published ImageNet-1K top-1 of torchvision's default weights
    top1_source: str | None
    pareto: bool = False


def published_top1(name: str) -> tuple[float | None, str | None]:
    """torchvision's published ImageNet-1K top-1 for ``name`` and the weights it belongs to."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None, None
    metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return metrics.get("acc@1"), f"torchvision {weights}"


def pareto_front(rows: Sequence[CompareRow]) -> None:
    """Mark the rows no other row beats on both latency (lower) and top-1 (higher)."""
    rated = [r for r in rows if r.top1 is not None]
    for row in rated:
        row.pareto = not any(o is not row and o.latency_ms <= row.latency_ms and o.top1 >= row.top1
                             and (o.latency_ms < row.latency_ms or o.top1 > row.top1) for o in rated)


def compare(models: Sequence[str] = DEFAULT_MODELS, backend: str = "eager", batch_size: int = 8,
            img_size: int = 224, repeats: int = 5, warmup: int = 1,
            progress: Callable[[str], None] | None = None) -> list[CompareRow]:
    """Measure each model's size, MACs, batch-1 latency and batch throughput at ``img_size``."""
    check_backend(backend)
    check_model_names(models)
    if batch_size < 1 or repeats < 1 or warmup < 0 or img_size < 32:
        raise ResnetsError("--batch-size and --reps must be >= 1, --warmup >= 0, --img-size >= 32")
    rows = []
    for name in models:
        if progress:
            progress(f"{name}: measuring")
        model, _ = build_model(name)
        example = torch.randn(batch_size, 3, img_size, img_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calibration = example if backend in INT8_BACKENDS else None
            fast = optimize_for_inference(model, backend, example[:1], calibration)
        single, batch = example[:1], example
        times = time_interleaved({"latency": lambda: fast(single)}, repeats, warmup)["latency"]
        batch_times = time_interleaved({"batch": lambda: fast(batch)}, max(repeats // 2, 1), warmup)["batch"]
        top1, source = published_top1(name)
        rows.append(CompareRow(model=name, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                               gmacs=count_macs(model, (3, img_size, img_size)) / 1e9,
                               latency_ms=statistics.median(times) * 1e3,
                               images_per_s=batch_size / statistics.median(batch_times),
                               top1=top1, top1_source=source))
    pareto_front(rows)
    return rows


def rows_to_dicts(rows: Sequence[CompareRow]) -> list[dict]:
    return [asdict(row) for row in rows]


def format_table(rows: Sequence[CompareRow]) -> str:
    header = f"{'model':<22}{'params M':>9}{'GMACs':>8}{'lat ms':>9}{'img/s':>8}{'top-1':>8}  pareto"
    lines = [header, "-" * len(header)]
    for r in rows:
        top1 = f"{r.top1:.2f}" if r.top1 is not None else "-"
        lines.append(f"{r.model:<22}{r.params_m:>9.1f}{r.gmacs:>8.2f}{r.latency_ms:>9.1f}"
                     f"{r.images_per_s:>8.1f}{top1:>8}  {'*' if r.pareto else ''}")
    return "\n".join(lines)


def plot_accuracy_vs_latency(rows: Sequence[CompareRow], path: str | Path) -> Path:
    """Scatter of published top-1 against measured batch-1 latency; the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rated = [r for r in rows if r.top1 is not None]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for row in rated:
        axis.scatter(row.latency_ms, row.top1, s=30 + 8 * row.params_m,
                     color="tab:red" if row.pareto else "tab:blue", alpha=0.7)
        axis.annotate(row.model, (row.latency_ms, row.top1), fontsize=8, xytext=(4, 4),
                      textcoords="offset points")
    front = sorted((r for r in rated if r.pareto), key=lambda r: r.latency_ms)
    axis.plot([r.latency_ms for r in front], [r.top1 for r in front], "r--", lw=1, label="Pareto front")
    axis.set_xscale("log")
    axis.set_xlabel("batch-1 latency on this machine (ms, log scale)")
    axis.set_ylabel("published ImageNet-1K top-1 (%)")
    axis.legend(loc="lower right")
    return save_figure(figure, path, dpi=110)
