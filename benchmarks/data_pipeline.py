"""Data pipeline speed on CIFAR-10: decode once to memory, then batches per second.

Prints one JSON document: decode_to_memory time for the 50,000 training images read in place
from ``cifar10-jpeg.zip``, and images/s of TensorLoader + BatchAugment("cifar") against the
usual peer, a torch DataLoader applying torchvision's v2 transforms image by image (same
preset, same batch size, 2 worker processes), measured in the same run.

    PYTHONPATH=src python benchmarks/data_pipeline.py [--zip PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from resnets.data import (BatchAugment, TensorLoader, decode_to_memory, load_splits, make_dataloader,
                          preset_for_model)

SHARED_DATA = os.environ.get("RESNETS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_ZIP = Path(SHARED_DATA) / "cifar10-jpeg.zip"


def images_per_second(batches, limit: int) -> float:
    seen, start = 0, time.perf_counter()
    for x, _ in batches:
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=DEFAULT_ZIP)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--peer-images", type=int, default=10_000,
                        help="images timed for the DataLoader peer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, _ = load_splits(args.zip)
    mean, std, size, preset = preset_for_model("resnet20")

    start = time.perf_counter()
    images, labels = decode_to_memory(train, workers=args.threads, progress=False)
    decode_s = time.perf_counter() - start

    augment = BatchAugment(preset, size, mean, std, train=True)
    loader = TensorLoader(images, labels, batch_size=args.batch_size, augment=augment)
    images_per_second(loader, 2 * args.batch_size)  # warm-up
    loader.set_epoch(1)
    ours = images_per_second(loader, len(images))

    peer_loader = make_dataloader(train, preset, augment.preprocessing, train=True, batch_size=args.batch_size,
                                  workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = images_per_second(peer_loader, args.peer_images)

    print(json.dumps({
        "images": len(images),
        "decode_to_memory_s": round(decode_s, 2),
        "decode_images_per_s": round(len(images) / decode_s),
        "tensorloader_cifar_images_per_s": round(ours),
        "torchvision_dataloader_images_per_s": round(peer),
        "speedup_vs_torchvision_dataloader": round(ours / peer, 1),
        "torch_threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
