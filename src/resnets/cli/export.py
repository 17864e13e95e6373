"""``resnets export CHECKPOINT --format onnx|torchscript|safetensors|prototxt --out PATH``."""

from __future__ import annotations

import argparse

from ..export import FORMATS, check_export_input_size, export, export_paths, load_checkpoint
from ..fileio import check_output_is_not_input
from . import add_command, add_model_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "export", run, description="Export a model; the result is checked against "
                         "PyTorch before it is written.")
    add_model_argument(parser, "checkpoint", pretrained=False)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="file to write (prototxt: the weights go beside it, "
                        "as NAME.caffemodel)")
    parser.add_argument("--input-size", type=int, help="side of the example input (default: the model's)")


def run(args: argparse.Namespace) -> int:
    check_export_input_size(args.input_size)  # before the model is built
    for out in export_paths(args.format, args.out):
        check_output_is_not_input(out, args.checkpoint)
    path = export(load_checkpoint(args.checkpoint), args.format, args.out, args.input_size)
    print(f"{path}: {args.format}")
    return 0
