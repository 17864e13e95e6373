"""CIFAR-10 time to accuracy: test top-1 against wall-clock minutes, as JSON (stdout + file) and PNG.

The data is decoded once into memory; each epoch then trains from uint8 tensors with batch
augmentation (pad-crop-flip). Training stops at the planned epoch count or when the next epoch
would overrun ``--minutes`` (the schedule is planned for ``--epochs``, so stopping early leaves
it unfinished: pick ``--epochs`` to fit the budget from the measured images/s).

    python benchmarks/cifar10_time_to_accuracy.py --minutes 60 --epochs 30         # CPU
    python benchmarks/cifar10_time_to_accuracy.py --model resnet56 --device cuda    # GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, save_plot, step_rate, subset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_DATA / "cifar10-jpeg.zip"))
    p.add_argument("--model", default="resnet20", help="resnet20, resnet56, resnet18_cifar ...")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-subset", type=int, help="train on this many images (quick checks)")
    p.add_argument("--out", default="runs/bench-cifar10")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from resnets.train import InMemoryData, TrainConfig, train
    from resnets.train.inputs import load_in_memory

    cuda = args.device.startswith("cuda")
    out = Path(args.out)
    rate = step_rate(args.model, 128, 32, args.device, channels_last=True, amp=cuda)
    print(f"{args.model} training step, batch 128: {rate:.0f} images/s", file=sys.stderr)
    start = time.perf_counter()
    data = load_in_memory(args.data, 32, None, 0, args.threads)
    decode_s = time.perf_counter() - start
    images, labels = subset(data.train_images, data.train_labels, args.train_subset)
    data = InMemoryData(images, labels, data.val_images, data.val_labels, data.class_names)
    config = TrainConfig(model=args.model, out=str(out), epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, sched="onecycle", label_smoothing=args.label_smoothing, channels_last=True,
                         amp=cuda, device=args.device, weight_decay=5e-4)
    budget, points = args.minutes * 60, []
    result = train(config, data=data, stop_after=1)
    while True:
        elapsed = time.perf_counter() - start
        row = result.history[-1]
        points.append({"epoch": row["epoch"], "minutes": elapsed / 60, "test_top1": row["val_top1"],
                       "images_per_s": row["images_per_s"]})
        print(json.dumps(points[-1]), file=sys.stderr)
        epoch_s = elapsed / len(points)
        if row["epoch"] >= args.epochs or elapsed + epoch_s > budget:
            break
        result = train(TrainConfig(resume=str(out), device=args.device, progress=True), data=data, stop_after=1)
    report = {"benchmark": "cifar10_time_to_accuracy", "model": args.model, "device": args.device,
              "threads": args.threads, "train_images": len(labels), "decode_s": decode_s,
              "step_images_per_s_bs128": rate, "recipe": {k: getattr(args, k) for k in
                                                          ("epochs", "batch_size", "lr", "label_smoothing")},
              "budget_minutes": args.minutes, "final_test_top1": points[-1]["test_top1"], "points": points}
    (out / "time_to_accuracy.json").write_text(json.dumps(report, indent=2))
    save_plot(out / "time_to_accuracy.png", [q["minutes"] for q in points], [q["test_top1"] for q in points],
              "wall-clock minutes", "test top-1 (%)", f"CIFAR-10 {args.model} ({args.device})")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
