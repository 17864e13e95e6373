"""Inference: load a trained model once (:func:`load_for_inference`) and classify image files."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .data.collection import ImageCollection, open_collection
from .data.dataset import ImageDataset
from .data.images import BadImageError, SkippedImages, decode_image, read_image_file
from .device import resolve_device
from .errors import ResnetsError
from .inference import check_backend, optimize_for_inference
from .metrics import probabilities, top_classes
from .multilabel import check_threshold, is_multi_label, labels_above, threshold_of
from .preprocessing import Preprocessing
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

    def with_backend(self, backend: str, calibration_u8: torch.Tensor | None = None,
                     images: int | None = None) -> "InferenceModel":
        """The same model through another inference backend (:func:`optimize_for_inference`).

        ``calibration_u8``: int8 backends only, a few hundred uint8 (N, 3, S, S) images at
        ``img_size`` from the training distribution. Backends other than ``eager`` and
        ``compile`` run on the CPU; ``auto`` probes at one image of ``img_size`` (the ONNX
        graphs are pinned to that size) and chooses ``eager`` off the CPU, or for fewer
        ``images`` than an export and probe pay back (:func:`resnets.inference.worth_probing`).
        ``backend`` then names the backend chosen. An ONNX file's model runs in onnxruntime or
        OpenVINO only.
        """
        backend = check_backend(backend)
        if backend not in ("eager", "compile", "auto") and self.device.type != "cpu":
            raise ResnetsError(f"backend {backend!r} runs on the CPU; use --device cpu or backend eager")
        calibration = None if calibration_u8 is None else self.normalise(calibration_u8)
        example = torch.zeros(1, self.plain.in_chans, self.img_size, self.img_size, device=self.device)
        model = optimize_for_inference(self.plain, backend, example_input=example, calibration_data=calibration,
                                       images=images)
        return replace(self, model=model, backend=getattr(model, "backend", backend))

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> the float batch the model expects (its preprocessing record)."""
        return self.preprocessing.normalize(images_u8.to(self.device))


def load_for_inference(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                       backend: str = "eager", calibration_u8: torch.Tensor | None = None,
                       images: int | None = None) -> InferenceModel:
    """THE one place that prepares a trained model for inference (eval mode, device, record).

    ``checkpoint`` is anything :func:`resnets.factory.load_model` takes (run directory,
    weights file of any format, the project's ONNX file, ``NAME`` for its ImageNet weights,
    ``NAME:TAG``). Every inference path (``evaluate``, ``predict``, ``serve``) goes through
    here. The model comes back in its fast form (:func:`resnets.inference.optimize_for_inference`:
    BatchNorm folded into the convolutions, channels-last, inference mode) through ``backend``;
    int8 backends need ``calibration_u8``; ``images``, the number of images to run, lets ``auto``
    skip an export that would not pay back (see :meth:`InferenceModel.with_backend`).
    """
    device = resolve_device(device)
    plain = load_model(checkpoint, onnx=True).to(device)
    classes = plain.class_names or [str(i) for i in range(plain.num_classes)]
    unoptimized = InferenceModel(plain, classes, plain.preprocessing, device, plain, backend="plain")
    return unoptimized.with_backend(backend, calibration_u8, images)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files ``inputs`` name on disk: files as given, folders and list files expanded.

    The files of :func:`resnets.data.collection.open_collection` (folders walked without
    following symbolic links to folders; FIFOs, devices and missing paths skipped with a
    warning); the members of a zip are not files and are left out: read them with
    ``open_collection``.
    """
    return open_collection(inputs).files()


def read_image(path: Path, preprocessing: Preprocessing) -> torch.Tensor:
    """One file as the uint8 (3, S, S) its model's record asks for (resize, centre crop)."""
    return preprocessing.to_uint8(decode_image(read_image_file(path), str(path), preprocessing.resized_size))


def read_items(dataset: ImageDataset, indices: Iterable[int], preprocessing: Preprocessing,
               on_error: Callable[[str, str], None] | None = None) -> list[tuple[str, torch.Tensor]]:
    """(exact name, uint8 model input) of the readable items of ``dataset`` at ``indices``.

    Unreadable ones are skipped with one warning each (:class:`~resnets.data.images.SkippedImages`),
    or passed to ``on_error(name, message)`` when given.
    """
    skipped, loaded = SkippedImages(), []
    for index in indices:
        name = dataset.item_name(index)
        try:
            loaded.append((name, preprocessing.to_uint8(dataset[index][0])))
        except BadImageError as error:
            if on_error is None:
                skipped.add(dataset.describe(index))
            else:
                on_error(name, str(error))
    return loaded


@torch.inference_mode()
def predict_files(predictor: InferenceModel, inputs: Iterable[str | os.PathLike], topk: int = 5,
                  batch_size: int = 64, on_error: Callable[[str, str], None] | None = None,
                  threshold: float | None = None) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each readable image, like Keras' ``decode_predictions``.

    ``inputs``: image files, folders (recursive), zips and list files of images
    (:func:`resnets.data.collection.open_collection`), or the collection it opened. A
    multi-label model gives instead every class whose sigmoid probability is at or above
    ``threshold`` (default: the model's recorded one), most probable first (``"labels"``).
    Unreadable images are skipped with one warning each, or passed to ``on_error(name,
    message)``. Images are read one batch at a time.
    """
    label_threshold = _multi_label_threshold(predictor, threshold)
    collection = inputs if isinstance(inputs, ImageCollection) else open_collection(inputs)
    results = []
    for start in range(0, len(collection), batch_size):
        chunk = read_items(collection, range(start, min(start + batch_size, len(collection))),
                           predictor.preprocessing, on_error)
        if not chunk:
            continue
        paths = [name for name, _ in chunk]
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
