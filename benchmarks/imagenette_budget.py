"""Imagenette from scratch under a time budget: ``resnets train --minutes`` against the reference.

The recipe (``--config``, default ``imagenette-resnet20-budget``) is planned by the train
command's own planner to end within ``--minutes`` (default 14) of this command's start: decoding
the 224 px JPEGs into memory at the recipe's input size, training, every validation and the final
score (plain and with ``--tta``) all count. 10 % of each class of ``imagenette-224-train.zip`` is
held out (``resnets train``'s default split, seed 0) and plays the test set. With ``--reference``
the same command then trains the earlier reference, ResNet-20 at 64 px for 6 epochs as in
session 6 (SGD 0.1 at batch 64, warm-up 0.3, label smoothing 0.1: 70.7 %), on the same split.

Writes ``OUT/imagenette_budget.json`` (also printed) and ``OUT/imagenette_budget.png``:

    python benchmarks/imagenette_budget.py --minutes 14 --reference
    python benchmarks/imagenette_budget.py --minutes 14 -- --model resnet32
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, parse_with_train_overrides  # noqa: E402
from cifar10_time_to_accuracy import benchmark_recipe, machine, minutes_to, plot, train_config  # noqa: E402

THRESHOLDS = (70.0, 75.0, 80.0)
REFERENCE = ["--progressive-resize", "1", "--sched", "cosine", "--lr", "0.1", "--batch-size", "64",
             "--warmup-epochs", "0.3"]  # with the recipe's ResNet-20, 64 px, label smoothing 0.1, 6 epochs


def main() -> None:
    args, overrides = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    size = train_config(args.config, overrides, Path(args.out), args.data).img_size or 64
    data = decode(args, size)
    runs = [(args.config, overrides, Path(args.out) / "main", args)]
    if args.reference:
        runs.append((args.config, REFERENCE, Path(args.out) / "reference", copy.copy(args)))
        runs[-1][3].epochs = "6"
    reports = []
    for recipe, flags, out, run_args in runs:
        run_start = start if not reports else time.perf_counter() - args.decode_s  # each as if alone
        report = benchmark_recipe(recipe, flags, out, data, run_args, run_start, args.decode_s)
        report["minutes_to"] = {f"{t:g}": minutes_to(report["points"], t) for t in THRESHOLDS}
        reports.append(report)
    report = {"benchmark": "imagenette_budget", "threads": args.threads, "budget_minutes": args.minutes,
              "img_size": size, "train_images": len(data.train_labels), "heldout_images": len(data.val_labels),
              "machine": machine(), "runs": reports}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "imagenette_budget.json").write_text(json.dumps(report, indent=2))
    plot(out / "imagenette_budget.png", reports, "Imagenette held-out", THRESHOLDS)
    print(json.dumps(report))


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="flags after -- override the recipe's, as on resnets train")
    p.add_argument("--config", default="imagenette-resnet20-budget", help="the recipe (a shipped name or a YAML file)")
    p.add_argument("--reference", action="store_true", help="then the 6-epoch ResNet-20 reference, same split")
    p.add_argument("--data", default=str(SHARED_DATA / "imagenette-224-train.zip"))
    p.add_argument("--minutes", type=float, default=14.0, help="the recipe's budget (default 14)")
    p.add_argument("--tta", default="flip", help="test-time augmentation of the final score (flip, multicrop, none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench-imagenette-budget")
    args, overrides = parse_with_train_overrides(p, sys.argv[1:])
    args.epochs = "auto"
    return args, overrides


def decode(args: argparse.Namespace, size: int):
    """Training and held-out images decoded once into memory at ``size`` (timed: it counts)."""
    from resnets.train.inputs import load_in_memory

    began = time.perf_counter()
    data = load_in_memory(args.data, size, 0.1, 0, args.threads)
    args.decode_s = time.perf_counter() - began
    print(f"decoded {len(data.train_labels)} training and {len(data.val_labels)} held-out images at {size} px "
          f"in {args.decode_s:.1f} s", file=sys.stderr)
    return data


if __name__ == "__main__":
    main()
