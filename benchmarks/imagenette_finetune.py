"""Fine-tuning on Imagenette: head-only (cached features) vs full fine-tuning, as JSON.

Starts from a weights file that ``resnets train`` wrote for ANOTHER data set (e.g. the CIFAR-10
run of ``cifar10_time_to_accuracy.py``), holds out 10 % of ``imagenette-224-train.zip`` per
class, and reports held-out top-1 and wall time of both ways of fine-tuning.

    python benchmarks/imagenette_finetune.py --weights runs/bench-cifar10/weights.safetensors --img-size 128
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
    p.add_argument("--weights", required=True, help="weights file trained on another data set")
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
    torch.set_num_threads(args.threads)
    from resnets.train import InMemoryData, TrainConfig, train
    from resnets.train.inputs import load_in_memory

    out = Path(args.out)
    start = time.perf_counter()
    data = load_in_memory(args.data, args.img_size, args.val_split, 0, args.threads)
    decode_s = time.perf_counter() - start
    images, labels = subset(data.train_images, data.train_labels, args.train_subset)
    data = InMemoryData(images, labels, data.val_images, data.val_labels, data.class_names)
    common = dict(model=None, weights=args.weights, img_size=args.img_size, batch_size=args.batch_size,
                  device=args.device, channels_last=True, amp=args.device.startswith("cuda"))
    runs = {}
    for name, extra in (("head_only_cached", dict(freeze="backbone", epochs=args.head_epochs, opt="adamw",
                                                  lr=3e-3, weight_decay=1e-4)),
                        ("full_finetune", dict(epochs=args.full_epochs, lr=0.02, head_lr=0.1, warmup_epochs=0.3,
                                               label_smoothing=0.1))):
        began = time.perf_counter()
        result = train(TrainConfig(out=str(out / name), **common, **extra), data=data)
        runs[name] = {"seconds": time.perf_counter() - began, "heldout_top1": result.best_top1,
                      "epochs": len(result.history), "feature_cache": result.used_feature_cache,
                      "images_per_s_last_epoch": result.last["images_per_s"]}
        print(json.dumps({name: runs[name]}), file=sys.stderr)
    report = {"benchmark": "imagenette_finetune", "source_weights": args.weights, "img_size": args.img_size,
              "train_images": len(labels), "heldout_images": len(data.val_labels), "decode_s": decode_s,
              "device": args.device, "threads": args.threads, "runs": runs}
    (out / "finetune.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
