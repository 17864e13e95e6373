"""CIFAR-10 time to accuracy: test top-1 against wall-clock minutes for any model and recipe.

A run is a ``resnets train`` recipe (``--config``, a shipped name or a YAML file) with any flag
overridden after ``--`` (``-- --model resnet9_cifar --epochs 12``), parsed by the train command's
own parser, so the benchmark trains exactly what ``resnets train --config RECIPE`` would. The clock
starts with the command: decoding the JPEGs once into memory, training, every evaluation of the
10,000 test images and the final test-time-augmented score all count.

``--epochs auto`` (the default) plans the recipe's epochs to fit ``--minutes``: it measures the
training step's images/s here after decoding and takes as many epochs as fit; training also
stops (resumably) before an epoch that would overrun the budget. At the end the published
weights are scored again with the recipe's test-time augmentation (``--tta``).

``--baseline RECIPE`` runs a second recipe after the first in the same command, with its own
budget, and draws both curves on one plot (the side-by-side of issue 16: the current ResNet-20
recipe against the fast ResNet-9).

Writes ``OUT/time_to_accuracy.json`` (also printed) and ``OUT/time_to_accuracy.png``:

    python benchmarks/cifar10_time_to_accuracy.py --config cifar10-resnet9-fast --minutes 60
    python benchmarks/cifar10_time_to_accuracy.py --config cifar10-resnet20-fast --tta flip
    python benchmarks/cifar10_time_to_accuracy.py --config cifar10-resnet9-fast --baseline cifar10-resnet20-fast
    python benchmarks/cifar10_time_to_accuracy.py --config cifar10-resnet9-fast -- --model resnet9_cifar_x0_75
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, step_rate, subset  # noqa: E402

THRESHOLDS = (90.0, 92.0, 93.0, 94.0)
# The budget's planning: the loop around the steps (augmentation, meters: ~8 % on the 2-core CPU),
# a test pass per evaluated epoch at ~3x the training step's rate, 3 s per checkpoint; 4 % kept back.
LOOP_OVERHEAD, TEST_SPEEDUP, CHECKPOINT_S, MARGIN = 1.10, 3.0, 3.0, 0.96


def main() -> None:
    args, overrides = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = decode(args)
    runs = [(args.config, overrides, Path(args.out) / "main")]
    if args.baseline:
        runs.append((args.baseline, [], Path(args.out) / "baseline"))
    reports = []
    for recipe, flags, out in runs:
        # each recipe's clock includes one decoding of the data, as if it ran alone
        run_start = start if not reports else time.perf_counter() - args.decode_s
        reports.append(benchmark_recipe(recipe, flags, out, data, args, run_start, args.decode_s))
    report = {"benchmark": "cifar10_time_to_accuracy", "threads": args.threads, "budget_minutes": args.minutes,
              "machine": machine(), "runs": reports}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(report, indent=2))
    plot(out / "time_to_accuracy.png", reports)
    print(json.dumps(report))


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="%(prog)s [options] [-- resnets train flags]")
    p.add_argument("--config", default="cifar10-resnet9-fast", help="the recipe (a shipped name or a YAML file)")
    p.add_argument("--baseline", metavar="RECIPE", help="run this recipe too, after the first, for the side-by-side")
    p.add_argument("--data", default=str(SHARED_DATA / "cifar10-jpeg.zip"))
    p.add_argument("--minutes", type=float, default=60.0, help="the budget of each recipe (default 60)")
    p.add_argument("--epochs", default="auto", help="a number, or auto: as many as fit --minutes")
    p.add_argument("--tta", default="multicrop", help="test-time augmentation of the final score: "
                   "flip, multicrop or none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-subset", type=int, help="train on this many images (quick checks)")
    p.add_argument("--out", default="runs/bench-cifar10")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    return args, argv[split + 1:]


def decode(args: argparse.Namespace):
    """The training and test images, decoded once into memory (timed: it counts)."""
    from resnets.train import InMemoryData
    from resnets.train.inputs import load_in_memory

    start = time.perf_counter()
    data = load_in_memory(args.data, 32, None, 0, args.threads)
    images, labels = subset(data.train_images, data.train_labels, args.train_subset)
    args.decode_s = time.perf_counter() - start
    print(f"decoded {len(labels)} training and {len(data.val_labels)} test images in {args.decode_s:.1f} s",
          file=sys.stderr)
    return InMemoryData(images, labels, data.val_images, data.val_labels, data.class_names)


def train_config(recipe: str, flags: list[str], out: Path, data_path: str):
    """The run ``resnets train --config RECIPE FLAGS`` would make (the train command's own parser)."""
    from resnets.cli import build_parser
    from resnets.cli.train import config_from_args

    argv = ["train", "--config", recipe, *flags, "--data", data_path, "--out", str(out), "--overwrite",
            "--no-progress"]
    return config_from_args(build_parser().parse_args(argv))


def benchmark_recipe(recipe: str, flags: list[str], out: Path, data, args: argparse.Namespace, start: float,
                     decode_s: float) -> dict:
    """Train one recipe within the budget; its curve, times to the thresholds and final scores."""
    import dataclasses

    from resnets.train import train

    config = train_config(recipe, flags, out, args.data)
    rate = step_rate(config.model, config.batch_size, 32, "cpu", channels_last=config.channels_last,
                     amp=config.amp, steps=6)
    seconds_left = args.minutes * 60 - (time.perf_counter() - start)
    epochs = plan_epochs(args.epochs, seconds_left, rate, len(data.train_labels), len(data.val_labels),
                         config.val_every)
    minutes_left = args.minutes - (time.perf_counter() - start) / 60
    config = dataclasses.replace(config, epochs=epochs, max_minutes=max(0.01, minutes_left))
    print(f"{recipe}: {config.model}, {rate:.0f} training images/s at batch {config.batch_size}; "
          f"{epochs} epochs planned", file=sys.stderr)
    wall_start = time.time() - (time.perf_counter() - start)
    history = train(config, data=data, overwrite=True).history
    points = [{"epoch": row["epoch"], "minutes": (row["finished_at"] - wall_start) / 60, "test_top1": row["val_top1"]}
              for row in history if "val_top1" in row]
    final = final_scores(out, data, None if args.tta == "none" else args.tta)
    final["minutes"] = (time.perf_counter() - start) / 60
    curve = points + ([{"epoch": history[-1]["epoch"], "minutes": final["minutes"], "test_top1": final["tta_top1"],
                        "tta": args.tta}] if final.get("tta_top1") is not None else [])
    return {"recipe": recipe, "overrides": flags, "model": config.model,
            "parameters": final.pop("parameters"), "train_images": len(data.train_labels),
            "decode_s": decode_s, "step_images_per_s": rate, "epochs_planned": epochs,
            "epochs_run": history[-1]["epoch"], "settings": settings(config),
            "total_minutes": final["minutes"], "final": final, "points": curve,
            "minutes_to": {f"{t:g}": minutes_to(curve, t) for t in THRESHOLDS}}


def plan_epochs(requested: str, seconds_left: float, rate: float, train_images: int, test_images: int,
                val_every: int) -> int:
    """``requested`` as a number, or (``auto``) the most epochs whose planned time fits ``seconds_left``."""
    if requested != "auto":
        return int(requested)

    def seconds(epochs: int) -> float:
        tests = epochs // val_every + 2  # the evaluated epochs, the last one, and the final TTA pass
        return epochs * (LOOP_OVERHEAD * train_images / rate + CHECKPOINT_S) + tests * test_images / (TEST_SPEEDUP * rate)

    epochs = 1
    while seconds(epochs + 1) <= MARGIN * seconds_left:
        epochs += 1
    return epochs


def final_scores(run_dir: Path, data, tta: str | None) -> dict:
    """Test top-1 of the run's published weights (what ``resnets evaluate RUN`` scores), plain and
    with test-time augmentation; with an EMA, also of the last raw weights (no TTA)."""
    from resnets import load_model
    from resnets.data import BatchAugment, TensorLoader
    from resnets.metrics import collect_logits, topk_accuracy
    from resnets.train.checkpoint import load_state

    model = load_model(str(run_dir)).eval()
    loader = TensorLoader(data.val_images, data.val_labels, 500, shuffle=False, drop_last=False,
                          augment=BatchAugment("none", model.preprocessing, train=False))
    scores = {"parameters": sum(p.numel() for p in model.parameters()),
              "top1": topk_accuracy(*collect_logits(model, loader), (1,))[0], "tta": tta}
    if tta is not None:
        scores["tta_top1"] = topk_accuracy(*collect_logits(model, loader, tta=tta), (1,))[0]
    state = load_state(run_dir)
    if state.get("ema") is not None:  # what the EMA bought: the last raw weights, scored the same way
        model.load_state_dict(state["model"])
        scores["last_raw_weights_top1"] = topk_accuracy(*collect_logits(model.eval(), loader), (1,))[0]
    return scores


def minutes_to(points: list[dict], threshold: float) -> float | None:
    """Wall-clock minutes at which the curve first reached ``threshold`` % (None: never)."""
    return next((p["minutes"] for p in points if p["test_top1"] >= threshold), None)


def settings(config) -> dict:
    """The settings that make the recipe (everything but paths and run mechanics)."""
    skip = {"data", "out", "resume", "progress", "workers", "log_interval", "device"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def machine() -> dict:
    import os
    import platform

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}


def plot(path: Path, reports: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for report in reports:
        xs = [p["minutes"] for p in report["points"]]
        ys = [p["test_top1"] for p in report["points"]]
        ax.plot(xs, ys, marker="o", label=f"{report['model']} ({report['recipe']}): {ys[-1]:.2f} %")
    for threshold in THRESHOLDS:
        ax.axhline(threshold, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("wall-clock minutes from the start (decoding and tests included)")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_ylim(bottom=max(0, min(min(p["test_top1"] for p in r["points"]) for r in reports) - 5))
    ax.set_title("CIFAR-10 time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
