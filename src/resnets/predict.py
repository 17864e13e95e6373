"""Inference: load a trained model once (:func:`load_for_inference`) and classify image files."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .data.images import BadImageWarning, decode_image, is_image_name, read_image_file
from .data.imagetree import walk_files
from .device import resolve_device
from .errors import ResnetsError
from .inference import check_backend, optimize_for_inference
from .metrics import probabilities, top_classes
from .multilabel import check_threshold, is_multi_label, labels_above, threshold_of
from .preprocessing import Preprocessing
from .terminal import printable
from .factory import load_model


@dataclass
class InferenceModel:
    """A model ready for inference, with its record: how to feed it and how to name its outputs."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    device: torch.device
    plain: nn.Module  # the eval-mode model that ``model`` was made from
    backend: str  # how ``model`` was made from ``plain`` (see :meth:`with_backend`)

    @property
    def img_size(self) -> int:
        return self.preprocessing.input_size

    def with_backend(self, backend: str, calibration_u8: torch.Tensor | None = None) -> "InferenceModel":
        """The same model through another inference backend (:func:`optimize_for_inference`).

        ``calibration_u8``: int8 backends only, a few hundred uint8 (N, 3, S, S) images at
        ``img_size`` from the training distribution. Backends other than ``eager`` and
        ``compile`` run on the CPU.
        """
        backend = check_backend(backend)
        if backend not in ("eager", "compile") and self.device.type != "cpu":
            raise ResnetsError(f"backend {backend!r} runs on the CPU; use --device cpu or backend eager")
        calibration = None if calibration_u8 is None else self.normalise(calibration_u8)
        example = torch.zeros(1, self.plain.in_chans, self.img_size, self.img_size, device=self.device)
        model = optimize_for_inference(self.plain, backend, example_input=example, calibration_data=calibration)
        return replace(self, model=model, backend=backend)

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> the float batch the model expects (its preprocessing record)."""
        return self.preprocessing.normalize(images_u8.to(self.device))


def load_for_inference(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                       backend: str = "eager", calibration_u8: torch.Tensor | None = None) -> InferenceModel:
    """THE one place that prepares a trained model for inference (eval mode, device, record).

    ``checkpoint`` is anything :func:`resnets.factory.load_model` takes (run directory,
    weights file of any format, ``NAME`` for its ImageNet weights, ``NAME:TAG``). Every
    inference path (``evaluate``, ``predict``) goes through here. The model comes back in its
    fast form (:func:`resnets.inference.optimize_for_inference`: BatchNorm folded into the
    convolutions, channels-last, inference mode) through ``backend``; int8 backends need
    ``calibration_u8`` (see :meth:`InferenceModel.with_backend`).
    """
    device = resolve_device(device)
    plain = load_model(checkpoint).to(device)
    classes = plain.class_names or [str(i) for i in range(plain.num_classes)]
    unoptimized = InferenceModel(plain, classes, plain.preprocessing, device, plain, backend="plain")
    return unoptimized.with_backend(backend, calibration_u8)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; directories replaced by the image files under them (sorted).

    Directories are walked as image folders are (:func:`resnets.data.imagetree.walk_files`:
    symbolic links to folders not followed, regular files only). A given path that exists but
    is not a folder or a regular file (a FIFO would block the read, a device never end) is
    skipped with a warning; a missing one is kept, for the reader to report.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(item / name for name in walk_files(item) if is_image_name(name))
        elif item.exists() and not item.is_file():
            warnings.warn(f"skipped {printable(str(item))}: not a regular file", BadImageWarning, stacklevel=2)
        else:
            paths.append(item)
    return paths


def read_image(path: Path, preprocessing: Preprocessing) -> torch.Tensor:
    """One file as the uint8 (3, S, S) its model's record asks for (resize, centre crop)."""
    return preprocessing.to_uint8(decode_image(read_image_file(path), str(path)))


@torch.inference_mode()
def predict_files(predictor: InferenceModel, inputs: Iterable[str | os.PathLike], topk: int = 5,
                  batch_size: int = 64, on_error=None, threshold: float | None = None) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each readable image, like Keras' ``decode_predictions``.

    A multi-label model gives instead every class whose sigmoid probability is at or above
    ``threshold`` (default: the model's recorded one), most probable first (``"labels"``).

    Unreadable files are passed to ``on_error(path, message)`` (default: one line on stderr)
    and skipped.
    """
    on_error = on_error or (lambda path, message: print(f"resnets: skipped {message}", file=sys.stderr))
    readable: list[tuple[Path, torch.Tensor]] = []
    for path in expand_inputs(inputs):
        try:
            readable.append((path, read_image(path, predictor.preprocessing)))
        except ResnetsError as error:
            on_error(path, str(error))
    label_threshold = _multi_label_threshold(predictor, threshold)
    results = []
    for start in range(0, len(readable), batch_size):
        chunk = readable[start:start + batch_size]
        paths = [str(path) for path, _ in chunk]
        batch = predictor.normalise(torch.stack([image for _, image in chunk]))
        probs = probabilities(predictor.model(batch), multi_label=label_threshold is not None)
        if label_threshold is not None:
            results.extend({"path": path, "threshold": label_threshold, "labels": labels} for path, labels
                           in zip(paths, labels_above(probs, predictor.class_names, label_threshold)))
        else:
            results.extend({"path": path, "top": top}
                           for path, top in zip(paths, top_classes(probs, predictor.class_names, topk)))
    return results


def _multi_label_threshold(predictor: InferenceModel, threshold: float | None) -> float | None:
    """The threshold a multi-label model predicts with (None: a single-label model)."""
    if not is_multi_label(predictor.plain):
        if threshold is not None:
            raise ResnetsError("--threshold is for multi-label models; this one is single-label (top-k)")
        return None
    return threshold_of(predictor.plain) if threshold is None else check_threshold(threshold, "--threshold")
