"""``resnets evaluate``: accuracy, per-class metrics and a confusion matrix of a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluate import SPLITS
from ..metrics import TTA_MODES
from ..settings import Bound, parse_arg
from ..terminal import printable
from . import add_command, add_model_argument, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "evaluate", run, description="Top-1/top-5, per-class precision/recall/F1 and a "
                    "confusion-matrix PNG, on the held-out images: the data's val/test split, else the run's own "
                    "--val-split (same seed and fraction), else all of it. Classes are matched by name.")
    add_model_argument(p, "checkpoint")
    p.add_argument("--data", required=True, help="image folder, zip, CIFAR pickle folder or LMDB")
    p.add_argument("--split", choices=SPLITS, default="auto",
                   help="auto (default): the held-out images; val; train; all")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation, logits averaged over views: flip (the image and its mirror), "
                   "multicrop (those two, each also shifted one pixel up-left and down-right with reflection: 6)")
    p.add_argument("--backend", default="auto",
                   help="inference backend: auto (default: eager for fewer images, views of --tta counted, than an "
                   "export pays back: 256, or the break-even a cached probe of this model on this machine measured; "
                   "else the fastest of onnxruntime, OpenVINO and eager by a timed probe cached per model, size and "
                   "machine), eager, compile, onnxruntime, openvino, or int8 / openvino-int8 (calibrated on 256 "
                   "training images, so that the accuracy cost of int8 shows here)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--confusion", help="confusion-matrix PNG (default: confusion.png in the run directory, "
                   "or beside the weights file)")
    p.add_argument("--report", nargs="?", const="", metavar="DIR",
                   help="also write the highest-loss images (top_losses.png) and the most-confused class pairs "
                   "(interpretation.json) to DIR (default: report/ beside the confusion matrix)")
    p.add_argument("--report-cam", action="store_true",
                   help="with --report: lay the Grad-CAM of the predicted class over each image (implies --report)")
    p.add_argument("--recall-floor", type=parse_arg("recall_floor", Bound(float, 0, 1)), default=0.5,
                   metavar="R", help="flag classes whose recall is under R (default %(default)s)")
    p.add_argument("--threshold", type=_threshold, metavar="P|tune",
                   help="multi-label models: decide labels at probability P (default: the model's, 0.5), or "
                        "'tune' for each class's best-F1 threshold on the evaluated images (optimistic)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate

    checkpoint = Path(args.checkpoint)
    # beside the weights, in the run directory, or (a model name) in the working folder
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent if checkpoint.exists() else Path()
    png = Path(args.confusion) if args.confusion else folder / "confusion.png"
    report_dir = _report_dir(args, png)
    report = evaluate(args.checkpoint, args.data, batch_size=args.batch_size, tta=args.tta, device=args.device,
                      confusion_png=png, backend=args.backend, split=args.split, report_dir=report_dir,
                      report_cam=args.report_cam, recall_floor=args.recall_floor, threshold=args.threshold)
    if not hasattr(report, "top1"):  # a multi-label model's MultiLabelReport
        return _print_multi_label(report, args.json)
    if args.json:
        return print_json({**report.to_dict(), "confusion_png": str(png)})
    for name, count in report.skipped_classes.items():
        print(f"resnets: warning: left out {count} image(s) of class {printable(repr(name))}, which the model "
              "does not know", file=sys.stderr)
    print(f"{report.count} images, {report.split_how} ({report.backend}): top-1 {report.top1:.2f}%  "
          f"top-5 {report.top5:.2f}%  loss {report.loss:.4f}")
    print(f"balanced accuracy {report.balanced_accuracy:.2f}%  macro-F1 {report.macro_f1:.3f}")
    names = [printable(row["class"]) for row in report.per_class]
    width = max(map(len, names))
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for name, row in zip(names, report.per_class):
        print(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  "
              f"{row['support']:7d}")
    if report.low_recall:
        print(f"recall under {report.recall_floor:g}: {', '.join(printable(n) for n in report.low_recall)}")
    if report.interpretation is not None:
        _print_interpretation(report.interpretation)
    print(f"confusion matrix: {png}", file=sys.stderr)
    return 0


def _report_dir(args: argparse.Namespace, confusion_png: Path) -> Path | None:
    """--report's folder: as given, else report/ beside the confusion matrix; None without --report."""
    if args.report is None and not args.report_cam:
        return None
    return Path(args.report) if args.report else confusion_png.parent / "report"


def _print_interpretation(record: dict) -> None:
    pairs = record["most_confused"]
    print("most confused (true -> predicted: images):" if pairs else "most confused: none (no mistakes)")
    for pair in pairs:
        print(f"  {printable(pair['true'])} -> {printable(pair['predicted'])}: {pair['count']}")
    print(f"highest losses: {record['top_losses_png']}", file=sys.stderr)


def _threshold(text: str) -> float | str:
    """--threshold: a probability in (0, 1) or ``tune``."""
    from ..multilabel import check_threshold

    if text == "tune":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or 'tune', got {text!r}") from None
    try:
        return check_threshold(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _print_multi_label(report, as_json: bool) -> int:  # noqa: ANN001 (a resnets.multilabel.MultiLabelReport)
    if as_json:
        return print_json(report.to_dict())
    for name, count in report.skipped_classes.items():
        print(f"resnets: warning: left out label {printable(repr(name))} ({count} image(s)), which the model "
              "does not know", file=sys.stderr)
    how = {"tuned": "per-class thresholds tuned for F1 on these images (optimistic)",
           "given": "threshold given", "recorded": "the model's threshold"}[report.threshold_how]
    print(f"{report.count} images, {report.split_how} ({report.backend}): mAP {report.map:.4f}  "
          f"micro-F1 {report.micro_f1:.3f}  macro-F1 {report.macro_f1:.3f}  loss {report.loss:.4f} ({how})")
    names = [printable(row["class"]) for row in report.per_class]
    width = max(map(len, names + ["class"]))
    print(f"{'class':<{width}}      AP  threshold  precision  recall     f1  support")
    for name, row in zip(names, report.per_class):
        ap = "    -" if row["ap"] is None else f"{row['ap']:.3f}"
        print(f"{name:<{width}}  {ap:>6}  {row['threshold']:9.3f}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
              f"{row['f1']:5.3f}  {row['support']:7d}")
    if report.no_positives:
        print(f"no positives (left out of mAP): {', '.join(printable(n) for n in report.no_positives)}")
    return 0
