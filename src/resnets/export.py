"""Export a model to ONNX, TorchScript, safetensors or a Caffe prototxt, checked and atomic.

Every export is verified before it is kept: the ONNX graph is run in onnxruntime on a random
batch whose size differs from the traced one (the batch dimension is dynamic) and compared to
PyTorch; the TorchScript file is reloaded and run. A mismatch over ``ONNX_TOLERANCE`` fails the
export, and nothing is written in place of ``out`` unless it passed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ResnetsError
from .fileio import atomic_path

FORMATS = ("onnx", "torchscript", "safetensors", "prototxt")
ONNX_TOLERANCE = 1e-4


def load_checkpoint(checkpoint: str | os.PathLike) -> nn.Module:
    """A model from a registered name, a weights file (any format) or a run dir with weights.safetensors."""
    from .models import create_model, list_models

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "weights.safetensors"
        if not path.is_file():
            raise ResnetsError(f"{checkpoint} is a directory without weights.safetensors")
    if path.is_file():
        return create_model(weights=str(path)).eval()
    if str(checkpoint) in list_models():
        return create_model(str(checkpoint)).eval()
    raise ResnetsError(f"{checkpoint} is neither a file, a run directory nor a model name (see `resnets models`)")


def export(model: nn.Module, fmt: str, out: str | os.PathLike, input_size: int | None = None) -> Path:
    """Write ``model`` to ``out`` in ``fmt`` after checking the exported form computes the same."""
    if fmt not in FORMATS:
        raise ResnetsError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    model = model.eval()
    size = input_size or _default_input_size(model)
    example = torch.randn(2, getattr(model, "in_chans", 3), size, size)
    if fmt == "prototxt":
        try:
            from .weights.caffe import export_caffe
        except ImportError:
            raise ResnetsError("caffe support not installed (resnets.weights.caffe is missing)") from None
        export_caffe(model, out, Path(out).with_suffix(".caffemodel"), input_size=tuple(example.shape[1:]))
        return Path(out)
    with atomic_path(out) as tmp:
        {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}[fmt](model, example, tmp)
    return Path(out)


def _default_input_size(model: nn.Module) -> int:
    from .models import get_model_spec

    name = getattr(model, "model_name", None)
    try:
        return get_model_spec(name).input_size if name else 224
    except ResnetsError:
        return 224


def _onnx(model: nn.Module, example: torch.Tensor, tmp: Path) -> None:
    try:
        import onnxruntime
    except ImportError:
        raise ResnetsError("ONNX export needs onnx and onnxruntime: pip install 'resnets[onnx]'") from None

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, *example.shape[1:])
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        error = (got - expected).abs().max().item()
        if error > ONNX_TOLERANCE:
            raise ResnetsError(f"ONNX export differs from PyTorch by {error:.2e} (> {ONNX_TOLERANCE}) at batch "
                               f"{batch}; not written")


def _torchscript(model: nn.Module, example: torch.Tensor, tmp: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        scripted = torch.jit.trace(model, example)
        scripted.save(str(tmp))
        reloaded = torch.jit.load(str(tmp))
        error = (reloaded(example) - model(example)).abs().max().item()
    if error > ONNX_TOLERANCE:
        raise ResnetsError(f"TorchScript export differs from PyTorch by {error:.2e}; not written")


def _safetensors(model: nn.Module, example: torch.Tensor, tmp: Path) -> None:
    from .weights.format import save_weights

    save_weights(tmp, model, class_names=getattr(model, "class_names", None),
                 preprocessing=getattr(model, "preprocessing", None))
