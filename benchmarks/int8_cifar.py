"""int8 against the fp32 fast path on a trained CIFAR-10 ResNet: speed and top-1 cost, same run.

With ``--weights PATH`` (a resnets weights file, e.g. from ``resnets train``) that model is used;
otherwise a ResNet-20 is trained here for a short while on ``../shared/data/cifar10-jpeg.zip``
($RESNETS_SHARED_DATA names another folder)
(a subset, a few epochs: enough for well-formed activations, not for a state-of-the-art score).
Calibration uses training images; accuracy is measured on test images. Prints one JSON document.

    PYTHONPATH=src python benchmarks/int8_cifar.py --train-images 10000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn
from torchvision.io import decode_jpeg

from resnets import create_model
from resnets.timing import time_interleaved
from resnets.inference import INT8_BACKENDS, onnxruntime_available, openvino_available, optimize_for_inference
from resnets.models.registry import CIFAR_MEAN, CIFAR_STD

SHARED_DATA = os.environ.get("RESNETS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(SHARED_DATA) / "cifar10-jpeg.zip"
TARGETS = {"speedup": 2.0, "top1_points_lost": 1.0}


def load_split(archive: zipfile.ZipFile, split: str, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    names = [n for n in archive.namelist() if n.startswith(f"{split}/") and n.endswith(".jpg")]
    classes = sorted({n.split("/")[1] for n in names})
    random.Random(seed).shuffle(names)
    names = names[:limit]
    images = torch.stack([decode_jpeg(torch.frombuffer(bytearray(archive.read(n)), dtype=torch.uint8))
                          for n in names])
    labels = torch.tensor([classes.index(n.split("/")[1]) for n in names])
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std, labels


def train_quickly(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int = 128) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20").to(memory_format=torch.channels_last)
    steps = epochs * (len(images) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.2, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for i in range(len(images) // batch_size):
            index = order[i * batch_size:(i + 1) * batch_size]
            batch = images[index]
            flip = torch.rand(len(batch)) < 0.5
            batch[flip] = batch[flip].flip(3)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(batch.contiguous(memory_format=torch.channels_last)),
                                        labels[index]).backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs} done in {time.time() - start:.0f}s", file=sys.stderr)
    return model.eval()


def top1(module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        predictions = torch.cat([module(chunk).argmax(1) for chunk in images.split(256)])
    return 100 * (predictions == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a trained CIFAR-10 model in the resnets weights format")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: output is always JSON")
    args = parser.parse_args()
    if not DATA.exists():
        print(json.dumps({"benchmark": "int8_cifar", "skipped": f"{DATA} not found"}))
        return
    with zipfile.ZipFile(DATA) as archive:
        train_images, train_labels = load_split(archive, "train", args.train_images, seed=0)
        test_images, test_labels = load_split(archive, "test", args.test_images, seed=1)
    if args.weights:
        from resnets.weights.format import model_from_weights

        model, _ = model_from_weights(args.weights)
        model.eval()
        source = str(args.weights)
    else:
        model = train_quickly(train_images, train_labels, args.epochs)
        source = f"resnet20 trained here: {args.train_images} images x {args.epochs} epochs"
    calibration = train_images[-args.calibration_images:]
    fp32_backends = ["eager"] + (["onnxruntime"] if onnxruntime_available() else []) + \
        (["openvino"] if openvino_available() else [])
    int8_backends = (["int8"] if onnxruntime_available() else []) + \
        (["openvino-int8"] if openvino_available(with_nncf=True) else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contenders = {backend: optimize_for_inference(model, backend, test_images[:1],
                                                      calibration if backend in INT8_BACKENDS else None)
                      for backend in fp32_backends + int8_backends}
    accuracy = {name: top1(module, test_images, test_labels) for name, module in contenders.items()}
    batch = test_images[:args.batch_size]
    timings = {}
    for label, data in (("batch", batch), ("batch1", batch[:1])):
        times = time_interleaved({n: (lambda m=m, d=data: m(d)) for n, m in contenders.items()}, args.reps, 2)
        timings[label] = {n: statistics.median(t) for n, t in times.items()}
    throughput = {n: args.batch_size / t for n, t in timings["batch"].items()}
    fp32_best = max(fp32_backends, key=throughput.get)
    int8_best = max(int8_backends, key=throughput.get)
    speedup = throughput[int8_best] / throughput[fp32_best]
    lost = accuracy[fp32_best] - accuracy[int8_best]
    print(json.dumps({
        "benchmark": "int8_cifar", "model": source, "threads": torch.get_num_threads(),
        "test_images": len(test_images), "calibration_images": len(calibration), "batch_size": args.batch_size,
        "top1": accuracy, "images_per_s": throughput,
        "latency_batch1_ms": {n: 1e3 * t for n, t in timings["batch1"].items()},
        "int8_vs_fp32_fast_path": {"int8_backend": int8_best, "fp32_backend": fp32_best, "speedup": speedup,
                                   "speedup_vs_eager": throughput[int8_best] / throughput["eager"],
                                   "speedup_by_int8_backend": {b: throughput[b] / throughput[fp32_best]
                                                               for b in int8_backends},
                                   "top1_points_lost": lost},
        "targets": TARGETS,
        "met": {"speedup": speedup >= TARGETS["speedup"], "top1_points_lost": lost <= TARGETS["top1_points_lost"]},
    }, indent=2))


if __name__ == "__main__":
    main()
