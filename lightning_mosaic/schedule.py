"""A plan as a schedule: the list of actions one training step runs, and the order between them.

An :class:`Action` is one pass (``"forward"`` or ``"backward"``) of one unit on one micro-batch, in
the phase and under the quota the plan gives that unit. :func:`plan_actions` expands a plan into
the step's actions in issue order (the forwards of micro-batch 0, 1, ..., in the graph's
topological order, then the backwards, each micro-batch's in reverse); :class:`TaskGraph` says
which action waits for which. The simulator times these actions (``simulator.py``), the timeline
draws them (``viz.py``), and the engine's recorded launches are checked against them
(``tests/test_schedule.py``), so the three cannot drift apart, as in
``torch.distributed.pipelining``, where one action list drives both the runtime and its simulation.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_mosaic.graph import ModuleGraph
    from lightning_mosaic.plan import Plan

FORWARD, BACKWARD = "forward", "backward"
_EPS = 1e-12


@dataclass(frozen=True)
class Action:
    """One pass of one unit on one micro-batch, in a phase of the plan, under a quota (None: the
    whole device)."""

    unit: str
    pass_: str
    micro_batch: int
    phase: int = 0
    quota: int | None = None

    def describe(self) -> str:
        where = f"{self.quota} SMs" if self.quota is not None else "whole device"
        return f"{self.pass_[0].upper()}({self.unit}, {self.micro_batch}) phase {self.phase}, {where}"


def actions(
    graph: ModuleGraph,
    micro_batches: int,
    backward: Mapping[str, bool] | None = None,
    quotas: Mapping[str, int | None] | None = None,
    phases: Mapping[str, int] | None = None,
) -> list[Action]:
    """The actions of one step in issue order: every forward, micro-batch by micro-batch in
    topological order, then every backward (units with ``backward[unit]`` False have none)."""
    backward, quotas, phases = backward or {}, quotas or {}, phases or {}
    order = graph.topological_order()

    def action(unit: str, pass_: str, i: int) -> Action:
        return Action(unit, pass_, i, phases.get(unit, 0), quotas.get(unit))

    out = [action(m, FORWARD, i) for i in range(micro_batches) for m in order]
    out += [
        action(m, BACKWARD, i) for i in range(micro_batches) for m in reversed(order) if backward.get(m, True)
    ]
    return out


def plan_actions(plan: Plan, graph: ModuleGraph, backward: Mapping[str, bool] | None = None) -> list[Action]:
    """``plan`` expanded into the actions of one step on ``graph`` (the units a step calls)."""
    quotas = {m: q for phase in plan.phases for m, q in phase.quotas.items()}
    phases = {m: n for n, phase in enumerate(plan.phases) for m in phase.quotas}
    return actions(graph, plan.micro_batches, backward, quotas, phases)


@dataclass
class TaskGraph:
    """Which action of a step waits for which (without times); ``actions`` in issue order."""

    actions: list[Action]
    deps: list[list[int]]
    successors: list[list[int]]
    indegree: list[int]  # len(deps) of each action
    roots: list[int]  # actions without dependencies, in issue order
    release: list[int]  # a forward: the action whose end frees its activations (itself without backward)

    @classmethod
    def of(cls, graph: ModuleGraph, steps: Sequence[Action], ahead: Iterable[str] = ()) -> TaskGraph:
        """The order between ``steps``; units in ``ahead`` (one step ahead) gate nobody this step.

        ``F(m, i)`` waits for ``F(p, i)`` of every producer ``p`` of ``m``; ``B(m, i)`` for every
        forward of micro-batch ``i`` (the loss) and ``B(c, i)`` of every consumer ``c`` with a
        backward; a unit runs one action at a time, in issue order. A unit with ``graph.effects``
        runs alone: its forward waits for every forward issued before it, and every forward issued
        after it waits for it (the engine joins before it and runs it inline).
        """
        ahead = frozenset(ahead)
        alone = set(graph.effects)
        index = {(a.unit, a.pass_, a.micro_batch): n for n, a in enumerate(steps)}
        has_backward = {a.unit for a in steps if a.pass_ == BACKWARD}
        order = graph.topological_order()
        deps: list[list[int]] = []
        last: dict[str, int] = {}
        barrier: int | None = None  # the last forward of a unit that runs alone
        for n, a in enumerate(steps):
            m, i = a.unit, a.micro_batch
            if a.pass_ == FORWARD:
                need = [index[(p, FORWARD, i)] for p in graph.inputs[m] if p not in ahead]
                if m in alone:
                    need = list(range(n))  # every forward issued before (forwards come first)
                    barrier = n
                elif barrier is not None:
                    need.append(barrier)
            else:
                need = [index[(x, FORWARD, i)] for x in order if x not in ahead]
                need += [index[(c, BACKWARD, i)] for c in graph.consumers(m) if c in has_backward]
            if m in last:
                need.append(last[m])
            last[m] = n
            deps.append(need)
        successors: list[list[int]] = [[] for _ in steps]
        for task, need in enumerate(deps):
            for dep in need:
                successors[dep].append(task)
        release = [
            index.get((a.unit, BACKWARD, a.micro_batch), n) if a.pass_ == FORWARD else -1
            for n, a in enumerate(steps)
        ]
        indegree = [len(need) for need in deps]
        roots = [t for t, count in enumerate(indegree) if count == 0]
        return cls(list(steps), deps, successors, indegree, roots, release)


def place(
    tasks: TaskGraph,
    device: Sequence[float],
    host: Sequence[float],
    quota: Sequence[int],
    capacity: int,
    limit: float = math.inf,
) -> tuple[list[float], list[float], list[float]] | None:
    """Start, end and issue times of every action (see ``simulator.py``); None once past ``limit``.

    Written for speed (the planner simulates thousands of candidates): plain lists, heaps, locals.
    """
    n = len(device)
    issue = [0.0] * n
    clock = 0.0
    for t in range(n):
        issue[t] = clock
        clock += host[t]
    successors = tasks.successors
    waiting = list(tasks.indegree)
    ready_at = issue[:]
    start, end = [0.0] * n, [0.0] * n
    gated = [(issue[t], t) for t in tasks.roots]  # inputs ready, not yet issued (a heap: issue ascends)
    ready: list[int] = []  # startable
    running: list[tuple[float, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    free, now, inf = capacity, 0.0, math.inf
    while gated or ready or running:
        while gated and gated[0][0] <= now + _EPS:
            ready.append(pop(gated)[1])
        if ready:
            ready.sort()  # issue order first; a later task starts first when an earlier one does not fit
            blocked = []
            for t in ready:
                q = quota[t]
                if q <= free:
                    free -= q
                    start[t] = now
                    finish = now + device[t]
                    issued = issue[t] + host[t]
                    end[t] = finish if finish > issued else issued
                    push(running, (end[t], t))
                else:
                    blocked.append(t)
            ready = blocked
        next_end = running[0][0] if running else inf
        next_gate = gated[0][0] if gated else inf
        now = next_end if next_end < next_gate else next_gate
        if now == inf:
            break  # nothing can start: only a quota above the device's capacity does this
        if now > limit:
            return None
        while running and running[0][0] <= now + _EPS:
            done, t = pop(running)
            free += quota[t]
            for succ in successors[t]:
                waiting[succ] -= 1
                if ready_at[succ] < done:
                    ready_at[succ] = done
                if waiting[succ] == 0:
                    push(gated, (ready_at[succ], succ))
    return start, end, issue


def peak_bytes(tasks: TaskGraph, start: Sequence[float], end: Sequence[float], held: Sequence[int]) -> int:
    """The largest sum of activations held at once (frees before allocations at a tie)."""
    events: list[tuple[float, int]] = []
    for t, release in enumerate(tasks.release):
        if release >= 0 and held[t]:
            events.append((start[t], held[t]))
            events.append((end[release], -held[t]))
    events.sort()
    peak = level = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak
