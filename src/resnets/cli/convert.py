"""``resnets convert SRC DST``: weights from torchvision, timm, Keras, Paddle or Caffe to safetensors."""

from __future__ import annotations

import argparse
import sys

from ..terminal import printable
from ..weights.convert import SOURCES, convert
from . import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "convert", run, description="Read weights in another framework's format "
                         "(auto-detected) and write them, with model name, class names and preprocessing, to DST.")
    parser.add_argument("src", metavar="SRC", help="checkpoint to read (.pth, .h5, .keras, .pdparams, .caffemodel...)")
    parser.add_argument("dst", metavar="DST", help="safetensors file to write")
    parser.add_argument("--from", dest="source", default="auto", choices=SOURCES, help="source format (default: auto)")
    parser.add_argument("--model", help="registered model to load into (default: recognised from the tensors; "
                        "needed for v1 stride placement, e.g. resnet50_v1)")
    head = parser.add_mutually_exclusive_group()
    head.add_argument("--num-classes", type=int, help="expected size of the file's classifier head")
    head.add_argument("--drop-head", action="store_true", help="leave the classifier head out")
    parser.add_argument("--prototxt", help="Caffe network definition (with a .caffemodel SRC)")


def run(args: argparse.Namespace) -> int:
    src, caffemodel = args.src, None
    if args.prototxt:
        src, caffemodel = args.prototxt, args.src
    model, imported = convert(src, args.dst, source=args.source, model_name=args.model,
                              num_classes=args.num_classes, drop_head=args.drop_head, caffemodel=caffemodel)
    for note in imported.notes:
        print(f"resnets: note: {printable(note)}", file=sys.stderr)
    print(printable(f"{args.dst}: {imported.model_name}, {model.num_classes} classes, from {imported.source}"))
    return 0
