"""ResNet-50 fp32 CPU inference: our fast path against torchvision's eager NCHW model, same run.

Prints one JSON document: images/s at batch 32 and batch-1 latency for torchvision eager
(``torch.inference_mode``, NCHW) and each of our backends (BN folded, channels-last), the ratios,
and our best effective GFLOP/s as a fraction of this machine's fp32 matmul peak. Contenders run
interleaved (one call each per round) so that background load hits them alike; the peak is a
matmul probe timed in the batch rounds too, so that it sees the same load.

    PYTHONPATH=src python benchmarks/inference_cpu.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings

import torch
import torchvision

from resnets import create_model
from resnets.bench import PEAK_PROBE, count_macs, matmul_probe, probe_gflops, time_interleaved
from resnets.inference import onnxruntime_available, openvino_available, optimize_for_inference

TARGETS = {"speedup_batch32": 1.7, "peak_fraction": 0.8, "latency_ratio_batch1": 0.6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile backend")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: output is always JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = create_model("resnet50").eval()
    reference = torchvision.models.resnet50().eval()
    reference.load_state_dict(ours.state_dict())
    backends = ["eager"] + (["onnxruntime"] if onnxruntime_available() else []) + \
        (["openvino"] if openvino_available() else []) + (["compile"] if args.compile else [])
    x = torch.randn(args.batch_size, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = {b: optimize_for_inference(ours, b, example_input=x) for b in backends}

    def reference_run(batch):
        with torch.inference_mode():
            return reference(batch)

    with torch.inference_mode():
        expected = reference(x[:4])
    max_error = {b: (m(x[:4]) - expected).abs().max().item() for b, m in fast.items()}
    results = {}
    probe, probe_flops = matmul_probe()
    for label, batch in (("batch", x), ("batch1", x[:1])):
        print(f"timing {label} ({len(batch)} images)", file=sys.stderr)
        runners = {"torchvision_eager": lambda b=batch: reference_run(b)}
        runners |= {f"ours_{name}": (lambda m=module, b=batch: m(b)) for name, module in fast.items()}
        times = time_interleaved(runners | ({PEAK_PROBE: probe} if label == "batch" else {}), args.reps,
                                 args.warmup)
        if label == "batch":
            peak = probe_gflops(times.pop(PEAK_PROBE), probe_flops)
        results[label] = {name: statistics.median(t) for name, t in times.items()}
    macs = count_macs(ours, (3, 224, 224))
    throughput = {k: args.batch_size / v for k, v in results["batch"].items()}
    latency_ms = {k: 1e3 * v for k, v in results["batch1"].items()}
    best = max((k for k in throughput if k.startswith("ours")), key=throughput.get)
    best_latency = min((k for k in latency_ms if k.startswith("ours")), key=latency_ms.get)
    speedup = throughput[best] / throughput["torchvision_eager"]
    fraction = 2 * macs * throughput[best] / 1e9 / peak
    latency_ratio = latency_ms[best_latency] / latency_ms["torchvision_eager"]
    print(json.dumps({
        "benchmark": "inference_cpu", "model": "resnet50", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "batch_size": args.batch_size, "reps": args.reps,
        "images_per_s": throughput, "latency_batch1_ms": latency_ms,
        "speedup_vs_torchvision": {k: v / throughput["torchvision_eager"] for k, v in throughput.items()},
        "latency_ratio_vs_torchvision": {k: v / latency_ms["torchvision_eager"] for k, v in latency_ms.items()},
        "max_abs_error_vs_torchvision": max_error, "gmacs": macs / 1e9, "matmul_peak_gflops": peak,
        "best": {"throughput_backend": best, "speedup_batch32": speedup,
                 "effective_gflops": 2 * macs * throughput[best] / 1e9, "peak_fraction": fraction,
                 "latency_backend": best_latency, "latency_ratio_batch1": latency_ratio},
        "targets": TARGETS,
        "met": {"speedup_batch32": speedup >= TARGETS["speedup_batch32"],
                "peak_fraction": fraction >= TARGETS["peak_fraction"],
                "latency_ratio_batch1": latency_ratio <= TARGETS["latency_ratio_batch1"]},
    }, indent=2))


if __name__ == "__main__":
    main()
