"""CIFAR-10 time to accuracy: test top-1 against wall-clock minutes, as JSON (stdout + file) and PNG.

The data is decoded once into memory; each epoch then trains from uint8 tensors with batch
augmentation (pad-crop-flip). ``--epochs auto`` (the default) plans the one-cycle schedule to
fit ``--minutes``: it measures the training step's images/s on this machine after decoding and
takes as many epochs as fit, with a 4 % margin. Training also stops (``--max-minutes``) when
the next epoch would overrun the budget. At the end the last epoch's weights are scored again
with flip test-time augmentation (reported separately; the curve is without it). ``--procs 2``
trains in two single-threaded data-parallel processes (``resnets train --procs``).

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
from _common import SHARED_DATA, parallel_step_rate, save_plot, step_rate, subset  # noqa: E402

from resnets.train.resize import ResizeSchedule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_DATA / "cifar10-jpeg.zip"))
    p.add_argument("--model", default="resnet20", help="resnet20, resnet56, resnet18_cifar ...")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--epochs", default="auto", help="a number, or auto: as many as fit --minutes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--progressive-resize", type=float, default=1.0, metavar="SCALE",
                   help="start at SCALE x 32 px and grow to 32 px (default 1: off)")
    p.add_argument("--progressive-delay", type=float, default=0.4)
    p.add_argument("--progressive-finetune", type=float, default=0.25)
    p.add_argument("--val-every", type=int, default=2, help="score the test set every N epochs (and the last)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--procs", type=int, default=1, help="data-parallel CPU processes (threads split among them)")
    p.add_argument("--train-subset", type=int, help="train on this many images (quick checks)")
    p.add_argument("--out", default="runs/bench-cifar10")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from resnets.train import InMemoryData, TrainConfig, train
    from resnets.train.inputs import load_in_memory

    cuda = args.device.startswith("cuda")
    out = Path(args.out)
    start, start_wall = time.perf_counter(), time.time()
    data = load_in_memory(args.data, 32, None, 0, args.threads)
    decode_s = time.perf_counter() - start
    images, labels = subset(data.train_images, data.train_labels, args.train_subset)
    data = InMemoryData(images, labels, data.val_images, data.val_labels, data.class_names)
    schedule = ResizeSchedule(32, args.progressive_resize, args.progressive_delay, args.progressive_finetune)
    rates = step_rates(schedule, args)
    epochs = plan_epochs(args.epochs, args.minutes * 60 - (time.perf_counter() - start), schedule, rates,
                         len(labels), len(data.val_labels) / args.val_every)
    print(f"{args.model} training step, batch {args.batch_size}, images/s by input size: "
          f"{ {s: round(r) for s, r in rates.items()} }; {epochs} epochs planned, sizes {schedule.sizes(epochs)}",
          file=sys.stderr)
    config = TrainConfig(model=args.model, out=str(out), epochs=epochs, batch_size=args.batch_size,
                         lr=args.lr, sched="onecycle", label_smoothing=args.label_smoothing, channels_last=True,
                         amp=cuda, device=args.device, weight_decay=5e-4, val_every=args.val_every,
                         progressive_resize=args.progressive_resize, progressive_delay=args.progressive_delay,
                         progressive_finetune=args.progressive_finetune, procs=args.procs,
                         max_minutes=max(0.01, args.minutes - (time.perf_counter() - start) / 60))
    history = train(config, data=data).history
    points = [{"epoch": row["epoch"], "minutes": (row["finished_at"] - start_wall) / 60, "test_top1": row["val_top1"],
               "img_size": row["img_size"], "images_per_s": row["images_per_s"]}
              for row in history if "val_top1" in row]
    last = history[-1]
    unscored = "val_top1" not in last  # the time limit stopped the run after an unscored epoch
    scores = last_epoch_top1(out, data, args.device, (None, "flip") if unscored else ("flip",))
    if unscored:
        points.append({"epoch": last["epoch"], "minutes": (time.perf_counter() - start) / 60,
                       "test_top1": scores[None], "img_size": last["img_size"],
                       "images_per_s": last["images_per_s"]})
    report = {"benchmark": "cifar10_time_to_accuracy", "model": args.model, "device": args.device,
              "threads": args.threads, "procs": args.procs, "train_images": len(labels), "decode_s": decode_s,
              "step_images_per_s": {str(s): r for s, r in rates.items()},
              "recipe": {"epochs": epochs, "epochs_run": last["epoch"], "batch_size": args.batch_size, "lr": args.lr,
                         "label_smoothing": args.label_smoothing, "sched": "onecycle", "weight_decay": 5e-4,
                         "optimizer": "sgd nesterov", "channels_last": True,
                         "progressive_resize": {"initial_scale": args.progressive_resize,
                                                "delay": args.progressive_delay,
                                                "finetune": args.progressive_finetune,
                                                "sizes": schedule.sizes(epochs)}},
              "budget_minutes": args.minutes, "total_minutes": (time.perf_counter() - start) / 60,
              "final_test_top1": points[-1]["test_top1"],
              "final_test_top1_flip_tta": scores["flip"], "points": points}
    (out / "time_to_accuracy.json").write_text(json.dumps(report, indent=2))
    save_plot(out / "time_to_accuracy.png", [q["minutes"] for q in points], [q["test_top1"] for q in points],
              "wall-clock minutes", "test top-1 (%)", f"CIFAR-10 {args.model} ({args.device})")
    print(json.dumps(report))


def step_rates(schedule: ResizeSchedule, args: argparse.Namespace) -> dict[int, float]:
    """Training images/s at each input size the schedule can use (the full size always)."""
    sizes = [*range(schedule.size_at(0, 1), schedule.full_size, schedule.increment), schedule.full_size]
    def rate(size: int) -> float:
        steps = 25 if size == schedule.full_size else 10
        if args.procs > 1:
            return parallel_step_rate(args.model, args.batch_size, size, args.procs, steps)
        return step_rate(args.model, args.batch_size, size, args.device, channels_last=True,
                         amp=args.device.startswith("cuda"), steps=steps)

    return {size: rate(size) for size in sizes}


def plan_epochs(requested: str, seconds_left: float, schedule: ResizeSchedule, rates: dict[int, float],
                train_images: int, test_images_per_epoch: float) -> int:
    """``requested`` as a number, or (``auto``) the most epochs whose planned time fits ``seconds_left``.

    An epoch costs its training images at the step rate of its input size plus 10 % for the loop
    around the steps (augmentation, resizing, meters: measured 8 % on the 2-core CPU), its share
    of the test passes (a test image costs about a fifth of a full-size training image) and 3 s
    for the checkpoint and plot; 4 % of the time is kept back for noise.
    """
    if requested != "auto":
        return int(requested)
    full_rate = rates[schedule.full_size]

    def seconds(epochs: int) -> float:
        return sum(1.10 * train_images / rates[size] + test_images_per_epoch / (5 * full_rate) + 3.0
                   for size in schedule.sizes(epochs))

    epochs = 1
    while seconds(epochs + 1) <= 0.96 * seconds_left:
        epochs += 1
    return epochs


def last_epoch_top1(run_dir: Path, data, device: str, ttas: tuple[str | None, ...]) -> dict[str | None, float]:
    """Test top-1 of the run's last-epoch weights for each test-time augmentation in ``ttas``:
    ``None`` (plain) or ``"flip"`` (each image's and its mirror's logits averaged)."""
    from resnets import create_model
    from resnets.data import BatchAugment, TensorLoader
    from resnets.evaluate import collect_logits, topk_accuracy
    from resnets.train.checkpoint import load_state

    config = json.loads((run_dir / "config.json").read_text())
    model = create_model(config["model"], num_classes=data.num_classes)
    model.load_state_dict(load_state(run_dir)["model"])
    augment = BatchAugment("none", model.preprocessing, train=False)
    loader = TensorLoader(data.val_images, data.val_labels, 500, shuffle=False, drop_last=False,
                          augment=augment, device=device)
    model = model.to(device).eval()
    return {tta: topk_accuracy(*collect_logits(model, loader, tta=tta), (1,))[0] for tta in ttas}


if __name__ == "__main__":
    main()
