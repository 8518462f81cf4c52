"""The step simulator: every timeline respects dependencies, stream order and SM capacity (property tests)."""

from __future__ import annotations

import itertools
import random
import runpy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import AnalyticModel
from lightning_mosaic.plan import Phase, Plan, temporal_plan
from lightning_mosaic.simulator import Timeline, lower_bound, simulate

BENCH = runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" / "planner_quality.py"))
random_instance = BENCH["random_instance"]


@st.composite
def instances(draw):
    """A random graph and monotone time curves, a random plan on a small device, a batch."""
    sms = draw(st.sampled_from([8, 16, 20, 32]))
    graph, model = random_instance(random.Random(draw(st.integers(0, 10**6))), draw(st.integers(2, 5)), sms)
    options = list(range(2, sms + 1, 2))
    phases = [Phase({m: draw(st.sampled_from([*options, None])) for m in level}) for level in graph.levels()]
    batch = draw(st.sampled_from([4, 8, 12]))
    k = draw(st.sampled_from([d for d in (1, 2, 4) if batch % d == 0]))
    frozen = [m for m in graph.modules if not graph.inputs[m] and not model.backward[m]]
    ahead = [m for m in frozen if k == 1 and draw(st.booleans())]  # one step ahead: whole batches only
    return graph, model, Plan(phases=phases, micro_batches=k, lookahead=ahead), batch


def check_timeline(
    graph: ModuleGraph, model: AnalyticModel, plan: Plan, batch: int, timeline: Timeline
) -> None:
    eps = 1e-12
    k = plan.micro_batches
    quota = {m: q or model.capacity for p in plan.phases for m, q in p.quotas.items()}
    task = {(t.module, t.pass_, t.micro_batch): t for t in timeline.tasks}
    backward = {m for m in graph.modules if model.backward[m]}
    assert len(task) == len(timeline.tasks) == k * (len(graph.modules) + len(backward))
    for (m, p, i), t in task.items():
        assert t.quota == quota[m]
        device = model.predict(m, p, batch / k, quota[m])
        host = model.predict_host(m, p, batch / k, quota[m])
        assert t.issued_until - t.issued == pytest.approx(host, rel=1e-9, abs=1e-15)
        assert t.start >= t.issued - eps, "no kernel runs before the host issues it"
        assert t.end == pytest.approx(max(t.start + device, t.issued_until), rel=1e-12)
        ahead = set(plan.lookahead)  # their outputs for this step were made in the previous one
        if p == "forward":
            for producer in graph.inputs[m]:
                if producer not in ahead:
                    assert t.start >= task[(producer, "forward", i)].end - eps  # producers first
        else:
            for other in graph.modules:
                if other not in ahead:
                    assert (
                        t.start >= task[(other, "forward", i)].end - eps
                    )  # after the loss of its micro-batch
            for consumer in graph.consumers(m):
                if consumer in backward:
                    assert t.start >= task[(consumer, "backward", i)].end - eps  # gradients flow back
    for m in graph.modules:  # one task at a time per module stream, in issue order
        mine = [task[(m, "forward", i)] for i in range(k)]
        mine += [task[(m, "backward", i)] for i in range(k) if m in backward]
        for a, b in itertools.pairwise(mine):
            assert b.start >= a.end - eps
    for a, b in itertools.pairwise(timeline.tasks):  # one host thread issues the tasks in issue order
        assert b.issued == pytest.approx(a.issued_until, rel=1e-12, abs=1e-15)
    assert timeline.host_s == pytest.approx(timeline.tasks[-1].issued_until)
    for t in timeline.tasks:  # at every start, the running quotas fit the device
        running = sum(o.quota for o in timeline.tasks if o.start <= t.start + eps and o.end > t.start + eps)
        assert running <= model.capacity
    assert timeline.step_s == max(t.end for t in timeline.tasks)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_every_timeline_respects_dependencies_stream_order_and_capacity(instance):
    graph, model, plan, batch = instance
    timeline = simulate(graph, model, plan, batch)
    check_timeline(graph, model, plan, batch, timeline)
    bound = lower_bound(
        graph, model, batch, plan.micro_batches, list(range(2, model.capacity + 1, 2)), plan.lookahead
    )
    assert timeline.step_s >= bound * (1 - 1e-9)


def test_temporal_timeline_runs_one_task_at_a_time_in_order():
    graph, model = random_instance(random.Random(3), 4, 16)
    timeline = simulate(graph, model, temporal_plan(graph), 8)
    tasks = sorted(timeline.tasks, key=lambda t: t.start)
    assert all(b.start >= a.end - 1e-12 for a, b in itertools.pairwise(tasks))
    expected = sum(model.predict(t.module, t.pass_, 8, 16) for t in tasks)
    assert timeline.step_s == pytest.approx(expected)


def test_independent_units_overlap_in_the_simulated_step_when_their_quotas_fit():
    graph = ModuleGraph.from_edges({"a": [], "b": [], "c": ["a", "b"]})
    model = AnalyticModel(lambda m, p, b, q: 1.0, modules=["a", "b", "c"], capacity=16)
    side_by_side = Plan([Phase({"a": 8, "b": 8}), Phase({"c": None})])
    timeline = simulate(graph, model, side_by_side, 4)
    starts = {(t.module, t.pass_): t.start for t in timeline.tasks}
    assert starts[("a", "forward")] == starts[("b", "forward")] == 0.0
    assert timeline.step_s == pytest.approx(4.0)  # a|b, c, c', a'|b'
    too_big = simulate(graph, model, Plan([Phase({"a": 10, "b": 10}), Phase({"c": None})]), 4)
    assert too_big.step_s == pytest.approx(6.0)  # 10 + 10 > 16 SMs: one after the other


def test_launch_bound_units_gain_nothing_side_by_side_and_compute_bound_ones_do():
    """One host thread issues every stream's kernels: what only the host limits cannot overlap."""
    graph = ModuleGraph.from_edges({"a": [], "b": [], "c": ["a", "b"]})
    side_by_side = Plan([Phase({"a": 8, "b": 8}), Phase({"c": None})])

    def step(host_s: float, plan: Plan) -> float:
        model = AnalyticModel(  # 1 s of device work on 8 SMs or more; host_s to issue it
            lambda m, p, b, q: 1.0 if q >= 8 else 2.0,
            modules=["a", "b", "c"],
            capacity=16,
            host_fn=lambda m, p, b, q: host_s,
        )
        return simulate(graph, model, plan, 4).step_s

    temporal = Plan([Phase({"a": None}), Phase({"b": None}), Phase({"c": None})])
    assert step(0.0, temporal) / step(0.0, side_by_side) == pytest.approx(6 / 4)  # compute-bound: 1.5x
    launch_bound = step(1.0, temporal) / step(1.0, side_by_side)
    assert launch_bound == pytest.approx(1.0), "issuing a and b takes the host 2 s either way"
    assert step(1.0, side_by_side) == pytest.approx(6.0)  # six tasks, each issued for 1 s, in turn


def test_memory_is_held_from_forward_to_backward():
    graph = ModuleGraph.from_edges({"a": [], "b": ["a"]})
    model = AnalyticModel(
        lambda m, p, b, q: 1.0, lambda m, b: {"a": 100, "b": 10}[m] * b, modules=["a", "b"], capacity=8
    )
    one = simulate(graph, model, temporal_plan(graph), 4)
    assert one.peak_bytes == 440  # both forwards' activations live until the backwards
    frozen = AnalyticModel(
        lambda m, p, b, q: 1.0,
        lambda m, b: {"a": 100, "b": 10}[m] * b,
        modules=["a", "b"],
        capacity=8,
        backward={"a": False},
    )
    assert simulate(graph, frozen, temporal_plan(graph), 4).peak_bytes == 400  # a's freed after its forward


def test_timeline_json_round_trip_and_describe():
    graph, model = random_instance(random.Random(1), 3, 16)
    timeline = simulate(graph, model, Plan([Phase({m: None}) for m in graph.topological_order()], 2), 8)
    assert Timeline.from_json(timeline.to_json()) == timeline
    assert "2 micro-batch(es) of 4 samples" in timeline.describe()


@pytest.mark.parametrize(
    ("plan", "batch", "message"),
    [
        (Plan([Phase({"a": None})]), 4, r"modules missing from the plan \['b'\]"),
        (Plan([Phase({"a": 32}), Phase({"b": None})]), 4, r"quotas \{'a': 32\} exceed the device's 16 SMs"),
        (Plan([Phase({"a": None}), Phase({"b": None})]), 0, "batch_size=0 must be a positive whole number"),
    ],
)
def test_bad_input(plan, batch, message):
    graph = ModuleGraph.from_edges({"a": [], "b": ["a"]})
    model = AnalyticModel(lambda m, p, b, q: 1.0, modules=["a", "b"], capacity=16)
    with pytest.raises(ValueError, match=message):
        simulate(graph, model, plan, batch)


def test_a_unit_with_side_effects_runs_alone_in_the_simulated_step():
    """``b`` runs alone: it waits for ``a`` although it does not consume it, and ``d`` waits for ``b``."""
    graph = ModuleGraph(
        inputs={"a": [], "b": [], "d": [], "c": ["a", "b", "d"]}, effects={"b": "returns no tensor"}
    )
    model = AnalyticModel(lambda m, p, b, q: 1.0, modules=["a", "b", "c", "d"], capacity=16)
    plan = Plan([Phase({"a": 8, "d": 8}), Phase({"b": None}), Phase({"c": None})])
    timeline = simulate(graph, model, plan, 4)
    span = {t.module: (t.start, t.end) for t in timeline.tasks if t.pass_ == "forward"}
    assert span["b"][0] >= span["a"][1] and span["d"][0] >= span["b"][1]
    assert graph.levels() == [["a"], ["b"], ["d"], ["c"]]
    free = simulate(ModuleGraph.from_edges(graph.inputs), model, plan, 4)
    assert timeline.step_s > free.step_s
