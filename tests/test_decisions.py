"""The session's decisions as functions of data: finalized plans, the guard's judgement, the advice."""

from __future__ import annotations

from types import SimpleNamespace

from lightning_mosaic.accelerate import WORDS as ACCELERATE_WORDS
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.guard import Verdict
from lightning_mosaic.lightning.callback import LIGHTNING_WORDS
from lightning_mosaic.plan import Phase, Plan, temporal_plan
from lightning_mosaic.session import SessionConfig
from lightning_mosaic.session.decisions import (
    finalized,
    judged,
    too_wrong_reason,
    without_trainable_lookahead,
)

GRAPH = ModuleGraph.from_edges({"vision": [], "audio": [], "llm": ["vision", "audio"]})


def side_by_side() -> Plan:
    return Plan(
        phases=(Phase({"vision": 48, "audio": 80}), Phase({"llm": None})),
        method="heuristic",
        device="cpu",
        predicted_step_s=0.5,
        predicted_temporal_s=1.0,
        graphs=("audio",),
        lookahead=("vision",),
    )


def test_finalized_applies_the_configuration_once():
    config = SessionConfig(micro_batches=2, graphs=False, notes=("a driver's note",))
    plan = finalized(side_by_side(), config)
    assert plan.micro_batches == 2 and plan.graphs == () and plan.lookahead == ()
    assert "graphs=False: ['audio'] run eagerly" in plan.notes and "a driver's note" in plan.notes
    assert finalized(plan, config).notes == plan.notes, "finalizing twice adds nothing"


def test_the_guard_keeps_a_faster_plan_and_drops_a_slower_one():
    fast = Verdict(keep=True, plan_s=0.5, temporal_s=1.0, plan_steps=4, temporal_steps=2)
    kept = judged(side_by_side(), fast, GRAPH, 0.02)
    assert kept.kept and kept.plan.method == "heuristic" and kept.plan.measured_step_s == 0.5
    assert kept.plan.notes[-1].startswith("guard: predicted 2.00x, measured step 500.00 ms")
    slow = Verdict(keep=False, plan_s=1.5, temporal_s=1.0, plan_steps=4, temporal_steps=2)
    dropped = judged(side_by_side(), slow, GRAPH, 0.02)
    assert not dropped.kept and dropped.plan.sequential and dropped.plan.micro_batches == 1
    assert dropped.plan.measured_step_s == 1.0 and dropped.plan.predicted_step_s == 1.0
    assert dropped.message.endswith("the heuristic plan is dropped for the temporal plan")
    assert dropped.plan.notes[-1] == dropped.message


def test_a_trainable_lookahead_unit_is_dropped_with_a_note():
    plan = without_trainable_lookahead(side_by_side(), ["vision"])
    assert plan.lookahead == () and plan.notes[-1] == "lookahead ['vision'] dropped: trainable now"
    assert without_trainable_lookahead(temporal_plan(GRAPH), ["vision"]) == temporal_plan(GRAPH)


def test_advice_names_the_drivers_own_options():
    noisy = SimpleNamespace(notes=[], seconds=1.5)
    cut = SimpleNamespace(notes=["stopped by max_seconds=60 before the grid ended"], seconds=60.0)
    lightning = SessionConfig(words=LIGHTNING_WORDS)
    accelerate = SessionConfig(words=ACCELERATE_WORDS)
    assert "more repeats help (MosaicProfiler(repeats=...))" in too_wrong_reason(
        {"llm": 0.4}, noisy, lightning
    )
    assert "a longer prepare(profile_seconds=...) helps" in too_wrong_reason({"llm": 0.4}, noisy, accelerate)
    assert "raise prepare(profile_seconds=...)" in too_wrong_reason({"llm": 0.4}, cut, accelerate)
    assert "MosaicProfiler" not in too_wrong_reason({"llm": 0.4}, cut, accelerate)
    assert "llm 40%" in too_wrong_reason({"llm": 0.4}, cut, accelerate)
