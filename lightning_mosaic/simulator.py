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

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_mosaic.graphcost import action_times, graphed, pool_bytes
from lightning_mosaic.schedule import Action, TaskGraph, actions, peak_bytes, place, plan_actions

if TYPE_CHECKING:
    from lightning_mosaic.graph import ModuleGraph
    from lightning_mosaic.perfmodel import CostModel
    from lightning_mosaic.plan import Plan


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
    phase: int = 0  # the plan's phase of the unit


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
    perf_model: CostModel, steps: Sequence[Action], quotas: Mapping[str, int], size: float
) -> tuple[list[float], list[float]]:
    """Device and host seconds of every action of ``steps`` on ``size`` samples under ``quotas``."""
    times = [action_times(perf_model, a.unit, a.pass_, size, quotas[a.unit]) for a in steps]
    return [t[0] for t in times], [t[1] for t in times]


def simulate(graph: ModuleGraph, perf_model: CostModel, plan: Plan, batch_size: int) -> Timeline:
    """Place every task of one step under ``plan`` in time; see the module docstring."""
    _check(graph, perf_model, plan, batch_size)
    graph = graph.subgraph(graph.called)  # a unit no step calls has no task
    graphs = [m for m in plan.graphs if m in graph.modules]
    perf_model = graphed(perf_model, graphs)
    capacity = perf_model.capacity
    k = plan.micro_batches
    steps = plan_actions(plan, graph, perf_model.backward)
    tasks_graph = TaskGraph.of(graph, steps, plan.lookahead)
    quotas = {m: (q or capacity) for phase in plan.phases for m, q in phase.quotas.items()}
    size = batch_size / k
    device, host = task_times(perf_model, steps, quotas, size)
    per_task_quota = [quotas[a.unit] for a in steps]
    placed = place(tasks_graph, device, host, per_task_quota, capacity)
    assert placed is not None  # no limit given
    start, end, issue = placed
    memory = {m: 0 if m in graphs else perf_model.memory(m, size) for m in graph.modules}
    held = [memory[a.unit] if a.pass_ == "forward" else 0 for a in steps]
    pools = pool_bytes(perf_model, graphs, batch_size, k)
    tasks = [
        Task(a.unit, a.pass_, a.micro_batch, quotas[a.unit], start[t], end[t], held[t], issue[t],
             issue[t] + host[t], a.phase)
        for t, a in enumerate(steps)
    ]  # fmt: skip
    return Timeline(
        tasks=tasks,
        step_s=max(end, default=0.0),
        peak_bytes=peak_bytes(tasks_graph, start, end, held) + pools,
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
    graph = graph.subgraph(graph.called)
    steps = actions(graph, micro_batches, perf_model.backward)
    spec = TaskGraph.of(graph, steps, ahead)
    size = batch_size / micro_batches
    fastest, work, host = [], 0.0, 0.0
    for a in steps:
        device, issued = action_times(perf_model, a.unit, a.pass_, size, capacity)
        fastest.append(device)
        host += issued
        work += min(q * action_times(perf_model, a.unit, a.pass_, size, q)[0] for q in quotas)
    finish: list[float] = []
    for task, need in enumerate(spec.deps):  # issue order is a topological order of the tasks
        finish.append(max((finish[d] for d in need), default=0.0) + fastest[task])
    return max(max(finish, default=0.0), work / capacity, host)
