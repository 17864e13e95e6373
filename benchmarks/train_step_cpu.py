"""CPU training-step throughput: our step against a plain torchvision + SGD loop, same run.

Our step (``ours``): channels-last model and batch, fused (else foreach) SGD, no per-step
synchronisation (the loss is not read back each step). ``ours_procs``: the same step split over
``--procs`` single-threaded processes, each with its share of the batch, gradients averaged by
DistributedDataParallel on gloo: what ``resnets train --procs N`` does. The plain loop: NCHW,
for-loop SGD, ``loss.item()`` every step. For ResNet-20 (which torchvision lacks) the plain loop
runs our model the plain way. Steps of all are interleaved, and each is timed in the main
process, so the data-parallel row also pays for its messages. Prints one JSON document.

    PYTHONPATH=src python benchmarks/train_step_cpu.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from resnets import create_model
from resnets.timing import time_interleaved

CASES = {"resnet20": (32, 128, 10), "resnet50": (224, 16, 1000)}  # side, batch, classes
TARGET = 1.3


def our_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model = model.to(memory_format=torch.channels_last).train()
    images = images.contiguous(memory_format=torch.channels_last)
    optimizer = _make_sgd(model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def plain_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model = model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=False)

    def step() -> None:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def _make_sgd(model: nn.Module) -> torch.optim.Optimizer:
    try:  # the settings of resnets' training loop: fused SGD where supported, else foreach
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
    except RuntimeError:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=True)


def _rank_loop(rank: int, procs: int, port: int, name: str, state: dict, images: torch.Tensor,
               labels: torch.Tensor, commands: list, done) -> None:
    """One process of the data-parallel step: its slice of the batch, one thread, DDP on gloo.
    Runs one step per command until it gets ``None``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=procs)
    model = create_model(name, num_classes=state["fc.weight"].shape[0])
    model.load_state_dict(state)
    model = nn.parallel.DistributedDataParallel(model.to(memory_format=torch.channels_last).train())
    share = len(labels) // procs
    x = images[rank * share:(rank + 1) * share].contiguous(memory_format=torch.channels_last)
    y = labels[rank * share:(rank + 1) * share]
    optimizer = _make_sgd(model)
    while commands[rank].get() is not None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        dist.barrier()
        if rank == 0:
            done.put(True)
    dist.destroy_process_group()


class ProcsStep:
    """A callable step that runs in ``procs`` worker processes (see :func:`_rank_loop`)."""

    def __init__(self, procs: int, name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        from resnets.train.distributed import free_port

        spawn = mp.get_context("spawn")
        self.commands = [spawn.SimpleQueue() for _ in range(procs)]
        self.done = spawn.SimpleQueue()
        self.context = mp.start_processes(
            _rank_loop, args=(procs, free_port(), name, model.state_dict(), images, labels, self.commands,
                              self.done), nprocs=procs, join=False, start_method="spawn")

    def __call__(self) -> None:
        for queue in self.commands:
            queue.put(1)
        self.done.get()

    def close(self) -> None:
        for queue in self.commands:
            queue.put(None)
        self.context.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--procs", type=int, default=torch.get_num_threads(),
                        help="processes of the data-parallel row (default: one per thread; 1: no such row)")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: output is always JSON")
    args = parser.parse_args()
    results = {}
    for name in args.models.split(","):
        side, batch_size, classes = CASES[name]
        torch.manual_seed(0)
        images, labels = torch.randn(batch_size, 3, side, side), torch.randint(0, classes, (batch_size,))
        ours = create_model(name)
        plain = torchvision.models.get_model(name) if name in torchvision.models.list_models() else create_model(name)
        plain.load_state_dict(ours.state_dict())
        print(f"timing {name} batch {batch_size}", file=sys.stderr)
        steps = {"ours": our_step(ours, images, labels), "plain": plain_step(plain, images, labels)}
        if args.procs > 1:
            steps["ours_procs"] = ProcsStep(args.procs, name, ours, images, labels)
        try:
            times = time_interleaved(steps, args.reps, args.warmup)
        finally:
            if "ours_procs" in steps:
                steps["ours_procs"].close()
        rates = {k: batch_size / statistics.median(v) for k, v in times.items()}
        results[name] = {"img_size": side, "batch_size": batch_size, "images_per_s": rates,
                         "plain_peer": "torchvision" if name in torchvision.models.list_models() else "resnets NCHW",
                         "speedup": rates["ours"] / rates["plain"],
                         "speedup_procs": rates["ours_procs"] / rates["plain"] if args.procs > 1 else None}
    print(json.dumps({"benchmark": "train_step_cpu", "threads": torch.get_num_threads(), "reps": args.reps,
                      "procs": args.procs, "results": results, "target_speedup": TARGET,
                      "met": {k: max(v["speedup"], v["speedup_procs"] or 0) >= TARGET for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
