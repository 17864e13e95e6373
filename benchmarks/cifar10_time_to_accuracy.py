"""CIFAR-10 time to accuracy: test top-1 against wall-clock minutes for any model and recipe.

A run is a ``resnets train`` recipe (``--config``, a shipped name or a YAML file) with any flag
overridden after ``--`` (``-- --model resnet9_cifar --epochs 12``), parsed by the train command's
own parser, so the benchmark trains exactly what ``resnets train --config RECIPE`` would. The clock
starts with the command: decoding the JPEGs once into memory, training, every evaluation of the
10,000 test images and the final test-time-augmented score all count.

``--epochs auto`` (the default) plans the run with ``resnets train --minutes`` (the one planner:
steps, validation passes and checkpoints timed here, counted from the command's start), after
reserving the time of the final score, timed on 500 test images: at the end the published
weights are scored again with test-time augmentation (``--tta``).

``--baseline RECIPE`` runs a second recipe after the first in the same command, with its own
budget, and draws both curves on one plot (issue 21: the airbench port, the default ``--config``,
against the earlier fast ResNet-9).

Writes ``OUT/time_to_accuracy.json`` (also printed) and ``OUT/time_to_accuracy.png``:

    python benchmarks/cifar10_time_to_accuracy.py --minutes 60 --baseline cifar10-resnet9-fast
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
from _common import SHARED_DATA, parse_with_train_overrides, subset  # noqa: E402

THRESHOLDS = (90.0, 92.0, 93.0, 94.0)
# The budget's planning: the loop around the steps (augmentation, meters: ~8 % on the 2-core CPU),
# a test pass per evaluated epoch at ~3x the training step's rate, 3 s per checkpoint; 4 % kept back.


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
    p.add_argument("--config", default="cifar10-airbench", help="the recipe (a shipped name or a YAML file)")
    p.add_argument("--baseline", metavar="RECIPE", help="run this recipe too, after the first, for the side-by-side")
    p.add_argument("--data", default=str(SHARED_DATA / "cifar10-jpeg.zip"))
    p.add_argument("--minutes", type=float, default=60.0, help="the budget of each recipe (default 60)")
    p.add_argument("--epochs", default="auto", help="a number, or auto: as many as fit --minutes")
    p.add_argument("--tta", default="multicrop", help="test-time augmentation of the final score: "
                   "flip, multicrop or none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-subset", type=int, help="train on this many images (quick checks)")
    p.add_argument("--out", default="runs/bench-cifar10")
    return parse_with_train_overrides(p, sys.argv[1:])


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
    reserve = final_score_seconds(config.model, data, None if args.tta == "none" else args.tta)
    minutes_left = args.minutes - (time.perf_counter() - start + reserve) / 60
    if args.epochs == "auto":  # the planner counts from the recipe's start itself
        config = dataclasses.replace(config, minutes=max(0.01, args.minutes - reserve / 60), max_minutes=None)
    else:
        config = dataclasses.replace(config, epochs=int(args.epochs), max_minutes=max(0.01, minutes_left))
    print(f"{recipe}: {config.model}; {reserve:.0f} s kept for the final score", file=sys.stderr)
    wall_start = time.time() - (time.perf_counter() - start)
    history = train(config, data=data, overwrite=True, started=wall_start).history
    points = [{"epoch": row["epoch"], "minutes": (row["finished_at"] - wall_start) / 60, "test_top1": row["val_top1"]}
              for row in history if "val_top1" in row]
    final = final_scores(out, data, None if args.tta == "none" else args.tta)
    final["minutes"] = (time.perf_counter() - start) / 60
    curve = points + ([{"epoch": history[-1]["epoch"], "minutes": final["minutes"], "test_top1": final["tta_top1"],
                        "tta": args.tta}] if final.get("tta_top1") is not None else [])
    return {"recipe": recipe, "overrides": flags, "model": config.model,
            "parameters": final.pop("parameters"), "train_images": len(data.train_labels),
            "decode_s": decode_s, "epochs_planned": json.loads((out / "config.json").read_text())["epochs"],
            "planned_minutes": history[-1].get("planned_minutes"), "epochs_run": history[-1]["epoch"], "settings": settings(config),
            "total_minutes": final["minutes"], "final": final, "points": curve,
            "minutes_to": {f"{t:g}": minutes_to(curve, t) for t in THRESHOLDS}}


def final_score_seconds(model_name: str, data, tta: str | None) -> float:
    """The final score's time, from 500 test images through a fresh model and the TTA views."""
    from resnets import create_model
    from resnets.data import BatchAugment
    from resnets.metrics import tta_logits

    model = create_model(model_name).eval()
    images = BatchAugment("none", model.preprocessing, train=False)(data.val_images[:500])
    began = time.perf_counter()
    with torch.no_grad():
        tta_logits(model, images, tta)
    return (time.perf_counter() - began) * len(data.val_labels) / len(images)


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


def plot(path: Path, reports: list[dict], data_name: str = "CIFAR-10 test", thresholds=THRESHOLDS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for report in reports:
        xs = [p["minutes"] for p in report["points"]]
        ys = [p["test_top1"] for p in report["points"]]
        ax.plot(xs, ys, marker="o", label=f"{report['model']} ({report['recipe']}): {ys[-1]:.2f} %")
    for threshold in thresholds:
        ax.axhline(threshold, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("wall-clock minutes from the start (decoding and tests included)")
    ax.set_ylabel(f"{data_name} top-1 (%)")
    ax.set_ylim(bottom=max(0, min(min(p["test_top1"] for p in r["points"]) for r in reports) - 5))
    ax.set_title(f"{data_name.split()[0]} time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
