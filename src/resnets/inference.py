"""Fast inference: a frozen, eval-mode copy of a model tuned for one runtime.

:func:`optimize_for_inference` never touches the model it is given: it deep-copies it, switches
the copy to eval mode, folds every BatchNorm into the convolution before it (a conv followed by
an affine map is one conv with rescaled weights and a bias), stores weights channels-last
(oneDNN's fast layout on CPU, tensor cores' on GPU) and runs it under ``torch.inference_mode``.
Backends then differ in who executes the folded graph:

- ``eager``: PyTorch itself. Exact (fp32) and no warm-up.
- ``compile``: ``torch.compile`` (inductor) with weight freezing. Exact to ~1e-5; the first call
  compiles (tens of seconds on a small CPU).
- ``onnxruntime``: exported to ONNX (:func:`resnets.export.export_onnx`: dynamic batch,
  height and width) and run by an ONNX Runtime session using
  PyTorch's thread count. Needs the ``onnx`` extra.
- ``int8``: ONNX Runtime static post-training quantization (QDQ, per-channel weights),
  calibrated on ``calibration_data``. Not exact: measure its accuracy on your data.
- ``openvino``: the same ONNX graph compiled by Intel's OpenVINO for the CPU (latency hint,
  fp32 pinned: OpenVINO would otherwise pick bf16 on CPUs that have it). Needs the
  ``openvino`` extra.
- ``openvino-int8``: OpenVINO with NNCF's post-training quantization (per-channel int8
  weights, bias correction), calibrated on ``calibration_data``. Not exact.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ResnetsError, first_line
from .export import ONNX_INPUT, export_onnx
from .models import get_model_spec
from .openvino import OpenVinoModule

BACKENDS: tuple[str, ...] = ("eager", "compile", "onnxruntime", "int8", "openvino", "openvino-int8")
INT8_BACKENDS = ("int8", "openvino-int8")
# ``auto``: the fastest exact backend measured on a 2-core x86 CPU (benchmarks/inference_cpu.py):
# onnxruntime where installed, else eager. ``compile`` is as fast once warm, but compiles for
# about a minute per input shape there.
DEFAULT_BACKEND = "auto"


def check_backend(backend: str) -> str:
    """``backend`` (``auto`` resolved) if known and installed; a one-line ResnetsError if not."""
    if backend == "auto":
        return "onnxruntime" if onnxruntime_available() else "eager"
    if backend not in BACKENDS:
        raise ResnetsError(f"unknown inference backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "int8") and not onnxruntime_available():
        raise ResnetsError(f"backend {backend!r} needs onnxruntime: pip install 'resnets[onnx]'")
    if backend.startswith("openvino") and not openvino_available(backend == "openvino-int8"):
        raise ResnetsError(f"backend {backend!r} needs OpenVINO{' and NNCF' if 'int8' in backend else ''}: "
                           f"pip install 'resnets[openvino]'")
    return backend


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def openvino_available(with_nncf: bool = False) -> bool:
    names = ("openvino", "onnx") + (("nncf",) if with_nncf else ())
    return all(importlib.util.find_spec(name) is not None for name in names)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm that follows a conv folded into it.

    BatchNorms not fed by a single-use convolution (pre-activation nets' norms) are kept.
    The result is a ``torch.fx.GraphModule`` computing the same function in eval mode.
    """
    from torch.fx.experimental.optimization import fuse

    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    try:
        return fuse(frozen, inplace=True)
    except Exception as error:  # noqa: BLE001 - fx cannot trace data-dependent control flow
        raise ResnetsError(f"cannot fold BatchNorm: {type(model).__name__} is not fx-traceable "
                           f"({type(error).__name__}: {first_line(error)})") from error


class InferenceModule(nn.Module):
    """A frozen model run under ``torch.inference_mode`` with channels-last inputs."""

    def __init__(self, model: nn.Module, backend: str) -> None:
        super().__init__()
        self.model = model
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.model(x.contiguous(memory_format=torch.channels_last))


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session behind a module interface: tensors in, tensors out."""

    def __init__(self, onnx_path: str | os.PathLike, backend: str) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle ORT threads otherwise spin for a while after each run, stealing the cores from
        # whatever the process does next (PyTorch, data loading, another model).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().cpu().contiguous().float().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


def optimize_for_inference(model: nn.Module, backend: str = DEFAULT_BACKEND,
                           example_input: Tensor | None = None,
                           calibration_data: Tensor | Iterable[Tensor] | None = None) -> nn.Module:
    """A fast, eval-mode copy of ``model``; the model itself stays trainable and unchanged.

    Args:
        model: any fx-traceable image model (ours or torchvision's).
        backend: ``eager``, ``compile``, ``onnxruntime``, ``int8``, ``openvino``,
            ``openvino-int8`` (see the module doc) or
            ``auto``: the fastest exact one installed (onnxruntime, else eager).
        example_input: an input batch used to export (ONNX backends) or warm up (``compile``);
            defaults to one image of the model's input size (``model.min_input_size``-aware).
        calibration_data: int8 backends only, required: a tensor of images or an iterable of
            batches from the training distribution (a few hundred images is enough).
    """
    backend = check_backend(backend)
    if backend in INT8_BACKENDS and calibration_data is None:
        raise ResnetsError(f"backend {backend!r} needs calibration_data: a few hundred representative images")
    example = example_input if example_input is not None else _default_input(model)
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    if backend == "eager":
        return InferenceModule(folded, backend)
    if backend == "compile":
        module = InferenceModule(torch.compile(folded, options={"freezing": True}), backend)
        module(example)  # compile now, not at the caller's first timed call
        return module
    return _onnx_module(folded, backend, example, calibration_data)


def _default_input(model: nn.Module) -> Tensor:
    name = getattr(model, "model_name", None)
    size = get_model_spec(name).input_size if name is not None else 224
    return torch.randn(1, getattr(model, "in_chans", 3), size, size)


def _onnx_module(folded: nn.Module, backend: str, example: Tensor,
                 calibration_data: Tensor | Iterable[Tensor] | None) -> nn.Module:
    with tempfile.TemporaryDirectory(prefix="resnets-ort-") as workdir:
        onnx_path = Path(workdir) / "model.onnx"
        export_onnx(folded, onnx_path, example, check=False)
        if backend.startswith("openvino"):
            batches = _calibration_batches(calibration_data) if backend == "openvino-int8" else None
            return OpenVinoModule(onnx_path, backend, example, batches)
        if backend == "int8":
            fp32_path, onnx_path = onnx_path, Path(workdir) / "model.int8.onnx"
            quantize_onnx_int8(fp32_path, onnx_path, _calibration_batches(calibration_data))
        return OnnxRuntimeModule(onnx_path, backend)


def _calibration_batches(data: Tensor | Iterable[Tensor] | None) -> list[Tensor]:
    if isinstance(data, Tensor):
        return list(data.split(32))
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data or ()]
    if not batches:
        raise ResnetsError("calibration_data is empty: give a few hundred representative images")
    return batches


def quantize_onnx_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                       batches: Sequence[Tensor]) -> None:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on ``batches``.

    ``reduce_range`` keeps weights to 7 bits: x86 CPUs without VNNI multiply u8 x s8 pairs with
    a saturating 16-bit add, which 8-bit weights can overflow.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {ONNX_INPUT: batch.contiguous().float().numpy()}

    quantize_static(str(fp32_path), str(int8_path), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
