"""ResNet-50 on a CUDA GPU: bf16 training and batch-256 inference, ours against torchvision eager.

Training: channels-last + bf16 autocast + ``torch.compile`` + fused SGD, against torchvision's
eager fp32 NCHW model with plain SGD, same run. Inference at batch 256: our model (BN folded,
channels-last, bf16 autocast, compiled) against torchvision eager fp32 and eager bf16.
Everything (compilation included) fits in a few minutes on an H100. Without CUDA it says so and
exits 0. Prints one JSON document.

    PYTHONPATH=src python benchmarks/gpu.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torchvision
from torch import nn

from resnets import create_model
from resnets.inference import fold_batchnorm


def cuda_seconds(run, steps: int, warmup: int) -> float:
    """Mean wall time per call over ``steps`` calls, synchronised at the ends only."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def train_runner(model: nn.Module, images, labels, fast: bool):
    model = model.cuda().train()
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    kind = {"fused": True} if fast else {"foreach": False}  # fused kernel vs plain for-loop
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5, **kind)
    forward = torch.compile(model) if fast else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16, enabled=fast):
            loss = nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()

    return step


def inference_runner(model: nn.Module, images, dtype: torch.dtype | None, fast: bool):
    model = model.cuda().eval()
    if fast:
        model = torch.compile(fold_batchnorm(model).to(memory_format=torch.channels_last))
        images = images.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast("cuda", dtype or torch.float32, enabled=dtype is not None):
            return model(images)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: output is always JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; nothing to measure", file=sys.stderr)
        print(json.dumps({"benchmark": "gpu", "skipped": "no CUDA device"}))
        return 0
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    ours = create_model("resnet50")
    reference = torchvision.models.resnet50()
    reference.load_state_dict(ours.state_dict())
    started = time.perf_counter()
    images = torch.randn(args.train_batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (args.train_batch,), device="cuda")
    train = {}
    for label, model, fast in (("torchvision_eager_fp32", reference, False), ("ours_bf16_compiled", ours, True)):
        print(f"training: {label}", file=sys.stderr)
        step = train_runner(_copy(model), images, labels, fast)
        train[label] = args.train_batch / cuda_seconds(step, args.steps, warmup=3)
        del step
        torch.cuda.empty_cache()
    batch = torch.randn(args.infer_batch, 3, 224, 224, device="cuda")
    infer = {}
    for label, model, dtype, fast in (("torchvision_eager_fp32", reference, None, False),
                                      ("torchvision_eager_bf16", reference, torch.bfloat16, False),
                                      ("ours_bf16_compiled", ours, torch.bfloat16, True)):
        print(f"inference: {label}", file=sys.stderr)
        run = inference_runner(_copy(model), batch, dtype, fast)
        infer[label] = args.infer_batch / cuda_seconds(run, args.steps, warmup=3)
    print(json.dumps({
        "benchmark": "gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "train_batch": args.train_batch, "infer_batch": args.infer_batch, "steps": args.steps,
        "train_images_per_s": train,
        "train_speedup": train["ours_bf16_compiled"] / train["torchvision_eager_fp32"],
        "inference_images_per_s": infer,
        "inference_speedup_vs_fp32": infer["ours_bf16_compiled"] / infer["torchvision_eager_fp32"],
        "inference_speedup_vs_bf16": infer["ours_bf16_compiled"] / infer["torchvision_eager_bf16"],
        "wall_s": time.perf_counter() - started,
    }, indent=2))
    return 0


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    raise SystemExit(main())
