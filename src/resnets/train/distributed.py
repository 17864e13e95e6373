"""Multi-process training: ``torchrun --nproc-per-node N -m resnets train ...`` works unchanged,
and ``resnets train --procs N`` starts the N processes itself (:func:`launch`).

The process group is set up from torchrun's environment variables when ``WORLD_SIZE > 1``
(gloo on CPU, nccl on CUDA); rank 0 alone logs, shows progress and writes files.

Why several processes on one CPU: a small network's convolutions (ResNet-20: 16 to 64
channels) split poorly over the threads of one process; single-threaded processes, each with
its share of the batch, scale better. On the 2-core machine the gain is modest and noisy:
ResNet-20 at a global batch of 128, two processes gave 0.95-1.2x the images/s of one process
with two threads (``benchmarks/train_step_cpu.py``, and standalone runs). Machines with more
cores than a small model's layers can use gain more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..device import resolve_device
from ..errors import ResnetsError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun describes; a single process when WORLD_SIZE is unset or 1."""
    if not in_launched_group():
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def local_device(requested: str) -> torch.device:
    """``auto`` -> this process's GPU (by LOCAL_RANK) if there is one, else the CPU."""
    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel (with SyncBatchNorm if asked) when running in several processes."""
    if not ctx.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


INTERRUPTED = 130  # a rank's exit status after a Ctrl-C (the shell's 128 + SIGINT)


class DeferredInterrupt:
    """Ctrl-C during training (a context manager around the epochs): never lost, and never in
    the middle of a checkpoint.

    In a process group a rank that stopped at once would leave the others blocked in their next
    collective, so the handler only notes the signal; the loop passes :attr:`requested` through
    the all-reduce it already does every few steps, and all ranks stop at the same step. A single
    process stops at once, as with Python's own handler, but the note stays too: a
    KeyboardInterrupt that lands in a destructor is swallowed by Python ("Exception ignored
    in ..."), and the loop's next check then stops the run instead. Inside :meth:`held` the
    signal is only noted.
    """

    def __init__(self, ctx: DistContext):
        self.active = ctx.enabled and _on_main_thread()  # a group: note only
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> "DeferredInterrupt":
        if _on_main_thread():  # signal handlers can only be set there
            self._previous = signal.signal(signal.SIGINT, self._note if self.active else self._note_and_raise)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            _restore_sigint(self._previous)
            self._installed = False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Ctrl-C noted, not raised, inside the block (a checkpoint being written), and raised
        when it ends in a single process; a group's flag waits for the next all-reduce as always.

        A KeyboardInterrupt in the middle of a checkpoint would leave the weights of one epoch
        beside the state of the one before, and no way to tell which epoch a resume continues from.
        """
        if self.active or not _on_main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._note)
        try:
            yield
        finally:
            _restore_sigint(previous)
        if self.requested:
            raise KeyboardInterrupt

    def _note(self, signum: int, frame: object) -> None:
        self.requested = True

    def _note_and_raise(self, signum: int, frame: object) -> None:
        self.requested = True
        raise KeyboardInterrupt


def _on_main_thread() -> bool:
    """Signal handlers can only be set from the main thread (not from a thread calling train())."""
    return threading.current_thread() is threading.main_thread()


def _restore_sigint(previous: Any) -> None:
    # None: the handler was not set from Python; the default one is the closest
    signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def in_launched_group() -> bool:
    """Whether this process is one rank of a group torchrun (or :func:`launch`) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(worker: Callable[..., Any], procs: int, args: tuple = (), threads: int | None = None) -> Any:
    """Run ``worker(*args)`` in ``procs`` new processes on this machine, as the ranks of one
    process group (what torchrun would do), and return rank 0's result.

    Each process gets ``threads`` intra-op threads (default: this process's share of its
    threads). A :class:`ResnetsError` in any rank comes back as one ResnetsError here; the other
    ranks are stopped. Tensors in ``args`` reach the ranks through shared memory, not copies.
    """
    if in_launched_group():
        raise ResnetsError("--procs starts its own processes: drop it when running under torchrun")
    threads = threads or max(1, torch.get_num_threads() // procs)
    # torch logs a warning for each rank it stops after another failed; the failure is reported below
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    outcome = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_rank_main, args=(procs, free_port(), threads, outcome, worker, args),
                                 nprocs=procs, join=False, start_method="spawn")
    results: list[tuple[str, Any]] = []
    try:
        while not context.join(timeout=0.5):
            _drain(outcome, results)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as failure:
        _drain(outcome, results)
        errors = [value for kind, value in results if kind == "error"]
        if errors:
            raise ResnetsError(errors[0]) from None
        if getattr(failure, "exit_code", None) == INTERRUPTED:  # the ranks stopped on a Ctrl-C
            _stop(context.processes)
            raise _interrupted(outcome, results) from None
        raise RuntimeError(f"a training process failed: {failure}") from None
    except KeyboardInterrupt:  # pass it on (a terminal sends it to all), let rank 0 save its weights
        _stop(context.processes)
        raise _interrupted(outcome, results) from None
    _drain(outcome, results)
    return next(value for kind, value in results if kind == "result")


def _stop(processes: list, grace_s: float = 60.0) -> None:
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(timeout=grace_s)
        if process.is_alive():
            process.terminate()


def _drain(queue: Any, into: list) -> None:
    while not queue.empty():
        into.append(queue.get())


def _interrupted(queue: Any, results: list) -> KeyboardInterrupt:
    """The KeyboardInterrupt to raise in the launcher, with rank 0's account of what it saved."""
    _drain(queue, results)
    notes = [value for kind, value in results if kind == "interrupted"]
    return KeyboardInterrupt(*notes[:1])


def _rank_main(rank: int, procs: int, port: int, threads: int, outcome: Any, worker: Callable[..., Any],
               args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(procs),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(procs), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    try:
        result = worker(*args)
    except ResnetsError as error:
        outcome.put(("error", str(error)))
        raise SystemExit(2) from None
    except KeyboardInterrupt as interrupt:
        if str(interrupt):  # what rank 0 saved, for the launcher to report
            outcome.put(("interrupted", str(interrupt)))
        raise SystemExit(INTERRUPTED) from None
    if rank == 0:
        outcome.put(("result", result))
