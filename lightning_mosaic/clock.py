"""Time marks on the CPU (``perf_counter``) or on the current CUDA stream (events)."""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch


class Marks(Protocol):
    """What times a stretch of work: ``mark()`` now, ``seconds(a, b)`` between two marks."""

    def mark(self) -> Any: ...

    def seconds(self, a: Any, b: Any) -> float: ...


class Clock:
    """Marks on the current CUDA stream (events: the device's time, read after a sync), or the CPU's
    ``perf_counter`` (``cuda=False``)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a: Any, b: Any) -> float:
        if not self.cuda:
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1e3
