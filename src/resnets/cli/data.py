"""``resnets data``: inspect a data set, or pack one into an LMDB database or WebDataset shards."""

from __future__ import annotations

import argparse

from ..terminal import printable
from . import add_command, print_json

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "data", None, description="Inspect a data set, or pack it into an LMDB database "
                         "or WebDataset shards.")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(parser))
    commands.required = True

    info = commands.add_parser("info", help="format, classes and image counts of a data set")
    info.add_argument("path", help="image folder, .zip, CIFAR pickles (folder or .tar.gz), .lmdb, WebDataset "
                      ".tar shards (one or a folder), Parquet or a Hugging Face save_to_disk folder")
    info.add_argument("--check", action="store_true", help="decode every image and list unreadable ones")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.set_defaults(handler=_info)

    pack = commands.add_parser("pack", help="write a data set into one LMDB database file, or WebDataset shards")
    pack.add_argument("src", help="any data set `data info` reads")
    pack.add_argument("dst", help="database file to write (e.g. train.lmdb), or a folder for --format wds")
    pack.add_argument("--format", choices=("lmdb", "wds"), default="lmdb",
                      help="lmdb: one database file (default); wds: WebDataset .tar shards and manifest.json")
    pack.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard (wds; default 1000)")
    pack.add_argument("--size", type=int, default=None,
                      help="resize images so their shorter side is at most SIZE (re-encoded JPEG)")
    pack.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    pack.add_argument("--json", action="store_true", help="print one JSON document")
    pack.set_defaults(handler=_pack)


def _info(args: argparse.Namespace) -> int:
    from ..data import inspect_source  # imported when run: it pulls in torchvision

    report = inspect_source(args.path, check=args.check)
    if args.json:
        return print_json(report, indent=2)
    print(f"{printable(report['path'])}: {report['format']}, {len(report['classes'])} classes")
    for split, counts in report["splits"].items():
        print(f"  {split}: {counts['images']} images")
    if args.check:
        print(f"  unreadable: {len(report['unreadable'])}")
        for name in report["unreadable"]:
            print(f"    {printable(name)}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from ..data import pack_lmdb
    from ..data.pack import pack_wds

    if args.format == "wds":
        summary = pack_wds(args.src, args.dst, shard_size=args.shard_size, size=args.size, workers=args.workers)
    else:
        summary = pack_lmdb(args.src, args.dst, size=args.size, workers=args.workers)
    if args.json:
        return print_json(summary, indent=2)
    counts = ", ".join(f"{split} {count}" for split, count in summary["splits"].items())
    print(f"wrote {printable(summary['path'])}: {counts} images, {len(summary['classes'])} classes, "
          f"{len(summary['skipped'])} skipped")
    return 0
