"""Helpers shared by the training benchmarks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

# The real data sets: $RESNETS_SHARED_DATA, else ../shared/data beside the repository.
SHARED_DATA = Path(os.environ.get("RESNETS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def parse_with_train_overrides(parser, argv: list[str]):
    """``parser``'s arguments, and the ``resnets train`` flags after ``--`` that override the recipe."""
    split = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:split]), argv[split + 1:]


def subset(images: torch.Tensor, labels: torch.Tensor, count: int | None, seed: int = 0):
    if not count or count >= len(labels):
        return images, labels
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count]
    return images[index], labels[index]


def step_rate(model_name: str, batch: int, size: int, device: str, channels_last: bool, amp: bool,
              steps: int = 5) -> float:
    """Training images/s of one SGD step (forward, backward, update) after 2 warm-up steps."""
    from resnets import create_model

    model = create_model(model_name).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for i in range(steps + 2):
        if i == 2:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def parallel_step_rate(model_name: str, batch: int, size: int, procs: int, steps: int = 5) -> float:
    """CPU training images/s of ``procs`` single-threaded processes stepping at once, each on
    ``batch // procs`` images (``resnets train --procs``; the gradient all-reduce is not timed:
    3 ms a step for ResNet-20 on 2 cores)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        rates = pool.map(step_rate, *zip(*[(model_name, batch // procs, size, "cpu", True, False, steps)] * procs))
        return sum(rates)


def save_plot(path: Path, xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
