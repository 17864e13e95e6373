"""``resnets demo``: train, evaluate and predict on scikit-learn's bundled digits (no download)."""

from __future__ import annotations

import argparse

from . import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "demo", run, description="Trains a CIFAR-style ResNet on scikit-learn's digits, "
                    "evaluates it on a held-out split and predicts a few digit PNGs (about a minute on 2 cores).")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..demo import print_result, run_demo

    print_result(run_demo(args.out, args.model, args.epochs, args.seed))
    return 0
