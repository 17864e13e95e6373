"""CPU training-step throughput: our step against a plain torchvision + SGD loop, same run.

Our step: channels-last model and batch, fused (else foreach) SGD, no per-step synchronisation (the loss is
not read back each step). The plain loop: NCHW, for-loop SGD, ``loss.item()`` every step. For
ResNet-20 (which torchvision lacks) the plain loop runs our model the plain way. Steps of both
are interleaved. Prints one JSON document.

    PYTHONPATH=src python benchmarks/train_step_cpu.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torchvision
from torch import nn

from resnets import create_model
from resnets.bench import time_interleaved

CASES = {"resnet20": (32, 128, 10), "resnet50": (224, 16, 1000)}  # side, batch, classes
TARGET = 1.3


def our_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model = model.to(memory_format=torch.channels_last).train()
    images = images.contiguous(memory_format=torch.channels_last)
    try:  # the settings of resnets' training loop: fused SGD where supported, else foreach
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
    except RuntimeError:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=True)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", default=",".join(CASES))
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
        times = time_interleaved({"ours": our_step(ours, images, labels),
                                  "plain": plain_step(plain, images, labels)}, args.reps, args.warmup)
        rates = {k: batch_size / statistics.median(v) for k, v in times.items()}
        results[name] = {"img_size": side, "batch_size": batch_size, "images_per_s": rates,
                         "plain_peer": "torchvision" if name in torchvision.models.list_models() else "resnets NCHW",
                         "speedup": rates["ours"] / rates["plain"]}
    print(json.dumps({"benchmark": "train_step_cpu", "threads": torch.get_num_threads(), "reps": args.reps,
                      "results": results, "target_speedup": TARGET,
                      "met": {k: v["speedup"] >= TARGET for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
