"""The state behind ``resnets serve``'s endpoints, shared by both protocols (:mod:`.app`,
:mod:`.v2`): the configuration, the model with its batcher and decode threads (both supervised:
:meth:`Server.supervise`), and the refusal every endpoint answers with.

Everything a request costs in CPU runs in the decode threads, never on the event loop, so the
health endpoints answer while a large request is parsed and decoded: admission
(:mod:`.admission`, headers only), decoding to uint8 at the model's size, normalising. A request's
images go to the model in batches of at most ``--max-batch``, one after the other, so requests
that arrive meanwhile are answered between them.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image

from ..data.images import decode_image
from ..errors import ResnetsError
from ..preprocessing import PixelBudgetError
from ..metrics import top_classes
from ..multilabel import is_multi_label, labels_above, threshold_of
from ..predict import InferenceModel
from ..factory import create_model
from ..models import list_models
from ..summarize import summary
from ..weights.onnx import OnnxModel
from .admission import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS, Limits, ServeError, admit_images
from .batcher import DynamicBatcher
from .metrics import ServeMetrics
from .workers import SupervisedPool

__all__ = ["ServeConfig", "ServeError", "Server", "decode_request_image", "decode_to_uint8", "process_cores"]


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
    ``max_images``/``max_pixels``: admission per request (:mod:`.admission`). ``watchdog_s``: how
    often dead worker threads are looked for and started again.
    """

    name: str
    max_batch: int = 32
    max_wait_ms: float = 0.0
    workers: int = field(default_factory=process_cores)
    threads: int | None = None
    token: str | None = None
    max_body_mb: float = 20.0
    topk: int = 5
    max_images: int = DEFAULT_MAX_IMAGES
    max_pixels: int = DEFAULT_MAX_PIXELS
    watchdog_s: float = 1.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_images, self.max_pixels)


# -- decoding ----------------------------------------------------------------------------------
def decode_request_image(data: bytes, name: str, fits: Callable[[int, int], object] | None = None) -> Image.Image:
    """Image bytes a client sent -> the PIL image; a 400 or 413 :class:`ServeError` otherwise (413: over
    the decode budget, :func:`resnets.preprocessing.check_pixels`, of the image or of what ``fits``
    says the model's resize would make of it, checked before decoding)."""
    if not data:
        raise ServeError(400, f"empty {name}: send the bytes of an image")
    try:
        return decode_image(data, name, fits)
    except PixelBudgetError as error:
        raise ServeError(413, str(error)) from None
    except ResnetsError as error:
        raise ServeError(400, str(error)) from None


def decode_to_uint8(predictor: InferenceModel, data: bytes, name: str) -> torch.Tensor:
    """Image bytes -> uint8 (3, S, S) at the model's size (its preprocessing record)."""
    image = decode_request_image(data, name, predictor.preprocessing.resized_size)
    try:
        return predictor.preprocessing.to_uint8(image)
    except PixelBudgetError as error:
        raise ServeError(413, f"image {name}: {error}") from None


# -- the server --------------------------------------------------------------------------------
class Server:
    """The state behind the endpoints: model, batcher, decode pool, metrics, card."""

    def __init__(self, predictor: InferenceModel, config: ServeConfig) -> None:
        self.predictor = predictor
        self.config = config
        self.metrics = ServeMetrics()
        self.pool = SupervisedPool(max(1, config.workers), name="resnets-decode")
        # a multi-label model answers every label at or above its recorded threshold (resnets.multilabel)
        self.threshold = threshold_of(predictor.plain) if is_multi_label(predictor.plain) else None
        self.batcher = DynamicBatcher(predictor.model, config.max_batch, config.max_wait_ms,
                                      on_batch=self.metrics.batch_size.observe,
                                      multi_label=self.threshold is not None, threads=config.threads)
        # Grad-CAM hooks the one plain model: one explanation at a time, on a thread of its own, so that
        # a slow one (ScoreCAM: a forward pass per channel) never holds a decode thread
        self.explain_pool = SupervisedPool(1, name="resnets-explain")
        self.card = model_card(predictor, config)
        self.warm = False  # the warm-up pass ran
        self.closing = False

    @property
    def ready(self) -> bool:
        """Whether a request would be answered now: warmed up, not stopping, every worker thread running."""
        return (self.warm and not self.closing and self.batcher.alive and self.pool.alive
                and self.explain_pool.alive)

    def supervise(self) -> int:
        """Start again the worker threads that died (the watchdog calls this); how many."""
        return int(self.batcher.ensure_running()) + self.pool.ensure_running() + self.explain_pool.ensure_running()

    def warm_up(self) -> None:
        """One forward pass before the first request (backends that build lazily build now)."""
        size = self.predictor.img_size
        zeros = torch.zeros(1, 3, size, size, dtype=torch.uint8)
        self.batcher.submit(self.predictor.normalise(zeros)).result()
        self.warm = True

    def close(self) -> None:
        self.closing = True
        self.batcher.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.explain_pool.shutdown(wait=False, cancel_futures=True)

    def check_model(self, model: str) -> None:
        if model != self.config.name:
            raise ServeError(404, f"unknown model {model!r}; this server serves {self.config.name!r}")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a decode thread (CPU work stays off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def run_explain(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the explanation thread: one at a time, never on a decode thread."""
        return await asyncio.get_running_loop().run_in_executor(self.explain_pool, fn, *args)

    async def classify(self, images: list[tuple[bytes, str]]) -> torch.Tensor:
        """Probabilities (N, classes) of images given as (bytes, name): admitted from their headers,
        decoded in parallel (``workers`` at a time, taking turns with other requests), run in batches of
        at most ``max_batch``."""
        await self.run(admit_images, images, self.config.limits)
        turns = asyncio.Semaphore(max(1, self.config.workers))  # at most this many queued per request, so

        async def decode(data: bytes, name: str) -> torch.Tensor:  # requests take turns in the pool
            async with turns:
                return await self.run(decode_to_uint8, self.predictor, data, name)

        pixels = await self.gather([asyncio.ensure_future(decode(d, n)) for d, n in images])
        return await self.run_batches(torch.stack(pixels), self.predictor.normalise)

    @staticmethod
    async def gather(futures: list[asyncio.Future]) -> list[Any]:
        """All results, or the first failure with the rest cancelled (no work left running for nothing)."""
        try:
            return await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    async def run_batches(self, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Probabilities of ``images`` run through the batcher ``max_batch`` at a time, each piece made
        model input by ``prepare`` (in a decode thread) while the one before it runs."""
        pieces = images.split(self.config.max_batch) if len(images) else [images]
        results = []
        next_batch = asyncio.ensure_future(self.run(prepare, pieces[0]))
        for i in range(len(pieces)):
            batch = await next_batch
            answer = asyncio.wrap_future(self.batcher.submit(batch))
            if i + 1 < len(pieces):
                next_batch = asyncio.ensure_future(self.run(prepare, pieces[i + 1]))
            try:
                results.append(await answer)
            except BaseException:
                next_batch.cancel()
                raise
        return torch.cat(results) if len(results) > 1 else results[0]

    async def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities of an already normalised float batch."""
        return await self.run_batches(batch, self._to_device)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.predictor.device)

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
    parameters, macs = _counts(plain, predictor.img_size)
    return {"name": config.name, "architecture": getattr(plain, "model_name", type(plain).__name__),
            "parameters": parameters, "macs": macs, "input_size": predictor.img_size,
            "num_classes": len(predictor.class_names), "classes": predictor.class_names,
            "preprocessing": predictor.preprocessing.describe(),
            "preprocessing_record": predictor.preprocessing.to_dict(), "backend": predictor.backend,
            "device": str(predictor.device), "topk": config.topk, "max_batch": config.max_batch,
            "max_body_mb": config.max_body_mb, "max_images": config.max_images,
            "max_pixels": config.max_pixels, "multi_label": is_multi_label(plain),
            "threshold": threshold_of(plain) if is_multi_label(plain) else None}


def _counts(plain: torch.nn.Module, size: int) -> tuple[int | None, int | None]:
    """Parameters and MACs of the model; of an ONNX file's registered architecture (its graph is no
    module to count, and running it here would build a second session), None if not registered."""
    if isinstance(plain, OnnxModel):
        if plain.model_name not in list_models():
            return None, None
        plain = create_model(plain.model_name, num_classes=plain.num_classes, in_chans=plain.in_chans)
    counted = summary(plain, size)
    return counted.total_params, counted.macs
