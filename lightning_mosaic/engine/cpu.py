"""The ``cpu`` backend: quotas as intra-op threads, in explicit parallel regions.

A CPU has no asynchronous streams, so a unit's call cannot return before its outputs exist: during
training the units run inline. What the CPU can do is run several *known* pieces of work at once,
each in a worker thread with its own intra-op thread count — the quota. :meth:`run_parallel` does
that; the profiler uses it to measure a unit under a thread quota next to others.

``torch.set_num_threads`` called in a worker thread sets that thread's OpenMP/MKL thread count,
and also the default that threads started later pick up; the region restores the caller's count
as that default when it ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_mosaic._logging import get_logger
from lightning_mosaic.engine.backends import InlineBackend

log = get_logger(__name__)


@dataclass
class RegionResult:
    """What one task of a parallel region returned, and when it ran (``time.perf_counter``)."""

    value: Any
    start: float
    end: float
    threads: int


class CpuThreadBackend(InlineBackend):
    """Inline units; :meth:`run_parallel` runs tasks side by side under thread quotas."""

    name = "cpu"
    summary = "units inline; explicit parallel regions in worker threads under thread quotas"

    def __init__(self, cores: int | None = None) -> None:
        super().__init__()
        self.cores = cores or os.cpu_count() or 1

    def _quotas_inline(self, given: dict[str, int], device: torch.device) -> None:
        log.info(
            f"thread quotas {given}: the profiler measured the units under such quotas side by side;"
            f" in training backend 'cpu' runs them one after another on {device} (a rehearsal of the GPU"
            " pipeline)"
        )

    def run_parallel(self, tasks: Mapping[str, tuple[Callable[[], Any], int]]) -> dict[str, RegionResult]:
        """Run ``{name: (fn, threads)}`` at once, each in a worker thread with ``threads`` intra-op threads.

        The tasks start together (a barrier), see the caller's grad mode, and the first exception is
        re-raised naming its task. Quotas must be whole numbers from 1 to the number of cores.
        """
        if not tasks:
            raise ValueError("run_parallel needs at least one task")
        for name, (fn, threads) in tasks.items():
            if not callable(fn):
                raise TypeError(f"task {name!r}: {fn!r} is not callable")
            if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= self.cores:
                raise ValueError(
                    f"task {name!r}: thread quota {threads!r} is not between 1 and {self.cores} cores"
                )
        caller_threads = torch.get_num_threads()
        grad = torch.is_grad_enabled()
        barrier = threading.Barrier(len(tasks))
        results: dict[str, RegionResult] = {}
        errors: dict[str, BaseException] = {}

        def work(name: str, fn: Callable[[], Any], threads: int) -> None:
            try:
                torch.set_num_threads(threads)
                barrier.wait()
                with torch.set_grad_enabled(grad):
                    start = time.perf_counter()
                    value = fn()
                    results[name] = RegionResult(value, start, time.perf_counter(), torch.get_num_threads())
            except BaseException as err:
                errors[name] = err
                barrier.abort()

        workers = [
            threading.Thread(target=work, args=(name, fn, threads), name=f"mosaic-{name}", daemon=True)
            for name, (fn, threads) in tasks.items()
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        torch.set_num_threads(caller_threads)
        for name, err in errors.items():
            if not isinstance(err, threading.BrokenBarrierError):
                raise RuntimeError(f"parallel task {name!r} failed: {err}") from err
        return {name: results[name] for name in tasks}
