"""The state behind ``resnets serve``'s endpoints, shared by both protocols (:mod:`.app`,
:mod:`.v2`): the configuration, the model with its batcher and decode threads, and the refusal
every endpoint answers with."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..data.images import decode_image
from ..errors import ResnetsError
from ..preprocessing import PixelBudgetError
from ..metrics import top_classes
from ..multilabel import is_multi_label, labels_above, threshold_of
from ..predict import InferenceModel
from ..summarize import summary
from .batcher import DynamicBatcher
from .metrics import ServeMetrics


def process_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks on this platform (macOS, Windows)
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeConfig:
    """What ``resnets serve`` was asked for (see its --help).

    ``max_wait_ms`` 0: no timer; a request finding the model idle runs at once, and the requests
    that arrive while a batch runs form the next one. ``workers``: threads decoding images (default
    the cores this process has); ``threads``: torch's threads for the model (None: as torch chose).
    """

    name: str
    max_batch: int = 32
    max_wait_ms: float = 0.0
    workers: int = field(default_factory=process_cores)
    threads: int | None = None
    token: str | None = None
    max_body_mb: float = 20.0
    topk: int = 5

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


class ServeError(Exception):
    """A request refused: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- decoding ----------------------------------------------------------------------------------
def decode_request_image(data: bytes, name: str) -> Image.Image:
    """Image bytes a client sent -> the PIL image; a 400 or 413 :class:`ServeError` otherwise (413: over
    the decode budget, :func:`resnets.preprocessing.check_pixels`)."""
    if not data:
        raise ServeError(400, f"empty {name}: send the bytes of an image")
    try:
        return decode_image(data, name)
    except PixelBudgetError as error:
        raise ServeError(413, str(error)) from None
    except ResnetsError as error:
        raise ServeError(400, str(error)) from None


def decode_to_batch(predictor: InferenceModel, data: bytes, name: str) -> torch.Tensor:
    """Image bytes -> the normalised (1, 3, S, S) float batch of the model's preprocessing."""
    image = decode_request_image(data, name)
    try:
        pixels = predictor.preprocessing.to_uint8(image)
    except PixelBudgetError as error:
        raise ServeError(413, f"image {name}: {error}") from None
    return predictor.normalise(pixels[None])


# -- the server --------------------------------------------------------------------------------
class Server:
    """The state behind the endpoints: model, batcher, decode pool, metrics, card."""

    def __init__(self, predictor: InferenceModel, config: ServeConfig) -> None:
        self.predictor = predictor
        self.config = config
        self.metrics = ServeMetrics()
        self.pool = ThreadPoolExecutor(max(1, config.workers), thread_name_prefix="resnets-decode")
        # a multi-label model answers every label at or above its recorded threshold (resnets.multilabel)
        self.threshold = threshold_of(predictor.plain) if is_multi_label(predictor.plain) else None
        self.batcher = DynamicBatcher(predictor.model, config.max_batch, config.max_wait_ms,
                                      on_batch=self.metrics.batch_size.observe,
                                      multi_label=self.threshold is not None, threads=config.threads)
        self.explain_lock = threading.Lock()  # Grad-CAM hooks the one plain model: one at a time
        self.card = model_card(predictor, config)
        self.ready = False

    def warm_up(self) -> None:
        """One forward pass before the first request (backends that build lazily build now)."""
        size = self.predictor.img_size
        zeros = torch.zeros(1, 3, size, size, dtype=torch.uint8)
        self.batcher.submit(self.predictor.normalise(zeros)).result()
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self.batcher.close()
        self.pool.shutdown(wait=True)

    def check_model(self, model: str) -> None:
        if model != self.config.name:
            raise ServeError(404, f"unknown model {model!r}; this server serves {self.config.name!r}")

    async def classify(self, images: list[tuple[bytes, str]]) -> torch.Tensor:
        """Probabilities (N, classes) of images given as (bytes, name): decoded in parallel, batched."""
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*[loop.run_in_executor(self.pool, decode_to_batch, self.predictor, d, n)
                                         for d, n in images])
        return await self.infer(torch.cat(decoded))

    async def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return await asyncio.wrap_future(self.batcher.submit(batch))

    def labels(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """Per image, its answer as (class name, probability), most probable first: the ``k`` most
        probable classes, or for a multi-label model every class at or above its threshold."""
        names = self.predictor.class_names
        rows = (top_classes(probs, names, k) if self.threshold is None
                else labels_above(probs, names, self.threshold))
        return [[(row["class"], row["probability"]) for row in answer] for answer in rows]


def model_card(predictor: InferenceModel, config: ServeConfig) -> dict[str, Any]:
    """What the web page shows about the model (parameters and MACs counted as ``resnets summary``)."""
    plain = predictor.plain
    counted = summary(plain, predictor.img_size)
    return {"name": config.name, "architecture": getattr(plain, "model_name", type(plain).__name__),
            "parameters": counted.total_params, "macs": counted.macs, "input_size": predictor.img_size,
            "num_classes": len(predictor.class_names), "classes": predictor.class_names,
            "preprocessing": predictor.preprocessing.describe(),
            "preprocessing_record": predictor.preprocessing.to_dict(), "backend": predictor.backend,
            "device": str(predictor.device), "topk": config.topk, "max_batch": config.max_batch,
            "max_body_mb": config.max_body_mb, "multi_label": is_multi_label(plain),
            "threshold": threshold_of(plain) if is_multi_label(plain) else None}
