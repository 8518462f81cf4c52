"""The search for a plan: heuristic and exhaustive, never slower than temporal, errors with numbers."""

from __future__ import annotations

import itertools
import math
import random
import runpy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import AnalyticModel
from lightning_mosaic.plan import Plan, temporal_plan
from lightning_mosaic.planner import METHODS, plan
from lightning_mosaic.simulator import lower_bound, simulate


def graph() -> ModuleGraph:
    return ModuleGraph.from_edges(
        {"llm": ["projector"], "vision": [], "audio": [], "projector": ["vision", "audio"]}
    )


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
    for phase in result.phases:  # co-running (partial) quotas fit the device, on its granularity
        partial = [q for q in phase.quotas.values() if q is not None]
        assert sum(partial) <= SMALL.sm_count and all(q in SMALL.quotas() for q in partial)


def test_heuristic_equals_exhaustive_and_local_search_is_close_on_a_sample():
    result = BENCH["compare"](instances=25, sms=16, granularity=4, batch=8, seed=1)
    assert result["ratio_heuristic_over_exhaustive"]["share_equal"] == 1.0, result
    assert result["ratio_local_search_over_exhaustive"]["share_within_2pct"] >= 0.9, result


def test_the_temporal_order_is_inside_the_search_space():
    """Encoders that slow down more than their share of SMs: one after another in their phase is best."""
    from lightning_mosaic.planner import _Evaluator, _exhaustive, _local_search

    graph = ModuleGraph.from_edges({"a": [], "b": [], "c": ["a", "b"]})
    model = AnalyticModel(lambda m, p, b, q: b * (16 / q) ** 1.5, modules=["a", "b", "c"], capacity=16)
    temporal = simulate(graph, model, temporal_plan(graph), 8).step_s
    evaluate = _Evaluator(graph, model, SMALL, 8, math.inf)
    levels, options = graph.levels(), SMALL.quotas()
    exact = _exhaustive(levels, options, 16, 1, (), evaluate, math.inf)
    local = _local_search(levels, options, 16, 1, (), evaluate, [1.0, 1.0, 1.0], math.inf)
    assert exact[0] == local[0] == pytest.approx(temporal)  # side by side would be slower here
    assert exact[1] == local[1] == (16, 16, 16)
    for method in METHODS:
        assert plan(graph, model, SMALL, 8, method=method).is_temporal


def test_splits_are_built_feasible_and_complete():
    from lightning_mosaic.planner import _fits, _phase_splits

    options = SMALL.quotas()  # 4, 8, 12, 16
    splits = list(_phase_splits(3, options, 16))
    every = [s for s in itertools.product(options, repeat=3) if _fits(s, [(0, 3)], 16)]
    assert sorted(splits) == sorted(every) and len(splits) == len(set(splits))
    assert (16, 16, 16) in splits and (4, 4, 8) in splits and (4, 12, 16) not in splits
    assert list(_phase_splits(1, options, 16)) == [(4,), (8,), (12,), (16,)]


def test_two_encoders_that_underuse_the_gpu_are_planned_side_by_side():
    graph = ModuleGraph.from_edges({"vision": [], "audio": [], "llm": ["vision", "audio"]})
    model = AnalyticModel(
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
    perfect = AnalyticModel(lambda m, p, b, q: b / q, modules=["a", "b", "c"], capacity=16)
    result = plan(graph, perfect, SMALL, 8)  # perfect scaling: nothing to win by sharing the GPU
    assert result.is_temporal and result.method == "temporal"
    assert result.predicted_step_s == result.predicted_temporal_s
    assert "under 2%: temporal plan kept" in result.notes[0]


def test_errors_carry_the_numbers():
    graph = ModuleGraph.from_edges({"a": [], "b": ["a"]})
    model = AnalyticModel(lambda m, p, b, q: 1.0, lambda m, b: 10**9 * b, modules=["a", "b"], capacity=16)
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
    each_fits = AnalyticModel(
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
        plan(graph, AnalyticModel(lambda *a: 1.0, modules=["a"], capacity=16), SMALL, 8)


def test_resident_training_state_leaves_less_room_for_activations():
    """A replicated backbone's weights and optimizer state take memory the activations cannot use;
    sharded over the ranks they leave enough."""
    graph = ModuleGraph.from_edges({"a": [], "b": ["a"]})
    model = AnalyticModel(lambda m, p, b, q: 1.0, lambda m, b: 10**8 * b, modules=["a", "b"], capacity=16)
    device = DeviceSpec("tiny", 16, 4, 4 * 10**9)
    assert plan(graph, model, device, 8).predicted_peak_bytes <= 0.9 * 4 * 10**9
    replicated, sharded = 3 * 10**9, 3 * 10**9 // 4  # the same state, whole or over 4 ranks
    with pytest.raises(ValueError, match=r"no plan keeps the predicted activations of a batch of 8"):
        plan(graph, model, device, 8, resident_bytes=replicated)
    assert (
        plan(graph, model, device, 8, resident_bytes=sharded).predicted_peak_bytes
        <= 0.9 * 4 * 10**9 - sharded
    )
    with pytest.raises(ValueError, match=r"3.73 GiB resident per rank .* leave no room for activations"):
        plan(graph, model, device, 8, resident_bytes=4 * 10**9)
    with pytest.raises(ValueError, match=r"resident_bytes=-1 must be a whole number of bytes"):
        plan(graph, model, device, 8, resident_bytes=-1)


def test_a_slow_frozen_encoder_runs_one_step_ahead():
    graph = ModuleGraph.from_edges({"vision": [], "llm": ["vision"]}, frozen=["vision"])
    model = AnalyticModel(
        saturating({"vision": 0.5, "llm": 1.5}),
        modules=["vision", "llm"],
        capacity=16,
        backward={"vision": False},
    )
    result = plan(graph, model, SMALL, 8, method="exhaustive")
    assert result.lookahead == ("vision",) and result.micro_batches == 1
    timeline = simulate(graph, model, result, 8)
    llm_forward = next(t for t in timeline.tasks if t.module == "llm" and t.pass_ == "forward")
    assert llm_forward.start == 0.0, "the llm does not wait for this step's vision output"
    assert result.predicted_step_s < 0.7 * result.predicted_temporal_s
    assert plan(graph, model, SMALL, 8, method="heuristic").lookahead == ("vision",)


def test_a_trainable_encoder_without_a_backward_pass_is_never_computed_ahead():
    """Called under ``no_grad`` in the traced step, a trainable encoder has no backward pass, yet its
    weights change every step: only ``graph.frozen`` (its parameters) admits a unit to lookahead."""
    graph = ModuleGraph.from_edges({"vision": [], "llm": ["vision"]})  # vision owns trainable weights
    model = AnalyticModel(
        saturating({"vision": 0.5, "llm": 1.5}),
        modules=["vision", "llm"],
        capacity=16,
        backward={"vision": False},
    )
    for method in ("exhaustive", "heuristic"):
        assert plan(graph, model, SMALL, 8, method=method).lookahead == ()
    assert graph.frozen_sources == []
    assert ModuleGraph.from_edges(
        {"vision": [], "llm": ["vision"]}, frozen=["vision", "llm"]
    ).frozen_sources == ["vision"]


def test_units_no_step_calls_are_placed_alone_after_the_others():
    """A validation-only head has no profile and no task; the plan runs it alone, last."""
    graph = ModuleGraph(
        inputs={"vision": [], "audio": [], "llm": ["vision", "audio"], "val_head": []},
        calls={"vision": 1, "audio": 1, "llm": 1, "val_head": 0},
    )
    model = AnalyticModel(
        saturating({"vision": 0.5, "audio": 0.5, "llm": 1.0}), modules=["vision", "audio", "llm"], capacity=16
    )
    result = plan(graph, model, SMALL, 8)
    assert result.phases[-1].quotas == {"val_head": None} and set(result.modules) == set(graph.modules)
    assert any(
        "not called in the traced step, so alone on the whole device: val_head" in n for n in result.notes
    )
    timeline = simulate(graph, model, result, 8)
    assert "val_head" not in timeline.modules
    called = plan(graph.subgraph(graph.called), model, SMALL, 8)
    assert timeline.step_s == pytest.approx(simulate(graph.subgraph(graph.called), model, called, 8).step_s)
    nothing = ModuleGraph(inputs={"a": []}, calls={"a": 0})
    assert plan(nothing, model, SMALL, 8).is_temporal
