"""``resnets bench``: latency, throughput, memory and efficiency against torchvision's eager model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from . import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "bench", run, description=__doc__)
    parser.add_argument("models", nargs="*", default=["resnet50"], metavar="MODEL",
                        help="model names (default: resnet50)")
    parser.add_argument("--backend", default=None,
                        help="comma-separated: eager, compile, onnxruntime, openvino, int8, openvino-int8 "
                             "(default: eager, plus onnxruntime when installed)")
    parser.add_argument("--batch-size", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32)")
    parser.add_argument("--img-size", type=int, default=None, help="input side (default: the model's own)")
    parser.add_argument("--train", action="store_true", help="also measure training-step images/s")
    add_timing_arguments(parser, "bench", "timed calls per backend and batch size")


def add_timing_arguments(parser: argparse.ArgumentParser, name: str, reps_help: str) -> None:
    """--reps, --warmup, --json and --out, as ``bench`` and ``compare`` take them."""
    parser.add_argument("--reps", type=int, default=5, help=reps_help)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--out", type=Path, default=Path(f"{name}-results"),
                        help=f"folder for {name}.json and {name}.png (default: ./{name}-results)")


def write_results(args: argparse.Namespace, name: str, document: str, table: str,
                  plot: Callable[[Path], Path]) -> int:
    """Write --out/NAME.json and, by ``plot``, --out/NAME.png; print the document (--json) or the table."""
    from ..fileio import atomic_write_text

    atomic_write_text(args.out / f"{name}.json", document + "\n")
    png = plot(args.out / f"{name}.png")
    if args.json:
        print(document)
    else:
        print(table)
        print(f"wrote {args.out / f'{name}.json'} and {png}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..bench import benchmark, default_backends, format_table, parse_batch_sizes, plot_report
    backends = args.backend.split(",") if args.backend else list(default_backends())
    batch_sizes = parse_batch_sizes(args.batch_size)
    report = benchmark(args.models, [b.strip() for b in backends if b.strip()], batch_sizes,
                       img_size=args.img_size, train=args.train, repeats=args.reps, warmup=args.warmup,
                       progress=lambda message: print(message, file=sys.stderr))
    return write_results(args, "bench", json.dumps(report.to_dict(), indent=2), format_table(report),
                         lambda png: plot_report(report, png))
