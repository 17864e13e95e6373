"""Export a model to ONNX, TorchScript, safetensors or a Caffe prototxt, checked and atomic.

Every export is verified against PyTorch before it replaces ``out`` (ONNX at another batch and
image size than the traced ones; TorchScript reloaded and run). :func:`export_onnx` is the
project's one ONNX exporter: the onnxruntime / int8 / OpenVINO backends run the graph it writes.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ResnetsError
from .fileio import atomic_path, atomic_paths, open_for_writing
from .summarize import check_input_size
from .weights.caffe import export_caffe
from .weights.format import weights_bytes
from .factory import load_model

FORMATS = ("onnx", "torchscript", "safetensors", "prototxt")
ONNX_OPSET = 17
ONNX_INPUT = "images"
ONNX_OUTPUT = "logits"
# An export must match PyTorch to this fraction of the largest logit (at least 1e-4 absolute):
# fp32 rounding grows with the size of the values, so an absolute bound refuses correct
# models whose logits are large.
RELATIVE_TOLERANCE = 1e-4
# The example input only traces the graph (ONNX height and width stay dynamic); a larger one
# would only cost memory. It fixes the Input shape of a Caffe prototxt.
MAX_EXPORT_INPUT_SIZE = 2048


def load_checkpoint(checkpoint: str | os.PathLike) -> nn.Module:
    """The model to export: anything :func:`resnets.factory.load_model` takes; a bare
    registered name is the architecture, freshly initialised (``NAME:imagenet`` for its weights)."""
    return load_model(checkpoint, pretrained=False)


def check_export_input_size(size: int | None) -> None:
    """Refuse an example input size outside 1..MAX_EXPORT_INPUT_SIZE (None: the model's own)."""
    if size is not None and not 1 <= size <= MAX_EXPORT_INPUT_SIZE:
        raise ResnetsError(f"--input-size must be between 1 and {MAX_EXPORT_INPUT_SIZE}, got {size}")


def export(model: nn.Module, fmt: str, out: str | os.PathLike, input_size: int | None = None) -> Path:
    """Write ``model`` to ``out`` in ``fmt`` after checking the exported form computes the same.

    ``prototxt`` also writes the weights, to ``out`` with the suffix ``.caffemodel``; ``out``
    must then not itself end in ``.caffemodel`` (the two files would be one).
    """
    if fmt not in FORMATS:
        raise ResnetsError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    check_export_input_size(input_size)
    model = model.eval()
    size = input_size or _default_input_size(model)
    check_input_size(model, size, size)
    example = torch.randn(2, getattr(model, "in_chans", 3), size, size)
    if fmt == "prototxt":
        return _caffe_pair(model, Path(out), tuple(example.shape[1:]))
    with atomic_path(out) as tmp:
        {"onnx": export_onnx, "torchscript": _torchscript, "safetensors": _safetensors}[fmt](model, tmp, example)
    return Path(out)


def _default_input_size(model: nn.Module) -> int:
    """The input size the model's preprocessing record names (224 for a module without one)."""
    preprocessing = getattr(model, "preprocessing", None)
    return preprocessing.input_size if preprocessing is not None else 224


def export_paths(fmt: str, out: str | os.PathLike) -> tuple[Path, ...]:
    """The files an export to ``out`` writes: ``out``, and for ``prototxt`` its ``.caffemodel``."""
    out = Path(out)
    if fmt != "prototxt":
        return (out,)
    if out.suffix == ".caffemodel":
        raise ResnetsError(f"--out {out} is where the weights go: give the prototxt's name, "
                           f"e.g. {out.with_suffix('.prototxt')} (the weights go beside it)")
    return out, out.with_suffix(".caffemodel")


def _caffe_pair(model: nn.Module, prototxt: Path, input_size: tuple[int, ...]) -> Path:
    """Write the prototxt and the caffemodel beside it, replacing any old pair as a whole."""
    prototxt, caffemodel = export_paths("prototxt", prototxt)
    with atomic_paths(prototxt, caffemodel) as (prototxt_tmp, caffemodel_tmp):
        export_caffe(model, prototxt_tmp, caffemodel_tmp, input_size=input_size)
    return prototxt


def onnx_metadata(model: nn.Module) -> dict[str, str]:
    """What an ONNX file records of ``model`` beside its graph: JSON strings of its name,
    class names, preprocessing and, for a multi-label model, its task record, where it has them."""
    preprocessing: Any = getattr(model, "preprocessing", None)
    if hasattr(preprocessing, "to_dict"):
        preprocessing = preprocessing.to_dict()
    class_names = getattr(model, "class_names", None)
    values = {"model_name": getattr(model, "model_name", None),
              "class_names": list(class_names) if class_names is not None else None,
              "preprocessing": preprocessing, "task": getattr(model, "task_record", None) or None}
    return {key: json.dumps(value) for key, value in values.items() if value is not None}


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor, *, check: bool = True) -> None:
    """Export ``model`` (eval mode) to ONNX at ``path``: dynamic batch, height and width.

    The input is ``images`` (N, C, H, W), the output ``logits``, opset ONNX_OPSET; the file's
    metadata_props carry :func:`onnx_metadata`. With ``check`` the graph is run in onnxruntime
    at a batch and image size other than ``example``'s and compared to PyTorch (relative
    tolerance); a mismatch raises. The inference backends skip the check: they compare
    nothing to PyTorch at run time, and OpenVINO's may run without onnxruntime.
    """
    try:
        import onnx
    except ImportError:
        raise ResnetsError("ONNX export needs onnx and onnxruntime: pip install 'resnets[onnx]'") from None
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation, and that it cannot
        # constant-fold the Slice ops of dynamic shapes: expected here, nothing for the user.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example.contiguous(),), str(path), input_names=[ONNX_INPUT],
                          output_names=[ONNX_OUTPUT], opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={ONNX_INPUT: {0: "batch", 2: "height", 3: "width"},
                                        ONNX_OUTPUT: {0: "batch"}})
    graph = onnx.load(str(path))
    for key, value in onnx_metadata(model).items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    if check:
        check_onnx(model, path, example)


def check_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor) -> None:
    """Run the ONNX file in onnxruntime at batch 1 and 3, at the example's size and a larger,
    non-square one; raise unless it matches ``model`` to RELATIVE_TOLERANCE."""
    try:
        import onnxruntime
    except ImportError:
        raise ResnetsError("ONNX export needs onnx and onnxruntime: pip install 'resnets[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    channels, height, width = example.shape[1:]
    for batch, h, w in ((1, height, width), (3, height + 32, width + 64)):
        x = torch.randn(batch, channels, h, w)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {ONNX_INPUT: x.numpy()})[0])
        _check_close(got, expected, f"ONNX export at batch {batch}, {h}x{w}")


def _check_close(got: Tensor, expected: Tensor, what: str) -> None:
    """Raise unless max|got - expected| <= RELATIVE_TOLERANCE * max(1, max|expected|)."""
    error = (got - expected).abs().max().item()
    allowed = RELATIVE_TOLERANCE * max(1.0, expected.abs().max().item())
    if not error <= allowed:  # also refuses NaN
        raise ResnetsError(f"{what} differs from PyTorch by {error:.2e} (> {allowed:.1e}); not written")


def _torchscript(model: nn.Module, tmp: Path, example: Tensor) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        scripted = torch.jit.trace(model, example)
        buffer = io.BytesIO()  # written by Python, not by TorchScript's C++ writer, which aborts the
        torch.jit.save(scripted, buffer)  # process on a full disk (exit 134) instead of raising
        with open_for_writing(tmp) as handle:
            handle.write(buffer.getvalue())
        reloaded = torch.jit.load(str(tmp))
        got, expected = reloaded(example), model(example)
    _check_close(got, expected, "TorchScript export")


def _safetensors(model: nn.Module, tmp: Path, example: Tensor) -> None:
    # straight into export's temporary file: a second atomic write onto a temporary name left a
    # backup of it behind when killed between its renames, which nothing would ever clean
    with open_for_writing(tmp) as handle:
        handle.write(weights_bytes(model, name=str(tmp)))
