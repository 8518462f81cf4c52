"""Simulate one training step under a plan: every forward and backward task on its quota, in time.

A step with ``k`` micro-batches has, for every unit ``m`` and micro-batch ``i``, a forward task
``F(m, i)`` and (for units with a backward pass) a backward task ``B(m, i)``, on ``batch_size / k``
samples. The performance model gives each task two times (both times the unit's calls per step):
its *device* time at the unit's quota, and its *host* time, what the one Python thread takes to
issue its kernels (on a CPU the thread runs them: host time is the whole time).

The host issues every task in issue order (forwards of micro-batch 0, 1, ..., then backwards), one
after another: task ``t`` is issued from ``issue[t]`` (the sum of the host times before it) to
``issue[t] + host[t]``. On the device a task starts when

- it is being issued: not before ``issue[t]``;
- its inputs exist: ``F(m, i)`` after ``F(p, i)`` of every producer ``p`` of ``m``; ``B(m, i)``
  after every forward task of micro-batch ``i`` (the loss) and after ``B(c, i)`` of every consumer
  ``c`` of ``m`` that has a backward pass (gradients flow back along the graph);
- its unit's stream is free: a unit runs one task at a time, in issue order;
- its quota fits: the quotas of running tasks never add up to more than the device's SMs;

and it ends after its device time, but not before its last kernel is issued:
``end = max(start + device, issue[t] + host[t])``. So units that are bound by the launch of their
kernels gain nothing from running side by side: one thread issues them all.

A frozen unit the plan computes one step ahead (``plan.lookahead``) still runs its forward tasks
in the step (for the next step), but nobody waits for them: its outputs for this step were made
during the previous one.

Ready tasks start greedily in issue order, a later one starting first when an earlier one does not
fit. The step time is the last task's end. Memory: a forward task holds its unit's activation
memory for ``batch_size / k`` samples from its start until its backward task ends (until its own
end when there is no backward); the peak is the largest sum over time. :func:`lower_bound` is
what no schedule can beat.

Units a plan graphs (``plan.graphs``) cost the host one replay per pass (``graphcost.py``), and
their activations live in their graphs' memory pools for the whole run: they count in the peak
from the start (``graphcost.pool_bytes``), not per task.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_mosaic.graphcost import graphed, pool_bytes

if TYPE_CHECKING:
    from lightning_mosaic.graph import ModuleGraph
    from lightning_mosaic.perfmodel import CostModel
    from lightning_mosaic.plan import Plan

_EPS = 1e-12


@dataclass
class Task:
    """One pass of one unit on one micro-batch, placed in time (issued by the host, run on the device)."""

    module: str
    pass_: str
    micro_batch: int
    quota: int
    start: float
    end: float
    memory_bytes: int = 0
    issued: float = 0.0  # when the host began issuing it
    issued_until: float = 0.0  # when its last kernel was issued


@dataclass
class Timeline:
    """One simulated step: its tasks, step time, peak activation memory and the host's busy time."""

    tasks: list[Task]
    step_s: float
    peak_bytes: int
    sm_count: int
    micro_batches: int
    batch_size: int
    label: str = ""
    notes: list[str] = field(default_factory=list)
    host_s: float = 0.0  # the host thread's time issuing every task
    graphs: list[str] = field(default_factory=list)  # units replaying CUDA graphs

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(t.module for t in self.tasks))

    def busy(self, module: str) -> float:
        """Seconds ``module``'s stream is running a task."""
        return sum(t.end - t.start for t in self.tasks if t.module == module)

    def describe(self) -> str:
        lines = [
            f"timeline{' ' + self.label if self.label else ''}: step {self.step_s * 1e3:.3f} ms,"
            f" {self.micro_batches} micro-batch(es) of {self.batch_size / self.micro_batches:g} samples,"
            f" peak activations {self.peak_bytes / 2**20:.1f} MiB, host busy {self.host_s * 1e3:.3f} ms"
        ]
        for module in self.modules:
            quotas = sorted({t.quota for t in self.tasks if t.module == module})
            lines.append(
                f"  {module}: {self.busy(module) * 1e3:.3f} ms busy on {'/'.join(map(str, quotas))}"
                f" of {self.sm_count} SMs"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for task in data["tasks"]:
            task["pass"] = task.pop("pass_")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        data = dict(data)
        data["tasks"] = [
            Task(pass_=t["pass"], **{k: v for k, v in t.items() if k != "pass"}) for t in data["tasks"]
        ]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------- the task graph


@dataclass
class _Tasks:
    """The task graph of one step (without times), in issue order."""

    keys: list[tuple[str, str, int]]  # (module, pass, micro-batch)
    deps: list[list[int]]
    successors: list[list[int]]
    indegree: list[int]  # len(deps) of each task
    roots: list[int]  # tasks without dependencies, in issue order
    release: list[int]  # a forward task: the task whose end frees its activations (itself if no backward)


def _tasks(
    graph: ModuleGraph, backward: Mapping[str, bool], micro_batches: int, ahead: frozenset[str] = frozenset()
) -> _Tasks:
    """The tasks and their dependencies; units in ``ahead`` (one step ahead) gate nobody this step.

    A unit with ``graph.effects`` runs alone: its forward waits for every forward issued before it,
    and every forward issued after it waits for it (the engine joins before it and runs it inline).
    """
    order = graph.topological_order()
    alone = set(graph.effects)
    has_backward = {m: backward.get(m, True) for m in order}
    keys: list[tuple[str, str, int]] = [(m, "forward", i) for i in range(micro_batches) for m in order]
    keys += [(m, "backward", i) for i in range(micro_batches) for m in reversed(order) if has_backward[m]]
    index = {key: n for n, key in enumerate(keys)}
    deps: list[list[int]] = []
    last: dict[str, int] = {}
    barrier: int | None = None  # the last forward of a unit that runs alone
    for n, (m, pass_, i) in enumerate(keys):
        if pass_ == "forward":
            need = [index[(p, "forward", i)] for p in graph.inputs[m] if p not in ahead]
            if m in alone:
                need = list(range(n))  # every forward issued before (forwards come first in issue order)
                barrier = n
            elif barrier is not None:
                need.append(barrier)
        else:
            need = [index[(x, "forward", i)] for x in order if x not in ahead]
            need += [index[(c, "backward", i)] for c in graph.consumers(m) if has_backward[c]]
        if m in last:
            need.append(last[m])
        last[m] = n
        deps.append(need)
    successors: list[list[int]] = [[] for _ in keys]
    for task, need in enumerate(deps):
        for dep in need:
            successors[dep].append(task)
    release = [index.get((m, "backward", i), n) if p == "forward" else -1 for n, (m, p, i) in enumerate(keys)]
    indegree = [len(need) for need in deps]
    roots = [t for t, count in enumerate(indegree) if count == 0]
    return _Tasks(keys, deps, successors, indegree, roots, release)


def _schedule(
    spec: _Tasks,
    device: Sequence[float],
    host: Sequence[float],
    quota: Sequence[int],
    capacity: int,
    limit: float = math.inf,
) -> tuple[list[float], list[float], list[float]] | None:
    """Start, end and issue times of every task (see the module docstring); None once past ``limit``.

    Written for speed (the planner simulates thousands of candidates): plain lists, heaps, locals.
    """
    n = len(device)
    issue = [0.0] * n
    clock = 0.0
    for t in range(n):
        issue[t] = clock
        clock += host[t]
    successors = spec.successors
    waiting = list(spec.indegree)
    ready_at = issue[:]
    start, end = [0.0] * n, [0.0] * n
    gated = [(issue[t], t) for t in spec.roots]  # inputs ready, not yet issued (a heap: issue ascends)
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


def _peak(spec: _Tasks, start: Sequence[float], end: Sequence[float], held: Sequence[int]) -> int:
    """The largest sum of activations held at once (frees before allocations at a tie)."""
    events: list[tuple[float, int]] = []
    for t, release in enumerate(spec.release):
        if release >= 0 and held[t]:
            events.append((start[t], held[t]))
            events.append((end[release], -held[t]))
    events.sort()
    peak = level = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


# ---------------------------------------------------------------------- public


def check_inputs(graph: ModuleGraph, perf_model: CostModel, batch_size: int) -> None:
    """``ValueError`` unless ``perf_model`` knows each unit ``graph`` calls and ``batch_size`` is positive."""
    missing = [m for m in graph.called if m not in perf_model.modules]
    if missing:
        raise ValueError(
            f"the performance model has no data for modules {missing}; it has {perf_model.modules}"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive whole number of samples")


def _check(graph: ModuleGraph, perf_model: CostModel, plan: Plan, batch_size: int) -> None:
    plan.check_graph(graph)
    check_inputs(graph, perf_model, batch_size)
    too_big = {
        m: q for phase in plan.phases for m, q in phase.quotas.items() if q and q > perf_model.capacity
    }
    if too_big:
        raise ValueError(f"quotas {too_big} exceed the device's {perf_model.capacity} SMs")


def task_times(
    perf_model: CostModel, spec: _Tasks, quotas: Mapping[str, int], size: float
) -> tuple[list[float], list[float]]:
    """Device and host seconds of every task of ``spec`` on ``size`` samples under ``quotas``."""
    device, host = [], []
    for m, p, _ in spec.keys:
        calls = perf_model.calls.get(m, 1)
        device.append(perf_model.predict(m, p, size, quotas[m]) * calls)
        host.append(perf_model.predict_host(m, p, size, quotas[m]) * calls)
    return device, host


def simulate(graph: ModuleGraph, perf_model: CostModel, plan: Plan, batch_size: int) -> Timeline:
    """Place every task of one step under ``plan`` in time; see the module docstring."""
    _check(graph, perf_model, plan, batch_size)
    graph = graph.subgraph(graph.called)  # a unit no step calls has no task
    graphs = [m for m in plan.graphs if m in graph.modules]
    perf_model = graphed(perf_model, graphs)
    capacity = perf_model.capacity
    k = plan.micro_batches
    spec = _tasks(graph, perf_model.backward, k, frozenset(plan.lookahead))
    quotas = {m: (q or capacity) for phase in plan.phases for m, q in phase.quotas.items()}
    size = batch_size / k
    device, host = task_times(perf_model, spec, quotas, size)
    per_task_quota = [quotas[m] for m, _, _ in spec.keys]
    placed = _schedule(spec, device, host, per_task_quota, capacity)
    assert placed is not None  # no limit given
    start, end, issue = placed
    memory = {m: 0 if m in graphs else perf_model.memory(m, size) for m in graph.modules}
    held = [memory[m] if p == "forward" else 0 for m, p, _ in spec.keys]
    pools = pool_bytes(perf_model, graphs, batch_size, k)
    tasks = [
        Task(m, p, i, quotas[m], start[t], end[t], held[t], issue[t], issue[t] + host[t])
        for t, (m, p, i) in enumerate(spec.keys)
    ]
    return Timeline(
        tasks=tasks,
        step_s=max(end, default=0.0),
        peak_bytes=_peak(spec, start, end, held) + pools,
        sm_count=capacity,
        micro_batches=k,
        batch_size=batch_size,
        label=plan.method,
        notes=[f"CUDA graphs (one replay per pass): {', '.join(graphs)}"] if graphs else [],
        host_s=sum(host),
        graphs=list(graphs),
    )


def lower_bound(
    graph: ModuleGraph,
    perf_model: CostModel,
    batch_size: int,
    micro_batches: int,
    quotas: list[int],
    ahead: frozenset[str] | list[str] = frozenset(),
) -> float:
    """No schedule of the step with ``micro_batches`` can be shorter than this.

    The largest of the longest chain of dependent tasks (stream order included), each at its
    fastest — on the whole device —, the least SM-seconds of all tasks over ``quotas`` spread over
    every SM, and the host's time issuing every task. Assumes times do not grow with the quota.
    Units in ``ahead`` run one step ahead.
    """
    capacity = perf_model.capacity
    spec = _tasks(graph.subgraph(graph.called), perf_model.backward, micro_batches, frozenset(ahead))
    size = batch_size / micro_batches
    fastest, work, host = [], 0.0, 0.0
    for m, p, _ in spec.keys:
        calls = perf_model.calls.get(m, 1)
        fastest.append(perf_model.predict(m, p, size, capacity) * calls)
        work += min(q * perf_model.predict(m, p, size, q) for q in quotas) * calls
        host += perf_model.predict_host(m, p, size, capacity) * calls
    finish: list[float] = []
    for task, need in enumerate(spec.deps):  # issue order is a topological order of the tasks
        finish.append(max((finish[d] for d in need), default=0.0) + fastest[task])
    return max(max(finish, default=0.0), work / capacity, host)
