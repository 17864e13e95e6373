"""`resnets summary`: the per-layer table of a model, a weights file or a Caffe prototxt."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from ..errors import ResnetsError
from ..factory import create_model
from ..summarize import summary
from . import add_command, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "summary", run, description="Print a per-layer summary of a registered model, a "
                         "weights file (.safetensors) or a Caffe .prototxt.")
    parser.add_argument("model", metavar="NAME_OR_PATH")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side in pixels (default: the model's natural size)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None,
                        help="show the module tree down to this depth (default: every leaf layer)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def load_any_model(spec: str, num_classes: int | None) -> tuple[nn.Module, int]:
    """A model and its natural input side from a registry name, weights file or prototxt."""
    path = Path(spec)
    if path.suffix == ".prototxt":
        if not path.is_file():
            raise ResnetsError(f"no such prototxt: {path}")
        from ..weights.caffe import from_prototxt

        model = from_prototxt(path)
        return model, int(getattr(model, "input_size", (3, 224, 224))[-1])
    from ..factory import load_model, split_tag, weights_path

    if num_classes is not None and weights_path(spec) is None and split_tag(spec)[1] is None:
        model = create_model(spec, num_classes=num_classes)  # the architecture with another head
    else:
        model = load_model(spec, pretrained=False)
    return model, model.preprocessing.input_size


def run(args: argparse.Namespace) -> int:
    model, natural_size = load_any_model(args.model, args.num_classes)
    result = summary(model, args.input_size or natural_size, depth=args.depth)
    data_info = getattr(model, "data_info", None)  # what a Caffe prototxt's data layers declare
    if data_info is not None:
        result.extra["data"] = data_info.to_dict()
    if args.json:
        return print_json(result.to_dict())
    print(result)
    if data_info is not None:
        print("Data layers: " + ", ".join(f"{k}={v}" for k, v in data_info.to_dict().items() if v not in (None, [], {})))
    return 0
