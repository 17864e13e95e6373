"""``resnets lr-find``: the learning-rate range test (see :mod:`resnets.lr_find`); its training
settings are those :class:`resnets.train.config.TrainConfig` declares for ``lr-find``."""

from __future__ import annotations

import argparse
import sys

from ..settings import add_arguments, parse_arg
from ..train.config import TrainConfig
from . import add_command, print_json

SWEEP_OPTIONS = ("start", "end", "steps", "json", "handler", "command", "out")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..lr_find import SWEEP_RULES

    p = add_command(subparsers, "lr-find", run, description="Train for --steps steps while the learning rate grows "
                    "exponentially from --start to --end (stopping once the smoothed loss exceeds 4x its minimum), "
                    "plot the loss against the rate and suggest a rate: where the loss falls fastest, and the rate of "
                    "its minimum / 10. The same set-up as `resnets train` (data, augmentation, optimizer); no weights "
                    "are kept.")
    p.add_argument("--out", required=True, help="the plot to write (PNG)")
    p.add_argument("--start", type=parse_arg("start", SWEEP_RULES["start"]), default=1e-7,
                   help="first learning rate (default %(default)g)")
    p.add_argument("--end", type=parse_arg("end", SWEEP_RULES["end"]), default=10.0,
                   help="last learning rate (default %(default)g)")
    p.add_argument("--steps", type=parse_arg("steps", SWEEP_RULES["steps"]), default=200,
                   help="optimizer steps of the sweep (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document (the sweep and the suggestions)")
    add_arguments(p, TrainConfig, command="lr-find", required=("data",))


def run(args: argparse.Namespace) -> int:
    from ..lr_find import DIVERGENCE, check_sweep, lr_find, plot_lr_find

    check_sweep(args.start, args.end, args.steps)
    config = TrainConfig.from_dict({k: v for k, v in vars(args).items() if k not in SWEEP_OPTIONS})
    result = lr_find(config, args.start, args.end, args.steps)
    plot_lr_find(result, args.out)
    if args.json:
        return print_json({**result.to_dict(), "plot": args.out})
    stop = f"stopped at {result.diverged_at:.3g} (the smoothed loss passed {DIVERGENCE:g}x its minimum)" \
        if result.diverged_at is not None else \
        f"the smoothed loss ended at {result.final_over_minimum:.2f}x its minimum"
    print(f"suggested learning rate: {result.valley:.3g} (fastai's valley), {result.steepest:.3g} (steepest "
          f"descent of the smoothed loss), {result.minimum_over_10:.3g} (its minimum / 10)")
    print(f"swept {args.start:g} .. {args.end:g} in {len(result.lrs)} steps, {stop}; plot: {args.out}",
          file=sys.stderr)
    return 0
