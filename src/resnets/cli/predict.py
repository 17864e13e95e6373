"""``resnets predict``: top-k classes and probabilities of image files."""

from __future__ import annotations

import argparse

from ..errors import ResnetsError
from . import add_command, add_model_argument, print_json

BACKEND_HELP = ("exact inference backend: auto (default), eager, compile, onnxruntime or openvino. auto runs eager "
                "for a few images; from 256 images (or, once a run has probed this model at this size on this "
                "machine, from the count at which the time it measured an ONNX runtime to save pays for exporting "
                "the model) it runs the fastest of onnxruntime, OpenVINO and eager, chosen by a timed probe "
                "that is cached per model, input size and machine. An ONNX file runs in onnxruntime "
                "(auto: or OpenVINO, if faster)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "predict", run, description="Top-k class names and probabilities per image. Inputs "
                    "are image files, folders of images (recursive), zips of images and list files (.txt/.lst: one "
                    "image path per line). Unreadable files are named in a warning on stderr and skipped.")
    add_model_argument(p, "checkpoint")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image file, folder (recursive), zip, or list file of images (one or more)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--threshold", type=float, metavar="P",
                   help="multi-label models: print every label with probability >= P (default: the model's, 0.5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    from ..data.collection import open_collection
    from ..inference import INT8_BACKENDS
    from ..predict import load_for_inference, predict_files

    if args.topk < 1:
        raise ResnetsError(f"--topk must be >= 1, got {args.topk}")
    if args.backend in INT8_BACKENDS:
        raise ResnetsError(f"backend {args.backend!r} needs calibration images, which predict does not have: "
                           f"`resnets evaluate CHECKPOINT --data DIR --backend {args.backend}` calibrates on DIR")
    if not args.inputs:
        raise ResnetsError(f"predict needs MODEL, then the images: only {args.checkpoint!r} was given "
                           "(MODEL: a run directory, weights or ONNX file, or a name such as resnet50)")
    collection = open_collection(args.inputs)
    if not len(collection):
        raise ResnetsError("no readable image among the inputs")
    predictor = load_for_inference(args.checkpoint, args.device, backend=args.backend, images=len(collection))
    results = predict_files(predictor, collection, topk=args.topk, threshold=args.threshold)
    if not results:
        raise ResnetsError("no readable image among the inputs")
    if args.json:
        return print_json(results)
    from ..terminal import printable

    for result in results:  # class and file names are untrusted text: no escape codes reach the terminal
        multi_label = "labels" in result  # every label at or above the threshold, else the top k
        shown = ", ".join(f"{printable(t['class'])} {100 * t['probability']:.1f}%"
                          for t in result["labels" if multi_label else "top"])
        if multi_label and not shown:
            shown = f"no label at or above {result['threshold']:g}"
        print(f"{printable(result['path'])}: {shown}")
    return 0
