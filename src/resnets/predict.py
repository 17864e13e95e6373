"""Inference: load a trained model once (:func:`load_for_inference`) and classify image files."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .device import resolve_device
from .errors import ResnetsError
from .weights import WeightsFile, model_from_weights

WEIGHTS_IN_RUN_DIR = "weights.safetensors"


@dataclass
class InferenceModel:
    """A model ready for inference, with what it needs to read images and name its outputs."""

    model: nn.Module
    class_names: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    device: torch.device
    record: WeightsFile
    plain: nn.Module  # the eval-mode model that ``model`` was made from
    backend: str  # how ``model`` was made from ``plain`` (see :meth:`with_backend`)

    def with_backend(self, backend: str, calibration_u8: torch.Tensor | None = None) -> "InferenceModel":
        """The same model through another inference backend (:func:`optimize_for_inference`).

        ``calibration_u8``: int8 backends only, a few hundred uint8 (N, 3, S, S) images at
        ``img_size`` from the training distribution. Backends other than ``eager`` and
        ``compile`` run on the CPU.
        """
        from .inference import check_backend, optimize_for_inference

        backend = check_backend(backend)
        if backend not in ("eager", "compile") and self.device.type != "cpu":
            raise ResnetsError(f"backend {backend!r} runs on the CPU; use --device cpu or backend eager")
        calibration = None if calibration_u8 is None else self.normalise(calibration_u8)
        example = torch.zeros(1, 3, self.img_size, self.img_size, device=self.device)
        model = optimize_for_inference(self.plain, backend, example_input=example, calibration_data=calibration)
        return replace(self, model=model, backend=backend)

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> the float batch the model was trained on."""
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (images_u8.to(self.device, torch.float32) / 255.0 - mean) / std


def resolve_weights(checkpoint: str | os.PathLike) -> Path:
    """A run directory means its ``weights.safetensors``; a file is taken as it is."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS_IN_RUN_DIR
        if not path.is_file():
            raise ResnetsError(f"{checkpoint} holds no {WEIGHTS_IN_RUN_DIR}; is it a finished run directory?")
    elif not path.exists():
        raise ResnetsError(f"no such checkpoint: {checkpoint}")
    return path


def load_for_inference(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                       backend: str = "eager", calibration_u8: torch.Tensor | None = None) -> InferenceModel:
    """THE one place that prepares a trained model for inference (eval mode, device, metadata).

    Every inference path (``evaluate``, ``predict``) goes through here. The model comes back
    in its fast form (:func:`resnets.inference.optimize_for_inference`: BatchNorm folded into the
    convolutions, channels-last, inference mode) through ``backend``; int8 backends need
    ``calibration_u8`` (see :meth:`InferenceModel.with_backend`).
    """
    device = resolve_device(device)
    model, record = model_from_weights(resolve_weights(checkpoint))
    plain = model.eval().to(device)
    classes = record.class_names or [str(i) for i in range(plain.num_classes)]
    pre = record.preprocessing or {}
    from .models import get_model_spec

    spec = get_model_spec(record.model_name) if record.model_name else None
    img_size = int(pre.get("img_size") or (spec.input_size if spec else 224))
    mean = list(pre.get("mean") or (spec.mean if spec else (0.485, 0.456, 0.406)))
    std = list(pre.get("std") or (spec.std if spec else (0.229, 0.224, 0.225)))
    unoptimized = InferenceModel(plain, classes, img_size, mean, std, device, record, plain, backend="plain")
    return unoptimized.with_backend(backend, calibration_u8)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; directories replaced by the image files under them (sorted).

    Directories are walked as image folders are (:func:`resnets.data.imagetree.walk_files`:
    symbolic links to folders not followed, regular files only). A given path that exists but
    is not a folder or a regular file (a FIFO would block the read, a device never end) is
    skipped with a warning; a missing one is kept, for the reader to report.
    """
    import warnings

    from .data.images import BadImageWarning, is_image_name, printable
    from .data.imagetree import walk_files

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(item / name for name in walk_files(item) if is_image_name(name))
        elif item.exists() and not item.is_file():
            warnings.warn(f"skipped {printable(str(item))}: not a regular file", BadImageWarning, stacklevel=2)
        else:
            paths.append(item)
    return paths


def read_image(path: Path, size: int) -> torch.Tensor:
    """One file as uint8 (3, size, size): shorter side resized, centre-cropped (as in training)."""
    import numpy as np
    from PIL import Image, ImageOps

    from .data.images import decode_image

    try:
        data = path.read_bytes()
    except OSError as error:
        raise ResnetsError(f"cannot read {path}: {error.strerror or error}") from None
    image = ImageOps.fit(decode_image(data, str(path)), (size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


@torch.inference_mode()
def predict_files(predictor: InferenceModel, inputs: Iterable[str | os.PathLike], topk: int = 5,
                  batch_size: int = 64, on_error=None) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each readable image, like Keras' ``decode_predictions``.

    Unreadable files are passed to ``on_error(path, message)`` (default: one line on stderr)
    and skipped.
    """
    on_error = on_error or (lambda path, message: print(f"resnets: skipped {message}", file=sys.stderr))
    readable: list[tuple[Path, torch.Tensor]] = []
    for path in expand_inputs(inputs):
        try:
            readable.append((path, read_image(path, predictor.img_size)))
        except ResnetsError as error:
            on_error(path, str(error))
    k = min(topk, len(predictor.class_names))
    results = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start:start + batch_size]
        batch = predictor.normalise(torch.stack([image for _, image in chunk]))
        probs = predictor.model(batch).float().softmax(1)
        values, indices = probs.topk(k, dim=1)
        for (path, _), p, i in zip(chunk, values.tolist(), indices.tolist()):
            results.append({"path": str(path), "top": [
                {"class": predictor.class_names[c], "index": c, "probability": q} for c, q in zip(i, p)]})
    return results
