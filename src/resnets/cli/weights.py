"""``resnets weights``: the registered pretrained weights, and their download into the cache."""

from __future__ import annotations

import argparse
import sys

from . import add_command, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "weights", None, description="The pretrained weights resnets knows "
                         "(torchvision's), and their download into the cache ($RESNETS_CACHE, default "
                         "~/.cache/resnets), hash-checked.")
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    listing = actions.add_parser("list", help="registered weights: model, tag, accuracy, file, cached or not")
    listing.add_argument("model", nargs="?", help="only this model's weights")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=_list)

    download = actions.add_parser("download", help="download weights into the cache (checked against their hash)")
    download.add_argument("name", metavar="NAME[:TAG]", help="e.g. resnet50 or resnet50:IMAGENET1K_V1 "
                          "(default tag: imagenet)")
    download.add_argument("--no-progress", dest="progress", action="store_false")
    download.set_defaults(handler=_download)


def _list(args: argparse.Namespace) -> int:
    from ..models import get_model_spec
    from ..weights.hub import cache_dir
    from ..weights.pretrained import list_pretrained

    if args.model:
        get_model_spec(args.model)  # an unknown name: one line with close matches
    rows = [{"model": w.model_name, "tag": w.tag, "acc@1": w.accuracy.get("acc@1"), "file": w.filename,
             "url": w.url, "hash_prefix": w.hash_prefix, "cached": (cache_dir() / w.filename).is_file()}
            for w in list_pretrained(args.model)]
    if args.json:
        return print_json(rows, indent=2)
    if not rows:
        print(f"no pretrained weights registered{' for ' + args.model if args.model else ''}", file=sys.stderr)
        return 0
    print(f"{'model':<18} {'tag':<14} {'acc@1':>6}  {'cached':<6} file")
    for row in rows:
        acc = f"{row['acc@1']:.2f}" if row["acc@1"] is not None else "-"
        print(f"{row['model']:<18} {row['tag']:<14} {acc:>6}  {'yes' if row['cached'] else 'no':<6} {row['file']}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from ..weights.pretrained import DEFAULT_TAG, get_pretrained

    model, _, tag = args.name.partition(":")
    path = get_pretrained(model, tag or DEFAULT_TAG).download(progress=args.progress)
    print(path)
    return 0
