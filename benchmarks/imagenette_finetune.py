"""Training on Imagenette, as JSON: head-only (cached features) vs full fine-tuning, and the
current recipe vs the same with TrivialAugment + random erasing, same epochs, same run.

With ``--weights`` (a file ``resnets train`` wrote for ANOTHER data set, e.g. the CIFAR-10 run of
``cifar10_time_to_accuracy.py``) it fine-tunes; with ``--model`` alone it trains from scratch
(``--skip-head-only`` then, as there is no trained backbone to freeze). 10 % of
``imagenette-224-train.zip`` is held out per class; held-out top-1 and wall time of every run.

    python benchmarks/imagenette_finetune.py --weights runs/bench-cifar10/weights.safetensors --img-size 128
    python benchmarks/imagenette_finetune.py --model resnet20 --img-size 64 --full-epochs 5 --skip-head-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, subset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="weights file trained on another data set (fine-tuning)")
    p.add_argument("--model", help="registered model to train from scratch when there are no --weights")
    p.add_argument("--skip-head-only", action="store_true", help="no head-only run")
    p.add_argument("--policy", default="trivialaugment", help="augmentation policy of the compared run")
    p.add_argument("--random-erasing", type=float, default=0.25)
    p.add_argument("--data", default=str(SHARED_DATA / "imagenette-224-train.zip"))
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--head-epochs", type=int, default=10)
    p.add_argument("--full-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-subset", type=int, help="fine-tune on this many training images (quick checks)")
    p.add_argument("--out", default="runs/bench-imagenette")
    args = p.parse_args()
    if not args.weights and not args.model:
        p.error("pass --weights FILE (fine-tune) or --model NAME (from scratch)")
    torch.set_num_threads(args.threads)
    from resnets.train import InMemoryData, TrainConfig, train
    from resnets.train.inputs import load_in_memory

    out = Path(args.out)
    start = time.perf_counter()
    data = load_in_memory(args.data, args.img_size, args.val_split, 0, args.threads)
    decode_s = time.perf_counter() - start
    images, labels = subset(data.train_images, data.train_labels, args.train_subset)
    data = InMemoryData(images, labels, data.val_images, data.val_labels, data.class_names)
    common = dict(model=None if args.weights else args.model, weights=args.weights, img_size=args.img_size,
                  batch_size=args.batch_size, device=args.device, channels_last=True,
                  amp=args.device.startswith("cuda"), progress=False)
    full = dict(epochs=args.full_epochs, lr=0.02 if args.weights else 0.1, warmup_epochs=0.3,
                label_smoothing=0.1, **(dict(head_lr=0.1) if args.weights else {}))
    plans = [("head_only_cached", dict(freeze="backbone", epochs=args.head_epochs, opt="adamw", lr=3e-3,
                                       weight_decay=1e-4))] if not args.skip_head_only else []
    plans += [("full", full),
              (f"full_{args.policy}_erasing", dict(full, augment_policy=args.policy,
                                                   random_erasing=args.random_erasing))]
    runs = {}
    for name, extra in plans:
        began = time.perf_counter()
        result = train(TrainConfig(out=str(out / name), **common, **extra), data=data, overwrite=True)
        runs[name] = {"seconds": time.perf_counter() - began, "heldout_top1": result.best_top1,
                      "epochs": len(result.history), "feature_cache": result.used_feature_cache,
                      "images_per_s_last_epoch": result.last["images_per_s"]}
        print(json.dumps({name: runs[name]}), file=sys.stderr)
    report = {"benchmark": "imagenette_finetune", "source_weights": args.weights, "model": args.model,
              "img_size": args.img_size,
              "train_images": len(labels), "heldout_images": len(data.val_labels), "decode_s": decode_s,
              "device": args.device, "threads": args.threads, "runs": runs}
    (out / "finetune.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
