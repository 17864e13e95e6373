"""ResNet-50 fp32 CPU inference: resnets' default path against the runtimes run directly, same run.

Contenders, timed interleaved (one call of each per round, so that background load hits them
alike), at batch 1 and batch 32, 224 px, random weights (the same in every contender):

- ``resnets_default``: ``optimize_for_inference(model)`` with the example batch it runs at, i.e.
  ``auto``: BatchNorm folded, the ONNX graph pinned to the input size, and the backend its timed
  probe chose (the choice and the probe's timings are in the output);
- ``ort_torchvision_onnx``: ONNX Runtime on torchvision's own ResNet-50 exported by
  ``torch.onnx.export`` at the fixed shape (batch and size), default session options except
  spinning threads off (spinning threads slow whatever runs next in the same rounds);
- ``openvino_torchvision_onnx``: OpenVINO on the same file, fp32 inference precision (this CPU
  has avx512_bf16, where OpenVINO would otherwise compute in bf16: not exact);
- ``torchvision_eager``: torchvision's model under ``torch.inference_mode`` (NCHW);
- ``matmul_peak``: a 4096 x 4096 fp32 matmul, for scale (GFLOP/s in the same rounds).

Ratios are images/s over the best exact peer's (the three above). Each contender's turn in a
round is an untimed call and a timed one (``resnets.timing.time_interleaved`` with ``settle``): a call right after another
runtime's pays for that runtime's threads still spinning, which cost the contender that always
came next up to 50 % at batch 1 when turns were single calls. ``--ablation`` instead times,
in the same rounds, the ONNX Runtime and OpenVINO variants that each change one thing of the
default path (dynamic shape, static batch, contiguous export, no constant folding, ORT graph
optimisation level, intra-op threads, spinning threads, OpenVINO's throughput hint).

    flock /tmp/cpu.lock .venv/bin/python benchmarks/inference_cpu.py --reps 7
    flock /tmp/cpu.lock .venv/bin/python benchmarks/inference_cpu.py --ablation --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torchvision

from resnets import create_model
from resnets.bench import PEAK_PROBE, count_macs, matmul_probe, probe_gflops
from resnets.export import ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT
from resnets.inference import (fold_batchnorm, onnxruntime_available, openvino_available, optimize_for_inference,
                               pin_input_shape)
from resnets.timing import time_interleaved
from resnets.weights.onnx import ort_session

SIDE = 224
PEERS = ("ort_torchvision_onnx", "openvino_torchvision_onnx", "torchvision_eager")


def export(model: torch.nn.Module, path: Path, example: torch.Tensor, dynamic: bool = True,
           constant_folding: bool = True) -> bytes:
    """torch.onnx.export as resnets.export.export_onnx calls it (dynamic batch, height, width),
    or at the example's fixed shape; the file's bytes."""
    axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, ONNX_OUTPUT: {0: "batch"}} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                          opset_version=ONNX_OPSET, dynamo=False, dynamic_axes=axes,
                          do_constant_folding=constant_folding)
    return path.read_bytes()


def ort_runner(session):
    return lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def openvino_runner(path: Path, config: dict | None = None, batch: int | None = None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if batch is None:
        model.reshape({model.inputs[0]: ov.PartialShape([-1, 3, SIDE, SIDE])})
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **(config or {})}) \
        .create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def peers(reference: torch.nn.Module, batch: int, workdir: Path) -> dict:
    """The runtimes run directly on torchvision's own export at this batch's fixed shape."""
    path = workdir / f"torchvision_b{batch}.onnx"
    export(reference, path, torch.randn(batch, 3, SIDE, SIDE), dynamic=False)
    runners = {}
    if onnxruntime_available():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        runners["ort_torchvision_onnx"] = ort_runner(ort.InferenceSession(str(path), options,
                                                                          providers=["CPUExecutionProvider"]))
    if openvino_available():
        runners["openvino_torchvision_onnx"] = openvino_runner(path, batch=batch)
        runners["openvino_torchvision_onnx_default_precision"] = _openvino_default(str(path))

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return reference(x)

    runners["torchvision_eager"] = eager
    return runners


def _openvino_default(path: str):
    """OpenVINO with its own defaults (bf16 on this CPU): for information, not exact."""
    import openvino as ov

    request = ov.Core().compile_model(path, "CPU").create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def ablation(ours: torch.nn.Module, batch: int, workdir: Path) -> dict:
    """Each variant changes one thing of the default onnxruntime path (pinned height and width,
    dynamic batch, channels-last export, constant folding, level all, PyTorch's thread count,
    no spinning); the OpenVINO ones likewise of the default openvino path."""
    folded = fold_batchnorm(ours).to(memory_format=torch.channels_last)
    example = torch.randn(1, 3, SIDE, SIDE)
    graph = export(folded, workdir / "cl.onnx", example)
    pinned = pin_input_shape(graph, (3, SIDE, SIDE))
    contiguous = export(fold_batchnorm(ours), workdir / "nchw.onnx", example)
    unfolded = export(folded, workdir / "nofold.onnx", example, constant_folding=False)
    static = export(folded, workdir / "static.onnx", torch.randn(batch, 3, SIDE, SIDE), dynamic=False)
    threads = torch.get_num_threads()
    runners = {
        "ort_default_path": ort_session(pinned),
        "ort_dynamic_shape": ort_session(graph),
        "ort_static_batch": ort_session(pin_input_shape(graph, (3, SIDE, SIDE), batch=batch)),
        "ort_static_export": ort_session(static),
        "ort_contiguous_export": ort_session(pin_input_shape(contiguous, (3, SIDE, SIDE))),
        "ort_no_constant_folding": ort_session(pin_input_shape(unfolded, (3, SIDE, SIDE))),
        "ort_level_basic": ort_session(pinned, level="basic"),
        "ort_level_extended": ort_session(pinned, level="extended"),
        "ort_threads_default": ort_session(pinned, threads=0),
        "ort_threads_1": ort_session(pinned, threads=1),
        "ort_spinning": ort_session(pinned, spinning=True),
    }
    runners = {name: ort_runner(session) for name, session in runners.items()}
    if openvino_available():
        (workdir / "pinned.onnx").write_bytes(pinned)
        (workdir / "pinned_batch.onnx").write_bytes(pin_input_shape(graph, (3, SIDE, SIDE), batch=batch))
        pinned, graph = workdir / "pinned.onnx", workdir / "cl.onnx"
        runners["openvino_default_path"] = openvino_runner(pinned, {"PERFORMANCE_HINT": "LATENCY",
                                                                    "INFERENCE_NUM_THREADS": threads})
        runners["openvino_static_batch"] = openvino_runner(workdir / "pinned_batch.onnx", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}, batch=batch)
        runners["openvino_no_hint_no_threads"] = openvino_runner(pinned)
        runners["openvino_dynamic_shape"] = openvino_runner(graph, {"PERFORMANCE_HINT": "LATENCY",
                                                                    "INFERENCE_NUM_THREADS": threads})
        runners["openvino_throughput_hint"] = openvino_runner(pinned, {"PERFORMANCE_HINT": "THROUGHPUT",
                                                                       "INFERENCE_NUM_THREADS": threads})
    return runners


def time_batch(runners: dict, x: torch.Tensor, reps: int, warmup: int) -> tuple[dict, float]:
    """Median seconds per call of each runner on ``x``, and the matmul peak in the same rounds."""
    probe, flops = matmul_probe(4096)
    calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
    times = time_interleaved(calls | {PEAK_PROBE: probe}, reps, warmup, settle=True)
    peak = probe_gflops(times.pop(PEAK_PROBE), flops)
    return {name: statistics.median(seconds) for name, seconds in times.items()}, peak


def summarise(batch: int, seconds: dict, errors: dict, peak: float, macs: int, auto: dict | None) -> dict:
    rates = {name: batch / s for name, s in seconds.items()}
    exact_peers = [name for name in PEERS if name in rates]
    best_peer = max(exact_peers, key=rates.get) if exact_peers else None
    return {
        "batch_size": batch, "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "latency_ms": {k: round(1e3 * v, 2) for k, v in seconds.items()},
        "ratio_to_best_peer": {k: round(v / rates[best_peer], 3) for k, v in rates.items()} if best_peer else None,
        "best_peer": best_peer, "matmul_peak_gflops": round(peak, 1),
        "peak_fraction": {k: round(2 * macs * v / 1e9 / peak, 3) for k, v in rates.items()},
        "max_abs_error_vs_torchvision": {k: float(f"{v:.2e}") for k, v in errors.items()},
        **({"auto": auto} if auto else {}),
    }


def run_batch(batch: int, ours: torch.nn.Module, reference: torch.nn.Module, args, workdir: Path,
              macs: int) -> dict:
    x = torch.randn(batch, 3, SIDE, SIDE)
    auto = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.ablation:
            runners = ablation(ours, batch, workdir)
        else:
            default = optimize_for_inference(ours, example_input=x)
            auto = default.auto_probe
            runners = {"resnets_default": default} | peers(reference, batch, workdir)
    with torch.inference_mode():  # the whole batch: static-batch graphs take only their own
        expected = reference(x)
        errors = {name: (run(x) - expected).abs().max().item() for name, run in runners.items()}
    print(f"timing batch {batch}: {', '.join(runners)}", file=sys.stderr)
    seconds, peak = time_batch(runners, x, args.reps, args.warmup)
    return summarise(batch, seconds, errors, peak, macs, auto) | {
        "max_abs_logit_torchvision": round(expected.abs().max().item(), 4)}


def main() -> None:
    global SIDE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--model", default="resnet50", help="a model both resnets and torchvision have")
    parser.add_argument("--img-size", type=int, default=SIDE)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ablation", action="store_true", help="time the variants of the default path instead")
    parser.add_argument("--json", action="store_true", help="accepted for symmetry: output is always JSON")
    args = parser.parse_args()
    SIDE = args.img_size
    torch.manual_seed(0)
    ours = create_model(args.model).eval()
    reference = torchvision.models.get_model(args.model).eval()
    reference.load_state_dict(ours.state_dict())
    macs = count_macs(ours, (3, SIDE, SIDE))
    results = []
    with tempfile.TemporaryDirectory(prefix="inference-cpu-") as folder:
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            results.append(run_batch(batch, ours, reference, args, Path(folder), macs))
    print(json.dumps({"benchmark": "inference_cpu" + ("_ablation" if args.ablation else ""), "model": args.model,
                      "input": SIDE, "weights": "random (the same in every contender)",
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "reps": args.reps,
                      "warmup": args.warmup, "gmacs": macs / 1e9, "results": results}, indent=1))


if __name__ == "__main__":
    main()
