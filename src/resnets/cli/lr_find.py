"""``resnets lr-find``: the learning-rate range test (see :mod:`resnets.lr_find`)."""

from __future__ import annotations

import argparse
import json
import sys

from ..train.config import AUGMENT_PRESETS, OPTIMIZERS, parse_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..lr_find import SWEEP_RULES

    p = subparsers.add_parser("lr-find", help="find a learning rate: sweep it over a few hundred training steps",
                              description="Train for --steps steps while the learning rate grows exponentially "
                              "from --start to --end (stopping once the smoothed loss exceeds 4x its minimum), "
                              "plot the loss against the rate and suggest a rate: where the loss falls fastest, "
                              "and the rate of its minimum / 10. The same set-up as `resnets train` (data, "
                              "augmentation, optimizer); no weights are kept.")
    p.add_argument("--model", help="registered model name (default: the one --weights names)")
    p.add_argument("--data", required=True, help="image folder, zip, CIFAR pickle folder or LMDB")
    p.add_argument("--weights", help="start from a run directory, a weights file or a pretrained tag of --model")
    p.add_argument("--out", required=True, help="the plot to write (PNG)")
    p.add_argument("--start", type=parse_arg("start", SWEEP_RULES["start"]), default=1e-7,
                   help="first learning rate (default %(default)g)")
    p.add_argument("--end", type=parse_arg("end", SWEEP_RULES["end"]), default=10.0,
                   help="last learning rate (default %(default)g)")
    p.add_argument("--steps", type=parse_arg("steps", SWEEP_RULES["steps"]), default=200,
                   help="optimizer steps of the sweep (default %(default)s)")
    p.add_argument("--batch-size", type=parse_arg("batch_size"))
    p.add_argument("--opt", choices=OPTIMIZERS)
    p.add_argument("--momentum", type=parse_arg("momentum"))
    p.add_argument("--weight-decay", type=parse_arg("weight_decay"))
    p.add_argument("--label-smoothing", type=parse_arg("label_smoothing"))
    p.add_argument("--img-size", type=parse_arg("img_size"), help="input size (default: the model's)")
    p.add_argument("--in-chans", type=parse_arg("in_chans"), metavar="N",
                   help="input channels (1: a gray model; RGB --weights are adapted)")
    p.add_argument("--augment", choices=AUGMENT_PRESETS, help="augmentation preset (default: the model's)")
    p.add_argument("--freeze", help="'backbone' or a comma list of stem,layer1,...,layer4")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--seed", type=parse_arg("seed"))
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=parse_arg("workers"), help="image decoding threads")
    p.add_argument("--json", action="store_true", help="print one JSON document (the sweep and the suggestions)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=run, **_defaults(p))


def _defaults(parser: argparse.ArgumentParser) -> dict:
    """Defaults of the training settings: TrainConfig's, as ``resnets train`` has them."""
    from dataclasses import MISSING, fields

    from ..train.config import TrainConfig

    options = {action.dest for action in parser._actions} - {"out"}
    return {f.name: f.default for f in fields(TrainConfig) if f.name in options and f.default is not MISSING}


def run(args: argparse.Namespace) -> int:
    from ..lr_find import check_sweep, lr_find, plot_lr_find
    from ..train import TrainConfig

    check_sweep(args.start, args.end, args.steps)
    sweep = ("start", "end", "steps", "json", "handler", "command", "out")
    config = TrainConfig.from_dict({k: v for k, v in vars(args).items() if k not in sweep})
    result = lr_find(config, args.start, args.end, args.steps)
    plot_lr_find(result, args.out)
    if args.json:
        print(json.dumps({**result.to_dict(), "plot": args.out}))
        return 0
    stop = f"stopped at {result.diverged_at:.3g} (the loss diverged)" if result.diverged_at is not None \
        else "the loss did not diverge"
    print(f"suggested learning rate: {result.steepest:.3g} (steepest descent of the smoothed loss), "
          f"{result.minimum_over_10:.3g} (its minimum / 10)")
    print(f"swept {args.start:g} .. {args.end:g} in {len(result.lrs)} steps, {stop}; plot: {args.out}",
          file=sys.stderr)
    return 0
