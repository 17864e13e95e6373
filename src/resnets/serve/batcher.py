"""Dynamic batching: requests that arrive close together run through the model as one batch.

Request handlers decode their images in a thread pool (in parallel) and hand the normalised
float batch to :meth:`DynamicBatcher.submit`. One worker thread owns the model. When it is idle,
the first request runs at once (no timer): batching costs a lone request nothing. While a batch
runs, new requests queue; when it ends, the worker takes everything queued (up to ``max_batch``
images) as the next batch. Under load batches grow by themselves to what arrives during one
forward pass, the throughput a timer would buy, without the timer's wait when the server is quiet.
``max_wait_ms`` > 0 adds the timer back: the first request of a batch then waits up to that long
for others to share it.

A single thread owning the model keeps backends that are not thread-safe safe and lets the
backend use every core for one large batch, which is where the throughput of a CPU server
comes from.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..metrics import probabilities

_STOP = object()


@dataclass
class _Item:
    batch: torch.Tensor  # float (n, 3, S, S), already normalised
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """Runs ``model`` on batches gathered from concurrent :meth:`submit` calls.

    ``on_batch(size)`` is called with the number of images of each forward pass (metrics).
    A request carrying more than ``max_batch`` images runs as a batch of its own. ``threads``:
    torch's intra-op threads for the forward passes (None: leave torch's setting).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32,
                 max_wait_ms: float = 0.0, on_batch: Callable[[int], None] | None = None,
                 multi_label: bool = False, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        self.multi_label = multi_label  # independent sigmoids instead of a softmax (resnets.multilabel)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Item | None = None  # an item taken that did not fit the last batch
        self._thread = threading.Thread(target=self._run, name="resnets-batcher", daemon=True)
        self._thread.start()

    def submit(self, batch: torch.Tensor) -> Future:
        """Queue a normalised float batch; the future resolves to its float32 probabilities."""
        item = _Item(batch)
        if not self._thread.is_alive():
            item.future.set_exception(RuntimeError("the batcher is stopped"))
        else:
            self._queue.put(item)
        return item.future

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the worker."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        while True:
            items, stop = self._gather()
            if items:
                self._infer(items)
            if stop:
                return

    def _gather(self) -> tuple[list[_Item], bool]:
        """The next batch's items (at least one unless stopping), and whether to stop after it:
        what is queued now, and with a timer what arrives until it runs out."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return [], True
        items, count = [first], len(first.batch)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return items, True
            if count + len(item.batch) > self.max_batch:
                self._carry = item
                break
            items.append(item)
            count += len(item.batch)
        return items, False

    def _infer(self, items: list[_Item]) -> None:
        try:
            with torch.inference_mode():
                batch = torch.cat([item.batch for item in items]) if len(items) > 1 else items[0].batch
                probs = probabilities(self.model(batch), self.multi_label).cpu()
        except Exception as error:  # noqa: BLE001 - every waiting request learns of it
            for item in items:
                item.future.set_exception(error)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        start = 0
        for item in items:
            item.future.set_result(probs[start:start + len(item.batch)])
            start += len(item.batch)
