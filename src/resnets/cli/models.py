"""`resnets models`: every registered model with its size and cost."""

from __future__ import annotations

import argparse

from ..models import list_models
from ..summarize import model_cards
from . import add_command, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "models", run, description="List every registered model with its parameter count "
                         "and multiply-adds at its natural input size.")
    parser.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet5*'")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    cards = model_cards(list_models(args.pattern))
    if args.json:
        return print_json(cards, indent=2)
    print(f"{'model':<20} {'input':>5} {'classes':>7} {'params (M)':>10} {'GMACs':>7}  description")
    for card in cards:
        print(f"{card['name']:<20} {card['input_size']:>5} {card['num_classes']:>7} "
              f"{card['params'] / 1e6:>10.2f} {card['macs'] / 1e9:>7.2f}  {card['description']}")
    return 0
