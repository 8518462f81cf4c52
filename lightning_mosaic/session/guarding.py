"""The guard of one run: time the temporal and the planned steps, and say when a plan is to be judged.

:class:`PlanGuard` wraps :class:`~lightning_mosaic.guard.Guard` (the step times by kind) with the
state of the one plan under watch: a plan made from a profile is watched from the step it applies,
its first step (which sets up its streams) is not timed as a plan step, and it is judged once the
guard has timed enough plan steps. The judgement itself is :func:`~lightning_mosaic.session.decisions.judged`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from lightning_mosaic.clock import Marks
from lightning_mosaic.guard import OTHER, PLAN, TEMPORAL, Guard, Verdict


class PlanGuard:
    """Step timing for the plan under watch; ``watching`` while a plan awaits its verdict."""

    def __init__(self, clock: Marks, steps: int) -> None:
        self.guard = Guard(clock, steps)
        self.watching = False  # a plan made from a profile awaits the guard's verdict
        self._settled = False  # the first step under that plan is over

    @property
    def tolerance(self) -> float:
        return self.guard.tolerance

    def watch(self) -> None:
        """A plan made from a profile applies now: time its steps from the second on."""
        self.watching, self._settled = True, False
        self.guard.restart_plan()

    def start(self, untimed: bool, temporal: bool) -> None:
        """A step starts: ``untimed`` (traced, or recording its inputs) or, while no plan is watched,
        a ``temporal`` step (the plan from a profile is pending) or another."""
        if untimed:
            kind = OTHER
        elif self.watching:
            kind, self._settled = (PLAN if self._settled else OTHER), True
        else:
            kind = TEMPORAL if temporal else OTHER
        self.guard.start(kind)

    def end(self) -> None:
        self.guard.end()

    def due(self) -> bool:
        """Whether the plan under watch has been timed for enough steps to be judged."""
        return self.watching and self.guard.ready()

    def verdict(self, is_main: bool, broadcast: Callable[[Any], Any]) -> Verdict | None:
        """The main process's verdict on the plan under watch, on every process (None: no temporal or
        no plan step was timed); the watch ends and nothing more is timed in this run."""
        self.watching = False
        verdict = self.guard.verdict() if is_main else None
        self.guard.clear()
        data = broadcast(asdict(verdict) if verdict is not None else None)
        return Verdict(**data) if data is not None else None

    def clear(self) -> None:
        """Nothing is to be judged in this run."""
        self.watching = False
        self.guard.clear()
