"""``resnets explain``: class-activation maps of a model's predictions over image files."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnetsError
from . import add_command, add_model_argument, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..explain import METHODS

    p = add_command(subparsers, "explain", run, description="For each image, a PNG of the class-activation map over "
                    "the photo (the part the model saw; the rest dimmed) with the top-k labels, and the maps' peaks "
                    "in DIR/explanations.json. Maps come from the grad-cam package (pip install 'resnets[explain]').")
    add_model_argument(p, "model")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image file, folder of images (recursive), zip of images, or list file (.txt/.lst: one "
                   "image path per line)")
    p.add_argument("--method", default="gradcam", help=f"one of {', '.join(METHODS)} (default gradcam)")
    p.add_argument("--class", "--target", dest="target", metavar="CLASS",
                   help="class to map, by name or index (default: each image's top prediction); a multi-label "
                   "model's map is of that class's sigmoid")
    p.add_argument("--layer", help="module to take the map from (default: the last block of the last stage, "
                   "e.g. layer4.1)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and explanations.json")
    p.add_argument("--topk", type=int, default=5, help="labels shown per image (default 5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    from ..explain import check_method, check_topk, default_layer, explain_files
    from ..predict import load_for_inference
    from ..terminal import printable
    from ..weights.onnx import is_onnx_path

    check_method(args.method)
    check_topk(args.topk)
    if is_onnx_path(args.model):
        raise ResnetsError(f"explain needs gradients through the model, which an ONNX file ({printable(args.model)}) "
                           "does not give; pass the weights file it was exported from")
    predictor = load_for_inference(args.model, args.device)
    layer = args.layer or default_layer(predictor.plain)
    records, failures = explain_files(predictor, args.images, args.out, args.method, args.target, layer, args.topk)
    if args.json:
        print_json({"model": str(args.model), "method": args.method, "layer": layer, "out": args.out,
                    "images": records, "unreadable": failures})
    else:
        for r in records:
            peak = r["peak"]
            tops = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"][:3])
            line = (f"{r['path']}: {r['method']} map of {r['target_class']!r} peaks at "
                    f"({peak['image_x']}, {peak['image_y']}) [{tops}] -> {r['png']}")
            print(printable(line))
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        done = f"; the {len(records)} other image(s) were explained into {args.out}" if records else ""
        raise ResnetsError(f"{failures[0]}{more}{done}")
    if not records:
        raise ResnetsError("no image among the inputs")
    print(f"{len(records)} map(s) and explanations.json in {args.out}", file=sys.stderr)
    return 0
