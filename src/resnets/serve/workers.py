"""The decode threads of ``resnets serve``, supervised: a thread that dies is started again.

The standard library's ``ThreadPoolExecutor`` never replaces a worker thread that ends: after a
failure outside a task (a ``MemoryError`` between tasks, a ``SystemExit`` raised by a task) it
keeps counting the dead thread as one of its workers, and once all are gone every later task waits
forever while the server still says it is ready (issue 24). :class:`SupervisedPool` is the same
executor with its threads under watch: :attr:`alive` says whether every thread runs (the server's
readiness), and :meth:`ensure_running` (called on every submit and by the server's watchdog) starts
the missing ones. Tasks still queued when it shuts down are cancelled, not run.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable

_STOP = None


class SupervisedPool(Executor):
    """``workers`` threads running submitted calls; failed threads are restarted, never lost."""

    def __init__(self, workers: int, name: str = "resnets-decode") -> None:
        self.name = name
        self.restarts = 0  # threads started again after one died
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread | None] = [None] * max(1, workers)
        self._lock = threading.Lock()
        self._closed = False
        self.ensure_running()

    @property
    def alive(self) -> bool:
        """Whether every worker thread runs (and the pool takes work)."""
        return not self._closed and all(t is not None and t.is_alive() for t in self._threads)

    def ensure_running(self) -> int:
        """Start the threads that are missing or dead; how many were started again."""
        restarted = 0
        with self._lock:
            if self._closed:
                return 0
            for i, thread in enumerate(self._threads):
                if thread is None or not thread.is_alive():
                    restarted += thread is not None
                    self._threads[i] = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
                    self._threads[i].start()
            self.restarts += restarted
        return restarted

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        self.ensure_running()
        future: Future = Future()
        with self._lock:  # never after shutdown's stop markers: such a task would wait forever
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float = 30.0) -> None:
        """Stop taking work; ``cancel_futures``: cancel what is queued instead of running it."""
        with self._lock:  # closed, and no submit can put a task behind the stop markers
            self._closed = True
            threads = [t for t in self._threads if t is not None]
        if cancel_futures:
            while True:
                try:
                    task = self._queue.get_nowait()
                except queue.Empty:
                    break
                if task is not _STOP:
                    task[0].cancel()
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                thread.join(timeout)

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is _STOP:
                return
            future, fn, args, kwargs = task
            del task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - the caller learns of every failure
                future.set_exception(error)
                if not isinstance(error, Exception):
                    raise  # SystemExit and the like end this thread; the supervisor starts another
            else:
                future.set_result(result)
            del future, fn, args, kwargs
