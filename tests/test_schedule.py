"""The plan as a schedule: one list of actions that the simulator times and the engine runs."""

from __future__ import annotations

from helpers import demo_batch, demo_model

from lightning_mosaic.engine import Engine, RecordingBackend
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import AnalyticModel
from lightning_mosaic.plan import Phase, Plan, temporal_plan
from lightning_mosaic.schedule import Action, TaskGraph, plan_actions
from lightning_mosaic.selection import select_modules
from lightning_mosaic.simulator import simulate
from lightning_mosaic.tracing import trace


def two_towers() -> tuple[ModuleGraph, Plan]:
    graph = ModuleGraph.from_edges({"a": [], "b": [], "head": ["a", "b"]})
    plan = Plan(phases=(Phase({"a": 48, "b": 80}), Phase({"head": None})), micro_batches=2, method="user")
    return graph, plan


def test_a_plan_expands_into_the_actions_of_one_step_in_issue_order():
    graph, plan = two_towers()
    steps = plan_actions(plan, graph, backward={"a": False})
    assert steps[:3] == [Action("a", "forward", 0, 0, 48), Action("b", "forward", 0, 0, 80),
                         Action("head", "forward", 0, 1, None)]  # fmt: skip
    assert [(s.unit, s.pass_, s.micro_batch) for s in steps[3:6]] == [
        ("a", "forward", 1), ("b", "forward", 1), ("head", "forward", 1)
    ]  # fmt: skip
    backward = [(s.unit, s.micro_batch) for s in steps if s.pass_ == "backward"]
    assert backward == [("head", 0), ("b", 0), ("head", 1), ("b", 1)], "a frozen unit has no backward"
    assert steps[0].describe() == "F(a, 0) phase 0, 48 SMs"


def test_the_task_graph_orders_producers_consumers_and_streams():
    graph, plan = two_towers()
    steps = plan_actions(plan, graph)
    tasks = TaskGraph.of(graph, steps)
    index = {(s.unit, s.pass_, s.micro_batch): n for n, s in enumerate(steps)}
    head0 = tasks.deps[index[("head", "forward", 0)]]
    assert {steps[d].unit for d in head0} == {"a", "b"}, "the head waits for both towers"
    a1 = tasks.deps[index[("a", "forward", 1)]]
    assert [steps[d] for d in a1] == [steps[index[("a", "forward", 0)]]], "one action at a time per unit"
    ahead = TaskGraph.of(graph, steps, ahead=["a"])
    assert index[("a", "forward", 0)] not in ahead.deps[index[("head", "forward", 0)]], (
        "computed a step ahead"
    )


def test_the_simulator_times_exactly_the_plans_actions():
    graph, plan = two_towers()
    model = AnalyticModel(lambda m, p, b, q: b / q, lambda m, b: 0, modules=["a", "b", "head"], capacity=128)
    timeline = simulate(graph, model, plan, 8)
    timed = [(t.module, t.pass_, t.micro_batch, t.phase) for t in timeline.tasks]
    assert timed == [(a.unit, a.pass_, a.micro_batch, a.phase) for a in plan_actions(plan, graph)]


def test_the_engines_launch_order_is_the_schedules_issue_order():
    """What one step launches, unit by unit and pass by pass, in the order the schedule issues it."""
    model = demo_model()
    units = select_modules(model)
    graph, _ = trace(units, lambda: model._loss(demo_batch(0)))
    backend = RecordingBackend()
    engine = Engine()
    engine.attach(units, backend=backend)
    with backend.recording():
        with engine.step():
            loss = model._loss(demo_batch(1))
        engine.before_backward(loss)
        loss.backward()
        engine.join()
    engine.detach()
    launched = [(e.stream, e.phase) for e in backend.log if e.kind == "launch" and e.stream in units]
    first_seen = list(dict.fromkeys(launched))
    issued = [(a.unit, a.pass_) for a in plan_actions(temporal_plan(graph), graph)]
    assert first_seen == issued, (first_seen, issued)
