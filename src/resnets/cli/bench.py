"""``resnets bench``: latency, throughput, memory and efficiency against torchvision's eager model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure inference (and training) speed on this machine",
                                   description=__doc__)
    parser.add_argument("models", nargs="*", default=["resnet50"], metavar="MODEL",
                        help="model names (default: resnet50)")
    parser.add_argument("--backend", default=None,
                        help="comma-separated: eager, compile, onnxruntime, openvino, int8, openvino-int8 "
                             "(default: eager, plus onnxruntime when installed)")
    parser.add_argument("--batch-size", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32)")
    parser.add_argument("--img-size", type=int, default=None, help="input side (default: the model's own)")
    parser.add_argument("--train", action="store_true", help="also measure training-step images/s")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per backend and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="folder for bench.json and bench.png (default: ./bench-results)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import benchmark, default_backends, format_table, parse_batch_sizes, plot_report
    from ..fileio import atomic_write_text

    backends = args.backend.split(",") if args.backend else list(default_backends())
    batch_sizes = parse_batch_sizes(args.batch_size)
    report = benchmark(args.models, [b.strip() for b in backends if b.strip()], batch_sizes,
                       img_size=args.img_size, train=args.train, repeats=args.reps, warmup=args.warmup,
                       progress=lambda message: print(message, file=sys.stderr))
    document = json.dumps(report.to_dict(), indent=2)
    atomic_write_text(args.out / "bench.json", document + "\n")
    plot = plot_report(report, args.out / "bench.png")
    if args.json:
        print(document)
    else:
        print(format_table(report))
        print(f"wrote {args.out / 'bench.json'} and {plot}")
    return 0
