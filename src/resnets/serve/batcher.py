"""Dynamic batching: requests that arrive close together run through the model as one batch.

Request handlers decode their images in a thread pool (in parallel) and hand the normalised
float batch to :meth:`DynamicBatcher.submit`. One worker thread owns the model. When it is idle,
the first request runs at once (no timer): batching costs a lone request nothing. While a batch
runs, new requests queue; when it ends, the worker takes everything queued (up to ``max_batch``
images) as the next batch. Under load batches grow by themselves to what arrives during one
forward pass, the throughput a timer would buy, without the timer's wait when the server is quiet.
``max_wait_ms`` > 0 adds the timer back: the first request of a batch then waits up to that long
for others to share it. A request of more than ``max_batch`` images is split into pieces of at
most ``max_batch``, answered together: the model never sees a larger batch.

The worker is supervised (issue 24): a failure of a batch, whatever it is, is answered to the
requests of that batch and the worker goes on; a failure that ends its thread anyway (a
``SystemExit`` from the model) is answered too, :attr:`DynamicBatcher.alive` turns false (the
server's readiness), and the next :meth:`~DynamicBatcher.submit` or the server's watchdog
(:meth:`~DynamicBatcher.ensure_running`) starts a new thread, which takes over the queue.

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
    A request carrying more than ``max_batch`` images is split into batches of ``max_batch``.
    ``threads``: torch's intra-op threads for the forward passes (None: leave torch's setting).
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
        self.restarts = 0  # worker threads started again after one died
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Item | None = None  # an item taken that did not fit the last batch
        self._lock = threading.Lock()
        self._closed = False
        self._thread = self._start()

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (false while a dead one waits to be started again)."""
        return not self._closed and self._thread.is_alive()

    def ensure_running(self) -> bool:
        """Start a new worker thread if the last one died; whether one was started."""
        with self._lock:
            if self._closed or self._thread.is_alive():
                return False
            self._thread = self._start()
            self.restarts += 1
            return True

    def submit(self, batch: torch.Tensor) -> Future:
        """Queue a normalised float batch of at most ``max_batch`` images (a request's larger batch
        is split by :meth:`resnets.serve.server.Server.run_batches`, which prepares one piece while
        the last runs); the future resolves to its float32 probabilities."""
        if len(batch) > self.max_batch:
            raise ValueError(f"a batch of {len(batch)} is over max_batch {self.max_batch}: submit it in pieces")
        item = _Item(batch)
        self.ensure_running()
        with self._lock:  # never behind close's stop marker, where nothing would answer it
            if self._closed:
                item.future.set_exception(RuntimeError("the batcher is stopped"))
            else:
                self._queue.put(item)
        return item.future

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop the worker."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        thread.join(timeout)

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="resnets-batcher", daemon=True)
        thread.start()
        return thread

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
        if not first.future.set_running_or_notify_cancel():  # its request went away: skip it
            return [], False
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
            if not item.future.set_running_or_notify_cancel():
                continue
            items.append(item)
            count += len(item.batch)
        return items, False

    def _infer(self, items: list[_Item]) -> None:
        """Run one batch and answer its requests; any failure is answered to each of them (one
        that is not an ``Exception`` then ends this thread, and the supervisor starts another)."""
        try:
            with torch.inference_mode():
                batch = torch.cat([item.batch for item in items]) if len(items) > 1 else items[0].batch
                probs = probabilities(self.model(batch), self.multi_label).cpu()
            if self.on_batch is not None:
                self.on_batch(len(batch))
        except BaseException as error:  # noqa: BLE001 - every waiting request learns of it
            answer = error if isinstance(error, Exception) else RuntimeError(
                f"the model's worker thread failed ({type(error).__name__}); it is being restarted")
            for item in items:
                item.future.set_exception(answer)
            if not isinstance(error, Exception):
                raise
            return
        start = 0
        for item in items:
            item.future.set_result(probs[start:start + len(item.batch)])
            start += len(item.batch)
