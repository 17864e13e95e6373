"""``resnets train``: train, fine-tune or resume a model (see :mod:`resnets.train`).

Its options are generated from :class:`resnets.train.config.TrainConfig`; one not given is left
out of the parsed arguments (``SUPPRESS``), so that :func:`settings_from_args` layers the
declared defaults, the recipe of ``--config`` and the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..settings import add_arguments
from ..train.config import TrainConfig
from ..train.recipes import list_recipes, read_recipe, recipe_yaml
from . import add_command

# Parsed arguments that are about the command, not the run's settings.
_NOT_SETTINGS = ("handler", "command", "config", "print_config", "started")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "train", run, argument_default=argparse.SUPPRESS, description="Train, fine-tune "
                    "(--weights, --freeze) or resume (--resume) a model. Works unchanged under `torchrun "
                    "--nproc-per-node N -m resnets train`; --procs N starts N such processes itself.")
    p.add_argument("--config", metavar="RECIPE", default=None,
                   help="read flags from a YAML recipe (a file, or a shipped recipe: "
                        f"{', '.join(list_recipes())}); flags given here override it")
    p.add_argument("--print-config", action="store_true", default=False,
                   help="print the effective settings as a YAML recipe and exit")
    add_arguments(p, TrainConfig)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the recipe's (``--config``) under the flags given on the command line;
    what neither says keeps its declared default."""
    given = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    recipe = read_recipe(args.config) if getattr(args, "config", None) else {}
    return {**recipe, **given}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that ``resnets train ARGS`` runs (benchmarks build runs with it too)."""
    return TrainConfig.from_dict(settings_from_args(args))


def run(args: argparse.Namespace) -> int:
    from ..train import train
    from ..train.run import preview_plan

    config = config_from_args(args)  # checked before printing: a printed recipe runs
    if args.print_config:
        plan = preview_plan(config, args.started) if config.minutes is not None else None
        if plan is not None:
            sys.stdout.write(f"# --minutes {config.minutes:g} plans {plan.describe()}\n")
            config = dataclasses.replace(config, epochs=plan.epochs)
        sys.stdout.write(recipe_yaml(config.to_dict()))
        return 0
    result = train(config, started=args.started)
    score = "mAP" if result.history and "val_map" in result.history[-1] else "top-1"
    best = f", best val {score} {result.best_top1:.2f}%" if result.best_top1 is not None else ""
    cached = " (head trained on cached features)" if result.used_feature_cache else ""
    print(f"trained {len(result.history)} epoch(s){cached}{best}; weights: {result.weights}", file=sys.stderr)
    return 0
