"""``resnets embed`` and ``resnets search``: image embeddings of a data set, and nearest images to queries."""

from __future__ import annotations

import argparse
import sys
from . import add_command, add_model_argument, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "embed", run_embed, description="Pooled pre-logit features of every image, "
                    "L2-normalised, with file paths and labels (none for images without classes), written to FILE: "
                    "Parquet (.parquet) or NumPy (.npy + a .json sidecar). The file records the model, so `resnets "
                    "search` embeds queries the same way. Needs pip install 'resnets[search]'.")
    add_model_argument(p, "model")
    p.add_argument("data", help="data set (class folders, zip, CIFAR pickles, LMDB...; every split), or images "
                   "without classes: a folder (recursive), a zip, or a list file (.txt/.lst: one image path per line)")
    p.add_argument("--out", required=True, metavar="FILE", help="index file: .parquet or .npy")
    p.add_argument("--map", metavar="PNG", help="also draw a 2-D t-SNE map of the embeddings, coloured by class "
                   "(images without classes: by folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    s = add_command(subparsers, "search", run_search, description="Embeds each query image with the model the index "
                    "records and lists its nearest indexed images by cosine similarity; --out writes a PNG strip per "
                    "query.")
    s.add_argument("index", help="index file made by `resnets embed`")
    s.add_argument("queries", nargs="+", metavar="INPUT",
                   help="image file, folder (recursive), zip, or list file of images")
    s.add_argument("--topk", type=int, default=5)
    s.add_argument("--out", metavar="DIR", help="folder for one PNG strip per query")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run_embed(args: argparse.Namespace) -> int:
    from ..embed import embed_dataset

    index = embed_dataset(args.model, args.data, args.out, batch_size=args.batch_size, device=args.device,
                          workers=args.workers, map_png=args.map)
    summary = {"out": args.out, "count": len(index), "dim": int(index.vectors.shape[1]),
               "classes": len(index.meta["classes"]), "model": index.meta["model"], "map": args.map,
               "seconds": index.meta["seconds"]}
    if args.json:
        return print_json(summary)
    classes = f"{summary['classes']} classes" if index.meta["labelled"] else "no classes"
    print(f"{summary['count']} images, {summary['dim']}-d embeddings ({classes}) -> {args.out} "
          f"in {summary['seconds']:.1f} s")
    if args.map:
        print(f"t-SNE map: {args.map}", file=sys.stderr)
    return 0


def run_search(args: argparse.Namespace) -> int:
    from ..embed import search
    from ..terminal import printable

    results = search(args.index, args.queries, topk=args.topk, device=args.device, out_dir=args.out)
    if args.json:
        return print_json(results)
    for result in results:
        strip = f"  (strip: {printable(result['png'])})" if "png" in result else ""
        print(f"{printable(result['query'])}:{strip}")
        for hit in result["hits"]:
            label = f"{printable(hit['label']):<16}  " if hit["label"] else ""
            print(f"  {hit['rank']:>2}. {hit['score']:.3f}  {label}{printable(hit['path'])}")
    return 0
