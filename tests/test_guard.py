"""The guard: step times by kind, the verdict against temporal, and a session that drops a slow plan."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import FakeClock, side_by_side_profile
from test_session import TwoTowers, batches

from lightning_mosaic.guard import OTHER, PLAN, TEMPORAL, Guard
from lightning_mosaic.selection import select_modules
from lightning_mosaic.session import ProfileSettings, Session, SessionConfig


def timed(guard: Guard, clock: FakeClock, steps: list[tuple[str, float]]) -> None:
    for kind, seconds in steps:
        guard.start(kind)
        clock.now += seconds
        guard.end()
        clock.now += 100.0  # between steps (planning, profiling): no step's time


def test_the_verdict_compares_medians_within_the_tolerance():
    clock = FakeClock()
    guard = Guard(clock, steps=3)
    timed(guard, clock, [(OTHER, 9.0), (TEMPORAL, 1.0), (TEMPORAL, 1.2), (TEMPORAL, 1.0), (OTHER, 5.0)])
    assert not guard.ready() and guard.verdict() is None
    timed(guard, clock, [(PLAN, 1.01), (PLAN, 0.9), (PLAN, 1.019)])
    assert guard.ready()
    verdict = guard.verdict()
    assert verdict.plan_s == pytest.approx(1.01) and verdict.temporal_s == pytest.approx(1.0)
    assert (verdict.plan_steps, verdict.temporal_steps) == (3, 3)
    assert verdict.keep, "1% slower is within the 2% tolerance"
    assert "measured step 1010.00 ms under the plan vs 1000.00 ms temporal (0.99x" in verdict.describe()
    timed(guard, clock, [(PLAN, 1.03)] * 3)
    assert not guard.verdict().keep, "the median is now 1.03 s: 3% slower"
    guard.restart_plan()
    assert guard.count(PLAN) == 0 and not guard.ready()
    with pytest.raises(ValueError, match="steps=0 must be a whole number of steps, 1 or more"):
        Guard(clock, steps=0)


# ---------------------------------------------------------------- through a session


@pytest.mark.parametrize(("plan_seconds", "kept"), [(0.5, True), (1.5, False)])
def test_a_plan_slower_than_temporal_is_dropped(tmp_path, caplog, four_threads, plan_seconds, kept):
    model = TwoTowers()
    path = tmp_path / "profile.json"
    side_by_side_profile(select_modules(model), four_threads).save(path)
    clock = FakeClock()
    config = SessionConfig(
        backend="cpu",
        profile=ProfileSettings(path=path, warmup_steps=3, progress=False),
        guard_steps=4,
        out_dir=str(tmp_path),
    )
    session = Session(model, torch.device("cpu"), config, clock=clock)
    session.start()
    assert session.reused
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        for step, batch in enumerate(batches(10)):
            session.before_step(step, batch)
            with session.step():
                loss = model(*batch).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            side_by_side = session.planned and not session.plan.sequential
            clock.now += plan_seconds if side_by_side else 1.0  # step 0 (traced) is left out either way
            session.advance(step + 1)
            if step == 3:
                assert session.plan.method == "heuristic", "planned after the 3 timed warmup steps"
        session.finish(10)
    plan = session.plan
    # 3 warmup steps (the first traced), 1 step setting up the plan, then 4 timed plan steps: judged.
    assert plan.measured_temporal_s == 1.0
    if kept:
        assert plan.method == "heuristic" and plan.measured_step_s == 0.5
        kept_note = "(2.00x; medians of 4 and 2 steps): plan kept"
        assert any(n.startswith("guard: predicted") and n.endswith(kept_note) for n in plan.notes), plan.notes
        assert session.engine.backend.name == "cpu"
    else:
        assert plan.sequential and plan.measured_step_s == 1.0, "back to temporal"
        dropped = "more than 2% slower than temporal: the heuristic plan is dropped for the temporal plan"
        assert any(note.endswith(dropped) for note in plan.notes), plan.notes
        assert session.engine.backend.name == "none", "units inline again"
    assert all(session.plan_guard.guard.count(kind) == 0 for kind in (TEMPORAL, PLAN, OTHER)), "no marks kept"
    saved = (tmp_path / "mosaic_plan.json").read_text()
    assert '"measured_temporal_s": 1.0' in saved, "the plan file holds what the guard measured"
