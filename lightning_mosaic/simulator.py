"""Simulate one training step under a plan: every forward and backward task on its quota, in time.

A step with ``k`` micro-batches has, for every unit ``m`` and micro-batch ``i``, a forward task
``F(m, i)`` and (for units with a backward pass) a backward task ``B(m, i)``, on ``batch_size / k``
samples, lasting what the performance model predicts at the unit's quota (times its calls per
step). A task starts when

- its inputs exist: ``F(m, i)`` after ``F(p, i)`` of every producer ``p`` of ``m``; ``B(m, i)``
  after every forward task of micro-batch ``i`` (the loss) and after ``B(c, i)`` of every consumer
  ``c`` of ``m`` that has a backward pass (gradients flow back along the graph);
- its unit's stream is free: a unit runs one task at a time, in issue order (all its forwards in
  micro-batch order, then its backwards in micro-batch order);
- its quota fits: the quotas of running tasks never add up to more than the device's SMs.

A frozen unit the plan computes one step ahead (``plan.lookahead``) still runs its forward tasks
in the step (for the next step), but nobody waits for them: its outputs for this step were made
during the previous one.

Ready tasks start greedily in issue order (forwards of micro-batch 0, 1, ..., then backwards),
a later one starting first when an earlier one does not fit. The step time is the last task's end.
Memory: a forward task holds its unit's activation memory for ``batch_size / k`` samples from its
start until its backward task ends (until its own end when there is no backward); the peak is the
largest sum over time. :func:`lower_bound` is what no schedule can beat.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_mosaic.graph import ModuleGraph
    from lightning_mosaic.perfmodel import CostModel
    from lightning_mosaic.plan import Plan

_EPS = 1e-12


@dataclass
class Task:
    """One pass of one unit on one micro-batch, placed in time."""

    module: str
    pass_: str
    micro_batch: int
    quota: int
    start: float
    end: float
    memory_bytes: int = 0


@dataclass
class Timeline:
    """One simulated step: its tasks, step time and peak activation memory."""

    tasks: list[Task]
    step_s: float
    peak_bytes: int
    sm_count: int
    micro_batches: int
    batch_size: int
    label: str = ""
    notes: list[str] = field(default_factory=list)

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
            f" peak activations {self.peak_bytes / 2**20:.1f} MiB"
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


@dataclass
class _Tasks:
    """The task graph of one step (without times)."""

    keys: list[tuple[str, str, int]]  # (module, pass, micro-batch) in issue order
    deps: list[list[int]]


def _tasks(
    graph: ModuleGraph, perf_model: CostModel, micro_batches: int, ahead: frozenset[str] = frozenset()
) -> _Tasks:
    """The tasks and their dependencies; units in ``ahead`` (one step ahead) gate nobody this step."""
    order = graph.topological_order()
    backward = {m: perf_model.backward.get(m, True) for m in order}
    keys: list[tuple[str, str, int]] = [(m, "forward", i) for i in range(micro_batches) for m in order]
    keys += [(m, "backward", i) for i in range(micro_batches) for m in reversed(order) if backward[m]]
    index = {key: n for n, key in enumerate(keys)}
    deps: list[list[int]] = []
    last: dict[str, int] = {}
    for n, (m, pass_, i) in enumerate(keys):
        if pass_ == "forward":
            need = [index[(p, "forward", i)] for p in graph.inputs[m] if p not in ahead]
        else:
            need = [index[(x, "forward", i)] for x in order if x not in ahead]
            need += [index[(c, "backward", i)] for c in graph.consumers(m) if backward[c]]
        if m in last:
            need.append(last[m])
        last[m] = n
        deps.append(need)
    return _Tasks(keys, deps)


def check_inputs(graph: ModuleGraph, perf_model: CostModel, batch_size: int) -> None:
    """``ValueError`` unless ``perf_model`` knows every unit of ``graph`` and ``batch_size`` is positive."""
    missing = [m for m in graph.modules if m not in perf_model.modules]
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


def simulate(graph: ModuleGraph, perf_model: CostModel, plan: Plan, batch_size: int) -> Timeline:
    """Place every task of one step under ``plan`` in time; see the module docstring."""
    _check(graph, perf_model, plan, batch_size)
    spec = _tasks(graph, perf_model, plan.micro_batches, frozenset(plan.lookahead))
    return _simulate(graph, perf_model, plan, batch_size, spec)


def _simulate(
    graph: ModuleGraph, perf_model: CostModel, plan: Plan, batch_size: int, spec: _Tasks
) -> Timeline:
    """:func:`simulate` without the checks, on a task graph built once (the planner simulates many plans)."""
    capacity = perf_model.capacity
    k = plan.micro_batches
    quota = {m: (q or capacity) for phase in plan.phases for m, q in phase.quotas.items()}
    n = len(spec.keys)
    size = batch_size / k
    duration = [
        perf_model.predict(m, p, size, quota[m]) * perf_model.calls.get(m, 1) for m, p, _ in spec.keys
    ]
    memory = {m: perf_model.memory(m, size) for m in graph.modules}
    successors: list[list[int]] = [[] for _ in range(n)]
    waiting = [len(d) for d in spec.deps]
    for task, need in enumerate(spec.deps):
        for dep in need:
            successors[dep].append(task)
    ready = [t for t in range(n) if waiting[t] == 0]
    running: list[tuple[float, int]] = []
    free, now = capacity, 0.0
    start, end = [0.0] * n, [0.0] * n
    while ready or running:
        ready.sort()
        still = []
        for task in ready:
            q = quota[spec.keys[task][0]]
            if q <= free:
                free -= q
                start[task], end[task] = now, now + duration[task]
                heapq.heappush(running, (end[task], task))
            else:
                still.append(task)
        ready = still
        now, task = heapq.heappop(running)
        finished = [task]
        while running and running[0][0] <= now + _EPS:
            finished.append(heapq.heappop(running)[1])
        for task in finished:
            free += quota[spec.keys[task][0]]
            for succ in successors[task]:
                waiting[succ] -= 1
                if waiting[succ] == 0:
                    ready.append(succ)
    tasks = []
    events: list[tuple[float, int]] = []
    release = {(m, i): end[t] for t, (m, p, i) in enumerate(spec.keys) if p == "backward"}
    for t, (m, p, i) in enumerate(spec.keys):
        held = memory[m] if p == "forward" else 0
        tasks.append(Task(m, p, i, quota[m], start[t], end[t], held))
        if held:
            events.append((start[t], held))
            events.append((release.get((m, i), end[t]), -held))
    peak = level = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # frees before allocations at a tie
        level += change
        peak = max(peak, level)
    return Timeline(
        tasks=tasks,
        step_s=max(end) if end else 0.0,
        peak_bytes=peak,
        sm_count=capacity,
        micro_batches=k,
        batch_size=batch_size,
        label=plan.method,
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

    The larger of the longest chain of dependent tasks (stream order included), each at its
    fastest — on the whole device — and the least SM-seconds of all tasks over ``quotas`` spread
    over every SM. Assumes times do not grow with the quota. Units in ``ahead`` run one step ahead.
    """
    capacity = perf_model.capacity
    spec = _tasks(graph, perf_model, micro_batches, frozenset(ahead))
    size = batch_size / micro_batches
    fastest, work = [], 0.0
    for m, p, _ in spec.keys:
        calls = perf_model.calls.get(m, 1)
        fastest.append(perf_model.predict(m, p, size, capacity) * calls)
        work += min(q * perf_model.predict(m, p, size, q) for q in quotas) * calls
    finish: list[float] = []
    for task, need in enumerate(spec.deps):  # issue order is a topological order of the tasks
        finish.append(max((finish[d] for d in need), default=0.0) + fastest[task])
    return max(max(finish, default=0.0), work / capacity)
