"""Plans: the temporal plan, validation, JSON round-trip, files; the search (heuristic and exhaustive)."""

from __future__ import annotations

import random
import runpy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.planner import Phase, Plan, plan, temporal_plan
from lightning_mosaic.simulator import lower_bound, simulate


def graph() -> ModuleGraph:
    return ModuleGraph.from_edges(
        {"llm": ["projector"], "vision": [], "audio": [], "projector": ["vision", "audio"]}
    )


def test_temporal_plan_runs_each_unit_alone_in_topological_order():
    plan = temporal_plan(graph(), "cpu")
    assert plan.modules == ["vision", "audio", "projector", "llm"]
    assert all(len(p.quotas) == 1 and list(p.quotas.values()) == [None] for p in plan.phases)
    assert plan.is_temporal and plan.micro_batches == 1 and plan.device == "cpu"
    assert plan.speedup is None
    plan.check_graph(graph())


def test_describe():
    text = temporal_plan(graph()).describe()
    assert text.splitlines()[0] == (
        "Plan for cpu: temporal (every module alone on the whole device), 1 micro-batch per step"
    )
    assert "  phase 3: llm (whole device)" in text
    side_by_side = Plan(
        phases=[Phase({"vision": 64, "audio": 64}), Phase({"llm": None})],
        micro_batches=2,
        device="NVIDIA H100 80GB HBM3",
        method="heuristic",
        predicted_step_s=0.080,
        predicted_temporal_s=0.100,
        predicted_peak_bytes=3 * 2**30,
        notes=["vision is frozen"],
    )
    text = side_by_side.describe()
    assert not side_by_side.is_temporal
    assert text.splitlines()[0] == "Plan for NVIDIA H100 80GB HBM3: heuristic, 2 micro-batches per step"
    assert "  phase 0: vision (64), audio (64)" in text
    assert "  predicted step 80.00 ms vs temporal 100.00 ms (1.25x)" in text
    assert "  predicted peak memory 3.00 GiB" in text
    assert "  note: vision is frozen" in text


def test_json_round_trip_and_files(tmp_path):
    plan = Plan(
        phases=[Phase({"vision": 32, "audio": 96}), Phase({"llm": None})],
        micro_batches=4,
        predicted_step_s=0.5,
        predicted_temporal_s=0.6,
    )
    assert Plan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    plan.save(path)
    assert Plan.load(path) == plan


def test_unreadable_plan_file_names_the_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read plan file '.*plan.json': Expecting property name"):
        Plan.load(path)
    with pytest.raises(ValueError, match=r"cannot read plan file '.*missing.json'"):
        Plan.load(tmp_path / "missing.json")
    path.write_text('{"schema_version": 7, "phases": []}')
    with pytest.raises(ValueError, match=r"plan schema version 7 is not supported \(expected 1\)"):
        Plan.load(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Phase({}), r"a phase needs at least one module"),
        (lambda: Phase({"vision": 0}), r"quota of module 'vision' must be a positive int or None, got 0"),
        (lambda: Phase({"vision": -8}), r"got -8"),
        (lambda: Phase({"vision": 2.5}), r"got 2.5"),
        (
            lambda: Plan(phases=[Phase({"a": None})], micro_batches=0),
            r"micro_batches must be an int >= 1, got 0",
        ),
        (
            lambda: Plan(phases=[Phase({"a": None}), Phase({"a": 8})]),
            r"module 'a' appears in phase 0 and in phase 1",
        ),
    ],
)
def test_invalid_plans(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_check_graph_names_the_mismatch():
    plan = Plan(phases=[Phase({"vision": None}), Phase({"text": None})])
    with pytest.raises(
        ValueError,
        match=r"missing from the plan \['llm', 'audio', 'projector'\].*not in the graph \['text'\]",
    ):
        plan.check_graph(graph())


# ---------------------------------------------------------------- the search: plan()

BENCH = runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" / "planner_quality.py"))
SMALL = DeviceSpec("small device", 16, 4, 10**12)


def saturating(per_sample: dict[str, float]):
    """Modules whose time stops improving beyond ``per_sample[m] * batch`` SMs."""

    def time_fn(module, pass_, batch, quota):
        return 1e-3 + 1e-2 * batch / min(quota, per_sample[module] * batch)

    return time_fn


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(2, 5), st.sampled_from(["heuristic", "exhaustive"]))
@example(737020, 3, "heuristic")  # three small units in one phase: snapped starts used to overfill it
def test_plan_is_never_slower_than_temporal_nor_faster_than_the_bound(seed, modules, method):
    graph, model = BENCH["random_instance"](random.Random(seed), modules, SMALL.sm_count)
    result = plan(graph, model, SMALL, 8, method=method, max_micro_batches=4)
    temporal = simulate(graph, model, temporal_plan(graph), 8).step_s
    assert result.predicted_temporal_s == pytest.approx(temporal)
    assert result.predicted_step_s <= temporal * (1 + 1e-12)
    bound = lower_bound(graph, model, 8, result.micro_batches, SMALL.quotas(), result.lookahead)
    assert result.predicted_step_s >= bound * (1 - 1e-9)
    assert simulate(graph, model, result, 8).step_s == pytest.approx(result.predicted_step_s)
    for phase in result.phases:  # co-running quotas fit the device, on its granularity
        quotas = [q or SMALL.sm_count for q in phase.quotas.values()]
        assert sum(quotas) <= SMALL.sm_count and all(q in SMALL.quotas() for q in quotas)


def test_heuristic_is_close_to_exhaustive_on_a_sample():
    result = BENCH["compare"](instances=25, sms=16, granularity=4, batch=8, seed=1)
    assert result["share_within_2pct"] >= 0.95, result
    assert result["share_within_5pct"] == 1.0, result


def test_two_encoders_that_underuse_the_gpu_run_side_by_side():
    graph = ModuleGraph.from_edges({"vision": [], "audio": [], "llm": ["vision", "audio"]})
    model = PerfModel.from_function(
        saturating({"vision": 0.5, "audio": 0.5, "llm": 8.0}), modules=["vision", "audio", "llm"], capacity=16
    )
    result = plan(graph, model, SMALL, 8, method="exhaustive")
    assert not result.is_temporal and result.method == "exhaustive"
    assert set(result.phases[0].quotas) == {"vision", "audio"}
    assert sum(result.phases[0].quotas.values()) <= 16
    assert result.speedup > 1.2
    assert Plan.from_json(result.to_json()) == result
    assert "exhaustive" in result.describe() and "x)" in result.describe()


def test_no_gain_keeps_the_temporal_plan_and_says_why():
    graph = ModuleGraph.from_edges({"a": [], "b": [], "c": ["a", "b"]})
    perfect = PerfModel.from_function(lambda m, p, b, q: b / q, modules=["a", "b", "c"], capacity=16)
    result = plan(graph, perfect, SMALL, 8)  # perfect scaling: nothing to win by sharing the GPU
    assert result.is_temporal and result.method == "temporal"
    assert result.predicted_step_s == result.predicted_temporal_s
    assert "under 2%: temporal plan kept" in result.notes[0]


def test_errors_carry_the_numbers():
    graph = ModuleGraph.from_edges({"a": [], "b": ["a"]})
    model = PerfModel.from_function(
        lambda m, p, b, q: 1.0, lambda m, b: 10**9 * b, modules=["a", "b"], capacity=16
    )
    with pytest.raises(
        ValueError, match=r"a batch of 6 samples cannot be split into 4 equal micro-batches \(6 % 4 = 2\)"
    ):
        plan(graph, model, SMALL, 6, micro_batches=4)
    with pytest.raises(
        ValueError, match=r"module 'a' needs 0.93 GiB of activations for 1 samples .* even alone"
    ):
        plan(
            graph, model, DeviceSpec("tiny", 16, 4, 10**9), 8
        )  # 1 GB, 1 GB per sample even at 8 micro-batches
    each_fits = PerfModel.from_function(
        lambda m, p, b, q: 1.0, lambda m, b: 3 * 10**8 * b, modules=["a", "b"], capacity=16
    )
    with pytest.raises(
        ValueError, match=r"no plan keeps the predicted activations of a batch of 8 within 90%"
    ):
        plan(graph, each_fits, DeviceSpec("tiny", 16, 4, 4 * 10**9), 8)  # 2.4 GB each, 4.8 GB together
    with pytest.raises(ValueError, match="method='best' is not one of"):
        plan(graph, model, SMALL, 8, method="best")
    with pytest.raises(ValueError, match="covers 16 SMs but NVIDIA H100 80GB HBM3 has 132"):
        plan(graph, model, DeviceSpec.preset("h100"), 8)
    with pytest.raises(ValueError, match=r"no data for modules \['b'\]"):
        plan(graph, PerfModel.from_function(lambda *a: 1.0, modules=["a"], capacity=16), SMALL, 8)


def test_a_slow_frozen_encoder_runs_one_step_ahead():
    graph = ModuleGraph.from_edges({"vision": [], "llm": ["vision"]})
    model = PerfModel.from_function(
        saturating({"vision": 0.5, "llm": 1.5}),
        modules=["vision", "llm"],
        capacity=16,
        backward={"vision": False},
    )
    result = plan(graph, model, SMALL, 8, method="exhaustive")
    assert result.lookahead == ["vision"] and result.micro_batches == 1
    timeline = simulate(graph, model, result, 8)
    llm_forward = next(t for t in timeline.tasks if t.module == "llm" and t.pass_ == "forward")
    assert llm_forward.start == 0.0, "the llm does not wait for this step's vision output"
    assert result.predicted_step_s < 0.7 * result.predicted_temporal_s
    assert plan(graph, model, SMALL, 8, method="heuristic").lookahead == ["vision"]
