"""``resnets compare``: ResNets beside other CNNs (size, MACs, speed here, published top-1)."""

from __future__ import annotations

import argparse
import json
import sys

from . import add_command
from .bench import add_timing_arguments, write_results


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..compare import DEFAULT_MODELS

    parser = add_command(subparsers, "compare", run, description=__doc__)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated model names (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--backend", default="eager", help="inference backend used for every model")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the throughput figure")
    parser.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    add_timing_arguments(parser, "compare", "timed calls per model")


def run(args: argparse.Namespace) -> int:
    from ..compare import compare, format_table, plot_accuracy_vs_latency, rows_to_dicts

    models = [name.strip() for name in args.models.split(",") if name.strip()]
    rows = compare(models, backend=args.backend, batch_size=args.batch_size, img_size=args.img_size,
                   repeats=args.reps, warmup=args.warmup,
                   progress=lambda message: print(message, file=sys.stderr))
    document = json.dumps({"backend": args.backend, "batch_size": args.batch_size,
                           "img_size": args.img_size, "models": rows_to_dicts(rows)}, indent=2)
    return write_results(args, "compare", document, format_table(rows),
                         lambda png: plot_accuracy_vs_latency(rows, png))
