"""What CUDA graphs change in the cost model, the simulator and the planner (graphcost.py)."""

from __future__ import annotations

import pytest

from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.graphcost import REPLAY_HOST_S, GraphedModel, graphed, launch_bound, pool_bytes
from lightning_mosaic.perfmodel import AnalyticModel
from lightning_mosaic.plan import Plan, temporal_plan
from lightning_mosaic.planner import plan
from lightning_mosaic.simulator import simulate

SMALL = DeviceSpec("small GPU", 16, 4, 2**30)
GRAPH = ModuleGraph.from_edges({"vision": [], "audio": [], "llm": ["vision", "audio"]})
DEVICE_MS = {"vision": 0.4, "audio": 0.4, "llm": 6.0}  # per pass, on the whole device
HOST_MS = {"vision": 3.0, "audio": 3.0, "llm": 1.0}  # hundreds of small kernels vs a few big ones


def _model(**options) -> AnalyticModel:
    return AnalyticModel(
        lambda m, p, b, q: DEVICE_MS[m] * 1e-3 * 16 / q,
        lambda m, b: 2**20 * b,
        modules=list(DEVICE_MS),
        capacity=16,
        host_fn=lambda m, p, b, q: HOST_MS[m] * 1e-3,
        **options,
    )


def test_launch_bound_units_are_those_the_host_holds_back():
    model = _model()
    assert launch_bound(model, GRAPH.modules, 8) == ["vision", "audio"]
    no_host = AnalyticModel(lambda m, p, b, q: 1e-3, modules=list(DEVICE_MS), capacity=16)
    assert launch_bound(no_host, GRAPH.modules, 8) == [], "a profile without host times graphs nothing"


def test_a_graphed_unit_costs_the_host_one_replay():
    model = _model()
    wrapped = graphed(model, ["vision"])
    assert wrapped.predict_host("vision", "forward", 8, 16) == REPLAY_HOST_S
    assert wrapped.predict_host("llm", "forward", 8, 16) == model.predict_host("llm", "forward", 8, 16)
    assert wrapped.predict("vision", "backward", 8, 4) == model.predict("vision", "backward", 8, 4)
    assert graphed(model, []) is model and graphed(wrapped, ["vision"]) is wrapped
    assert graphed(wrapped, ["audio"]).graphs == ("audio",)
    with pytest.raises(ValueError, match=r"graphs \['nosuch'\] are not units of the performance model"):
        GraphedModel(model, ["nosuch"])


def test_the_simulator_frees_the_host_and_holds_the_pools():
    model = _model()
    temporal = temporal_plan(GRAPH, "small GPU")
    eager = simulate(GRAPH, model, temporal, 8)
    with_graphs = simulate(GRAPH, model, Plan(temporal.phases, graphs=("vision", "audio")), 8)
    assert with_graphs.host_s == pytest.approx(eager.host_s - 4 * (3e-3 - REPLAY_HOST_S))
    assert with_graphs.step_s < eager.step_s * 0.8, "the encoders no longer wait for the host"
    assert with_graphs.notes == ["CUDA graphs (one replay per pass): vision, audio"]
    pools = pool_bytes(model, ["vision", "audio"], 8, 1)
    assert pools == 2 * 8 * 2**20
    assert with_graphs.peak_bytes >= pools, "the graphs' pools are held the whole step"


def test_the_planner_plans_with_graphs_and_measures_against_plain_temporal():
    model = _model()
    eager = plan(GRAPH, model, SMALL, 8, method="exhaustive")
    chosen = plan(GRAPH, model, SMALL, 8, method="exhaustive", graphs=["vision", "audio"])
    assert chosen.graphs == ("vision", "audio") and eager.graphs == ()
    assert chosen.predicted_temporal_s == pytest.approx(eager.predicted_temporal_s), "against plain Lightning"
    assert chosen.predicted_step_s < eager.predicted_step_s
    assert "CUDA graphs (one replay per pass in training steps): vision, audio" in chosen.describe()
    assert Plan.from_json(chosen.to_json()) == chosen
    with pytest.raises(ValueError, match=r"graphs \['nosuch'\] are not units of the module graph"):
        plan(GRAPH, model, SMALL, 8, graphs=["nosuch"])


def test_pools_count_against_the_memory_budget():
    """A frozen encoder (no backward) frees its activations after its forward; graphed, its pool
    holds them the whole step."""
    model = _model(backward={"vision": False})
    tight = DeviceSpec("small GPU", 16, 4, int(20 * 2**20 / 0.9) + 1)
    fits = plan(GRAPH, model, tight, 8, micro_batches=1)
    assert fits.predicted_peak_bytes == 16 * 2**20
    with pytest.raises(ValueError, match="no plan keeps the predicted activations"):
        plan(GRAPH, model, tight, 8, micro_batches=1, graphs=["vision"])


def test_units_computed_one_step_ahead_are_not_graphed():
    frozen = ModuleGraph.from_edges(
        {"vision": [], "audio": [], "llm": ["vision", "audio"]}, frozen=["vision"]
    )
    model = _model()
    chosen = plan(frozen, model, SMALL, 8, graphs=["vision", "audio"])
    assert not set(chosen.lookahead) & set(chosen.graphs)


def test_measured_graph_costs_replace_the_estimate():
    """A profile that timed the graphs gives the replay's host time and the device time it saves."""
    import dataclasses

    from test_perfmodel import synthetic_profile

    from lightning_mosaic.perfmodel import PerfModel

    profile = synthetic_profile(0)
    full = [
        s
        for s in profile.samples
        if s.batch == profile.batch_size and s.quota == profile.capacity and s.feasible
    ]
    unit = full[0].module
    profile.graphed = [
        dataclasses.replace(s, seconds=s.seconds * 0.5, host_seconds=2e-5) for s in full if s.module == unit
    ]
    model = PerfModel().fit(profile)
    ratio, host = model.graph_cost(unit, "forward")
    assert ratio == pytest.approx(0.5) and host == 2e-5
    assert PerfModel.from_dict(model.to_dict()).graph_cost(unit, "forward") == (ratio, host)
    others = [m for m in model.modules if m != unit]
    assert model.graph_cost(others[0], "forward") is None
    wrapped = graphed(model, [unit, others[0]])
    assert wrapped.predict_host(unit, "forward", 16, 64) == 2e-5
    assert wrapped.predict(unit, "forward", 16, 64) == pytest.approx(
        0.5 * model.predict(unit, "forward", 16, 64)
    )
    assert wrapped.predict(others[0], "forward", 16, 64) == model.predict(others[0], "forward", 16, 64)
    assert "as a CUDA graph x0.50 device time, 20 us host" in model.describe()


def test_a_graph_the_profile_timed_slower_is_not_chosen():
    """Launch-bound, but its replays measured slower than eager: graphing it would lengthen the step."""
    import dataclasses

    from test_perfmodel import synthetic_profile

    from lightning_mosaic.perfmodel import PerfModel

    profile = synthetic_profile(0)
    unit = profile.samples[0].module
    profile.samples = [dataclasses.replace(s, host_seconds=s.seconds * 4) for s in profile.samples]
    full = [s for s in profile.samples if s.batch == profile.batch_size and s.quota == profile.capacity]
    faster = [
        dataclasses.replace(s, seconds=s.seconds / 2, host_seconds=1e-5) for s in full if s.module == unit
    ]
    profile.graphed = faster
    assert unit in launch_bound(PerfModel().fit(profile), [unit], profile.batch_size)
    slower = [dataclasses.replace(s, seconds=s.seconds * 10, host_seconds=s.host_seconds * 10) for s in full]
    profile.graphed = [s for s in slower if s.module == unit]
    assert launch_bound(PerfModel().fit(profile), [unit], profile.batch_size) == []
