"""CIFAR-10 time to accuracy: test top-1 against wall-clock minutes, as JSON (stdout + file) and PNG.

The data is decoded once into memory; each epoch then trains from uint8 tensors with batch
augmentation (pad-crop-flip). ``--epochs auto`` (the default) plans the one-cycle schedule to
fit ``--minutes``: it measures the training step's images/s on this machine after decoding and
takes as many epochs as fit, with a 4 % margin. Training also stops when the next epoch would
overrun the budget. At the end the last epoch's weights are scored again with flip test-time
augmentation (reported separately; the curve is without it).

    python benchmarks/cifar10_time_to_accuracy.py --minutes 60                      # CPU
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
    p.add_argument("--epochs", default="auto", help="a number, or auto: as many as fit --minutes")
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
    start = time.perf_counter()
    data = load_in_memory(args.data, 32, None, 0, args.threads)
    decode_s = time.perf_counter() - start
    images, labels = subset(data.train_images, data.train_labels, args.train_subset)
    data = InMemoryData(images, labels, data.val_images, data.val_labels, data.class_names)
    rate = step_rate(args.model, args.batch_size, 32, args.device, channels_last=True, amp=cuda, steps=25)
    epochs = plan_epochs(args.epochs, args.minutes * 60 - (time.perf_counter() - start), rate, len(labels),
                         len(data.val_labels))
    print(f"{args.model} training step, batch {args.batch_size}: {rate:.0f} images/s; "
          f"{epochs} epochs planned", file=sys.stderr)
    config = TrainConfig(model=args.model, out=str(out), epochs=epochs, batch_size=args.batch_size,
                         lr=args.lr, sched="onecycle", label_smoothing=args.label_smoothing, channels_last=True,
                         amp=cuda, device=args.device, weight_decay=5e-4)
    budget, points = args.minutes * 60, []
    first_epoch_began = time.perf_counter() - start
    result = train(config, data=data, stop_after=1)
    while True:
        elapsed = time.perf_counter() - start
        row = result.history[-1]
        points.append({"epoch": row["epoch"], "minutes": elapsed / 60, "test_top1": row["val_top1"],
                       "images_per_s": row["images_per_s"]})
        print(json.dumps(points[-1]), file=sys.stderr)
        epoch_s = (elapsed - first_epoch_began) / len(points)  # decoding is not an epoch's cost
        if row["epoch"] >= epochs or elapsed + epoch_s > budget:
            break
        result = train(TrainConfig(resume=str(out), device=args.device, progress=True), data=data, stop_after=1)
    report = {"benchmark": "cifar10_time_to_accuracy", "model": args.model, "device": args.device,
              "threads": args.threads, "train_images": len(labels), "decode_s": decode_s,
              "step_images_per_s": rate, "recipe": {"epochs": epochs, "batch_size": args.batch_size,
                                                    "lr": args.lr, "label_smoothing": args.label_smoothing,
                                                    "sched": "onecycle", "weight_decay": 5e-4,
                                                    "optimizer": "sgd nesterov"},
              "budget_minutes": args.minutes, "total_minutes": (time.perf_counter() - start) / 60,
              "final_test_top1": points[-1]["test_top1"],
              "final_test_top1_flip_tta": flip_tta_top1(out, data, args.device), "points": points}
    (out / "time_to_accuracy.json").write_text(json.dumps(report, indent=2))
    save_plot(out / "time_to_accuracy.png", [q["minutes"] for q in points], [q["test_top1"] for q in points],
              "wall-clock minutes", "test top-1 (%)", f"CIFAR-10 {args.model} ({args.device})")
    print(json.dumps(report))


def plan_epochs(requested: str, seconds_left: float, rate: float, train_images: int, test_images: int) -> int:
    """``requested`` as a number, or (``auto``) the epochs that fit ``seconds_left``.

    One epoch costs its training images at the measured step rate plus 10 % for the loop around
    the steps (augmentation, meters: measured 8 % on the 2-core CPU), a test pass (about 5x
    faster per image than a training step) and 3 s for the checkpoint and plot; 4 % of the time
    is kept back for noise.
    """
    if requested != "auto":
        return int(requested)
    epoch_s = 1.10 * train_images / rate + test_images / (5 * rate) + 3.0
    return max(1, int(0.96 * seconds_left / epoch_s))


def flip_tta_top1(run_dir: Path, data, device: str) -> float:
    """Test top-1 of the run's last-epoch weights, averaging each image's and its mirror's logits."""
    from resnets import create_model
    from resnets.data import BatchAugment, TensorLoader, preset_for_model
    from resnets.evaluate import collect_logits, topk_accuracy
    from resnets.train.checkpoint import load_state

    config = json.loads((run_dir / "config.json").read_text())
    model = create_model(config["model"], num_classes=data.num_classes)
    model.load_state_dict(load_state(run_dir)["model"])
    mean, std, _, _ = preset_for_model(model.model_name)
    augment = BatchAugment("none", 32, list(mean), list(std), train=False)
    loader = TensorLoader(data.val_images, data.val_labels, 500, shuffle=False, drop_last=False,
                          augment=augment, device=device)
    logits, labels = collect_logits(model.to(device).eval(), loader, tta="flip")
    return topk_accuracy(logits, labels, (1,))[0]


if __name__ == "__main__":
    main()
