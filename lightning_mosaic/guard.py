"""The guard: a plan must measure at least as fast as the temporal steps it replaces, or it is dropped.

A prediction can be wrong (a model fitted to few points, a GPU busy with something else, effects no
model sees), so mosaic times what it does. The guard keeps the step times of a run: the temporal
steps of the warmup, then the first steps under a new plan. Each step is the time from one
training step's start to the next's (what the user waits for: forward, backward, optimizer step,
logging, the next batch), marked with CUDA events on a GPU and the wall clock on a CPU. Steps that
do other work — the first of a run (traced), the captured one, the first under a new plan (streams
and partitions created) — are left out. Once ``steps`` plan steps are timed, :meth:`Guard.verdict`
compares the medians: a plan slower than temporal by more than ``tolerance`` is dropped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from lightning_mosaic.clock import Marks

TOLERANCE = 0.02  # a plan this much slower than temporal, or more, is dropped
STEPS = 5  # plan steps timed before the verdict
TEMPORAL, PLAN, OTHER = "temporal", "plan", "other"


@dataclass(frozen=True)
class Verdict:
    """Measured median step times, and whether the plan stays."""

    keep: bool
    plan_s: float
    temporal_s: float
    plan_steps: int
    temporal_steps: int

    @property
    def speedup(self) -> float:
        return self.temporal_s / self.plan_s

    def describe(self) -> str:
        return (
            f"measured step {self.plan_s * 1e3:.2f} ms under the plan vs {self.temporal_s * 1e3:.2f} ms"
            f" temporal ({self.speedup:.2f}x; medians of {self.plan_steps} and {self.temporal_steps} steps)"
        )


class Guard:
    """Step times of one run by kind (``"temporal"``, ``"plan"``, ``"other"``); see the module docstring."""

    def __init__(self, clock: Marks, steps: int = STEPS, tolerance: float = TOLERANCE) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps={steps!r} must be a whole number of steps, 1 or more")
        self.clock, self.steps, self.tolerance = clock, steps, tolerance
        self._open: tuple[str, Any] | None = None  # the step in progress: its kind and start mark
        self._steps: list[tuple[str, Any, Any]] = []  # (kind, start, end) of every finished step

    def start(self, kind: str) -> None:
        """A step of ``kind`` starts now."""
        self._open = (kind, self.clock.mark())

    def end(self) -> None:
        """The step in progress (if any) ends now; work between :meth:`end` and :meth:`start` is no step's."""
        if self._open is not None:
            self._steps.append((*self._open, self.clock.mark()))
            self._open = None

    def count(self, kind: str) -> int:
        """Finished steps of ``kind``."""
        return sum(1 for k, _, _ in self._steps if k == kind)

    def clear(self) -> None:
        """Forget every step (the marks of a long run are not kept)."""
        self._open, self._steps = None, []

    def restart_plan(self) -> None:
        """A new plan applies: the plan steps timed so far were of another one."""
        self._steps = [s if s[0] != PLAN else (OTHER, s[1], s[2]) for s in self._steps]

    def ready(self) -> bool:
        return self.count(PLAN) >= self.steps

    def verdict(self) -> Verdict | None:
        """The plan against temporal by their median step times; None without a step of either."""
        times = {TEMPORAL: [], PLAN: []}
        for kind, start, end in self._steps:
            if kind in times:
                times[kind].append(self.clock.seconds(start, end))
        if not times[TEMPORAL] or not times[PLAN]:
            return None
        plan, temporal = statistics.median(times[PLAN]), statistics.median(times[TEMPORAL])
        return Verdict(
            keep=plan <= temporal * (1 + self.tolerance),
            plan_s=plan,
            temporal_s=temporal,
            plan_steps=len(times[PLAN]),
            temporal_steps=len(times[TEMPORAL]),
        )
