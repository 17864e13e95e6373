"""``resnets compare``: ResNets beside other CNNs (size, MACs, speed here, published top-1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..compare import DEFAULT_MODELS

    parser = subparsers.add_parser("compare", help="compare CNNs: size, MACs, speed, published accuracy",
                                   description=__doc__)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated model names (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--backend", default="eager", help="inference backend used for every model")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the throughput figure")
    parser.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--out", type=Path, default=Path("compare-results"),
                        help="folder for compare.json and compare.png (default: ./compare-results)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import compare, format_table, plot_accuracy_vs_latency, rows_to_dicts
    from ..fileio import atomic_write_text

    models = [name.strip() for name in args.models.split(",") if name.strip()]
    rows = compare(models, backend=args.backend, batch_size=args.batch_size, img_size=args.img_size,
                   repeats=args.reps, warmup=args.warmup,
                   progress=lambda message: print(message, file=sys.stderr))
    document = json.dumps({"backend": args.backend, "batch_size": args.batch_size,
                           "img_size": args.img_size, "models": rows_to_dicts(rows)}, indent=2)
    atomic_write_text(args.out / "compare.json", document + "\n")
    plot = plot_accuracy_vs_latency(rows, args.out / "compare.png")
    if args.json:
        print(document)
    else:
        print(format_table(rows))
        print(f"wrote {args.out / 'compare.json'} and {plot}")
    return 0
