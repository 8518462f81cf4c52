"""The framework-free session: its stages, broadcast to other processes, saved state, two drivers, errors.

The model and the loop here are plain PyTorch: nothing but the session's own calls drives it.
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import assert_bitwise_equal, long_lived, parameters
from torch import nn

import lightning_mosaic.session.profiling as session_module
from lightning_mosaic.engine import HappensBefore, RecordingBackend, find_races
from lightning_mosaic.plan import Plan
from lightning_mosaic.session import ProfileSettings, Session, SessionConfig, Stage, check_plan_source

UNITS = ["vision", "audio", "head"]


class TwoTowers(nn.Module):
    """Two encoders whose outputs user code concatenates, and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vision = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 16))
        self.audio = nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.vision(x), self.audio(y)], dim=-1))


def batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 12, generator=g), torch.randn(8, 6, generator=g)) for _ in range(n)]


FAST = dict(warmup_steps=2, warmup=1, repeats=2, max_seconds=20, progress=False, batch_fractions=(0.5, 1.0))


DRIVER = ("broadcast", "is_main", "batch_size_of", "on_apply", "clock", "graph_capture")


def make(tmp_path, model=None, settings=None, **options) -> tuple[nn.Module, Session]:
    """A session of ``model`` on the CPU: ``options`` are SessionConfig fields or what a driver gives."""
    model = model or TwoTowers()
    settings = settings or ProfileSettings(path=tmp_path / "profile.json", **FAST)
    if "capture" in options:
        options["graph_capture"] = options.pop("capture")
    driver = {name: options.pop(name) for name in DRIVER if name in options}
    config = SessionConfig(profile=settings, **({"backend": "cpu"} | options))
    return model, Session(model, torch.device("cpu"), config, **driver)


def train(model: nn.Module, session: Session | None, steps: int = 6, drivers: int = 1, trace=None) -> None:
    """A plain loop; ``drivers`` callers report every boundary (a strategy and a callback do)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, batch in enumerate(batches()[:steps]):
        if session is not None:
            for _ in range(drivers):
                session.before_step(step, batch)
        if trace is not None:
            trace.append(("before", session.stage))
        with session.step() if session is not None else torch.enable_grad():
            loss = model(*batch).pow(2).mean()
        if session is not None and session.engine is not None:
            session.engine.before_backward(loss)
        loss.backward()
        if session is not None and session.engine is not None:
            session.engine.join()
        optimizer.step()
        optimizer.zero_grad()
        if session is not None:
            for _ in range(drivers):
                session.advance(step + 1)
            if trace is not None:
                trace.append(("after", session.stage))
    if session is not None:
        session.finish(steps)


def test_the_loop_moves_through_its_stages_and_keeps_the_numbers(tmp_path):
    model, session = make(tmp_path, out_dir=str(tmp_path))
    session.start(fitting=True)
    assert session.stage is Stage.WARMUP and not session.planned and session.units.keys() == set(UNITS)
    trace = []
    train(model, session, trace=trace)
    assert trace[:6] == [
        ("before", Stage.WARMUP),
        ("after", Stage.WARMUP),
        ("before", Stage.WARMUP),
        ("after", Stage.WARMUP),
        ("before", Stage.CAPTURING),  # after warmup_steps=2 optimizer steps
        ("after", Stage.PROFILED),  # captured, then profiled, fitted and planned at the boundary
    ]
    assert session.planned and session.perf_model is not None and not session.reused
    assert session.profile.module_names == UNITS and session.profile.batch_size == 8
    assert session.graph.inputs == {"vision": [], "audio": [], "head": ["vision", "audio"]}
    assert session.profile.graph == session.graph
    assert Plan.load(tmp_path / "mosaic_plan.json") == session.plan
    assert (tmp_path / "profile.json").exists() and session.optimizer_steps == 6
    assert session.engine.calls["head"] == 3, "the plan ran the last 3 steps; the replays bypassed it"
    plain = TwoTowers()
    train(plain, None)
    assert_bitwise_equal(parameters(plain), parameters(model))


def test_the_main_process_measures_and_plans_the_others_take_its_word(tmp_path, monkeypatch):
    sent = []

    def main_broadcast(obj):
        sent.append(obj)
        return obj

    model, main = make(tmp_path / "main", broadcast=main_broadcast, out_dir=str(tmp_path / "main"))
    main.start()
    train(model, main)
    # The units (checked against the forwards that ran), no second captured step, the profile, the
    # graph is complete, the plan.
    assert [type(x).__name__ for x in sent] == ["list", "bool", "dict", "bool", "dict"]

    received = iter(sent)

    def other_broadcast(obj):
        assert obj is None, "only the main process has something to send"
        return next(received)

    monkeypatch.setattr(session_module, "profile_units", lambda *a, **k: pytest.fail("measured on rank 1"))
    model, other = make(
        tmp_path / "other", broadcast=other_broadcast, is_main=False, out_dir=str(tmp_path / "other")
    )
    other.start()
    train(model, other)
    assert other.plan == main.plan and other.profile == main.profile and other.planned
    assert not (tmp_path / "other").exists(), "only the main process writes files"


def test_a_saved_state_is_applied_without_profiling(tmp_path, monkeypatch, caplog):
    model, first = make(tmp_path / "a")
    first.start()
    train(model, first)
    state = first.state_dict()
    assert Plan.from_dict(state["plan"]) == first.plan and state["profile"] == first.profile.to_dict()
    monkeypatch.setattr(session_module, "profile_units", lambda *a, **k: pytest.fail("profiled again"))

    _, restored = make(tmp_path / "b")  # restored before start (Lightning's order)
    restored.load_state_dict(state)
    restored.start()
    assert restored.planned and restored.plan == first.plan and restored.stage is Stage.OFF

    model, late = make(tmp_path / "c")  # restored after start (Accelerate's order)
    late.start()
    assert late.stage is Stage.WARMUP
    late.load_state_dict(state)
    assert late.planned and late.plan == first.plan and late.stage is Stage.OFF
    train(model, late)

    elsewhere = dict(state, plan=dict(state["plan"], device="NVIDIA H200"), profile=None)
    _, other = make(tmp_path / "d")
    other.load_state_dict(elsewhere)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        other.start()
    assert not other.planned and other.stage is Stage.WARMUP
    assert "the checkpoint's plan was made for NVIDIA H200, not cpu; it is not applied" in caplog.text


def test_two_drivers_of_one_session_do_the_work_once(tmp_path, monkeypatch):
    calls = []
    measure = session_module.profile_units

    def counted(*args, **kwargs):
        calls.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(session_module, "profile_units", counted)
    model, session = make(tmp_path)
    session.start()
    train(model, session, drivers=2)
    assert calls == [1] and session.planned
    assert session.profile.module("head").calls == 1, "each unit called once in the captured step"


def test_observing_only_profiles_and_fits(tmp_path):
    model, session = make(tmp_path, route=False, profile_requested=True)
    session.start()
    assert session.engine is None
    train(model, session)
    assert session.profile is not None and session.perf_model is not None
    assert session.plan is None and not session.planned, "nothing is planned without an engine to apply it"


def test_warmup_longer_than_training_says_so(tmp_path, caplog):
    model, session = make(tmp_path)
    session.start()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        train(model, session, steps=2)
    assert session.stage is Stage.WARMUP and session.profile is None
    assert (
        "training ended at step 2, before the profile (warmup_steps=2); nothing was profiled" in caplog.text
    )


def test_a_concurrent_session_is_race_free_and_its_encoders_overlap(tmp_path):
    backend = RecordingBackend()
    model, session = make(tmp_path, plan="concurrent", backend=backend)
    session.start()
    with backend.recording():
        train(model, session, steps=2)
    assert session.plan_guard.guard.count("other") == 0, "a plan given by hand is not timed"
    assert session.planned and session.plan.method == "recording backend"
    assert [p.modules for p in session.plan.phases] == [["vision", "audio"], ["head"]]
    log = backend.log
    assert find_races(log, long_lived(model)) == []
    # The first step is traced and runs every unit alone (side effects unknown yet); look at the second.
    first_backward = next(i for i, e in enumerate(log) if e.phase == "backward")
    start = next(i for i, e in enumerate(log) if i > first_backward and e.phase == "forward")
    end = next(i for i, e in enumerate(log) if i > start and e.phase == "backward")
    vision = [i for i in backend.launches("vision", "forward") if start <= i < end]
    audio = [i for i in backend.launches("audio", "forward") if start <= i < end]
    assert vision and audio and HappensBefore(log).concurrent(vision, audio)
    plain = TwoTowers()
    train(plain, None, steps=2)
    assert_bitwise_equal(parameters(plain), parameters(model))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"warmup_steps=-1 must be a whole number of steps, 0 or more"):
        ProfileSettings(warmup_steps=-1)
    with pytest.raises(ValueError, match=r"repeats=0 must be a whole number of runs, 1 or more"):
        ProfileSettings(repeats=0)
    with pytest.raises(ValueError, match=r"batch_fractions=\[0.5, 1.5\] must be numbers in \(0, 1\]"):
        ProfileSettings(batch_fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"max_seconds=0 must be a positive number of seconds"):
        ProfileSettings(max_seconds=0)
    with pytest.raises(ValueError, match=r"quotas=\[8, 0\] must be whole numbers of SMs or threads"):
        ProfileSettings(quotas=(8, 0))
    with pytest.raises(ValueError, match=r"plan='fast' is neither one of auto, temporal, concurrent nor"):
        check_plan_source("fast")
    with pytest.raises(ValueError, match=r"quotas= sets the SM quotas by hand, which only goes with"):
        check_plan_source("temporal", quotas_given=True)
    assert check_plan_source("auto", quotas_given=True) == "concurrent"
    with pytest.raises(ValueError, match=r"micro_batches=0 must be 'auto'"):
        make(tmp_path, micro_batches=0)
    with pytest.raises(ValueError, match=r"unknown module 'text' in `modules`"):
        make(tmp_path, modules=["vision", "text"])
    model = TwoTowers()
    model.mosaic_max_micro_batches = 1
    _, capped = make(tmp_path, model=model, micro_batches=2, plan="temporal")
    with pytest.raises(ValueError, match=r"2 micro-batches per step asked for, but TwoTowers sets"):
        capped.start()


def test_a_model_too_wrong_on_the_critical_path_is_not_planned_from(tmp_path, caplog, four_threads):
    from helpers import side_by_side_profile

    from lightning_mosaic.selection import select_modules

    results = {}
    for noisy in (None, "vision", "head"):
        model = TwoTowers()
        path = tmp_path / f"{noisy}.json"
        side_by_side_profile(select_modules(model), four_threads, noisy=noisy).save(path)
        settings = ProfileSettings(path=path, warmup_steps=1, progress=False)
        _, session = make(tmp_path, model=model, settings=settings)
        session.start()
        with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
            train(model, session, steps=3)
        results[noisy] = session.plan
    assert results[None].method == "heuristic", "a faithful model: the encoders side by side"
    assert results["vision"].method == "heuristic", "vision is off the critical path (head is longer)"
    assert results["head"].sequential
    note = results["head"].notes[0]
    assert note.startswith("the performance model is too wrong to plan from: held-out MAPE head ")
    assert "on the critical path, above 25%" in note and "too wrong to plan from" in caplog.text


def test_profiling_that_fails_leaves_training_on_the_temporal_plan(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver hiccup")

    monkeypatch.setattr(session_module, "profile_units", broken)
    model, session = make(tmp_path, out_dir=str(tmp_path))
    session.start()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        train(model, session)
    assert session.planned and session.plan.is_temporal and session.stage is Stage.OFF
    assert session.plan.notes == ("profiling failed (RuntimeError: CUDA driver hiccup): temporal plan",)
    assert "training goes on with the temporal plan" in caplog.text
    assert Plan.load(tmp_path / "mosaic_plan.json") == session.plan
    plain = TwoTowers()
    train(plain, None)
    assert_bitwise_equal(parameters(plain), parameters(model))


def test_a_profile_that_cannot_be_written_is_said_and_training_goes_on(tmp_path, caplog):
    (tmp_path / "blocked").write_text("a file where a directory should be")
    model, session = make(
        tmp_path, settings=ProfileSettings(path=tmp_path / "blocked" / "profile.json", **FAST)
    )
    session.start()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        train(model, session)
    assert session.planned and session.profile is not None and not session.reused
    assert not (tmp_path / "blocked" / "profile.json").exists()
    said = [
        r for r in caplog.records if r.levelname == "WARNING" and "could not be written" in r.getMessage()
    ]
    assert len(said) == 1, "said once"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("not a mapping", "the checkpoint's mosaic state is not a mapping but str"),
        ({"plan": {"schema_version": 1, "phases": "vision"}}, "the checkpoint's mosaic plan is not valid"),
        ({"plan": [1]}, "mosaic plan is not valid (plan must be an object, got a list: [1])"),
        (
            {"profile": {"schema_version": 1}},
            "the checkpoint's mosaic profile is not valid (not a valid profile",
        ),
    ],
)
def test_a_malformed_checkpoint_entry_is_ignored_and_said(tmp_path, caplog, state, message):
    model, session = make(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        session.load_state_dict(state)
        session.start()
        train(model, session)
    assert message in caplog.text and session.planned and not session.reused


def test_outputs_that_cannot_be_written_are_said_and_training_goes_on(tmp_path, caplog):
    (tmp_path / "out").write_text("a file where the log directory should be")
    model, session = make(tmp_path, out_dir=str(tmp_path / "out"))
    session.start()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        train(model, session)
    assert session.planned and session.outputs.written == [], "nothing could be written"
    assert f"mosaic_plan.json could not be written to {tmp_path / 'out'}" in caplog.text, "and it is said"


def test_graphs_auto_captures_the_units_the_profile_shows_launch_bound(tmp_path, four_threads):
    """A vision tower whose host time exceeds its device time is graphed; the others are not."""
    import dataclasses

    from helpers import side_by_side_profile

    from lightning_mosaic.engine.graphs import EmulatedCapture
    from lightning_mosaic.selection import select_modules

    model = TwoTowers()
    profile = side_by_side_profile(select_modules(model), four_threads)
    profile.samples = [
        dataclasses.replace(s, host_seconds=0.5) if s.module == "vision" else s for s in profile.samples
    ]
    profile.save(tmp_path / "launch.json")
    capture = EmulatedCapture()
    settings = ProfileSettings(path=tmp_path / "launch.json", warmup_steps=1, progress=False)
    _, session = make(tmp_path, model=model, capture=capture, settings=settings)
    session.start()
    train(model, session, steps=6)
    assert session.plan.graphs == ("vision",)
    assert (
        "graphs='auto': units with host time >= device time replay CUDA graphs: ['vision']"
        in session.plan.notes
    )
    assert session.plan.predicted_step_s < session.plan.predicted_temporal_s
    assert sum(g.replays for g in capture.graphs) >= 4, "the steps after the plan replayed vision's graphs"
    plain = TwoTowers()
    train(plain, None, steps=6)
    assert_bitwise_equal(parameters(plain), parameters(model))
    _, off = make(tmp_path, model=TwoTowers(), capture=EmulatedCapture(), graphs=False, settings=settings)
    off.start()
    train(off.model_units.root, off, steps=6)
    assert session.plan.method == "heuristic", "with vision graphed, the encoders run side by side"
    assert off.plan.graphs == () and off.plan.is_temporal, "held back by the host, nothing would gain"


@pytest.mark.parametrize("graphs", ["auto", False])
def test_the_profile_times_the_units_graphs_unless_graphs_are_off(tmp_path, graphs):
    from lightning_mosaic.engine.graphs import EmulatedCapture

    model, session = make(tmp_path, capture=EmulatedCapture(), graphs=graphs)
    session.start()
    train(model, session, steps=5)
    assert session.profile is not None
    timed = {s.module for s in session.profile.graphed}
    if graphs is False:
        assert timed == set()
    else:
        assert timed == {"vision", "audio", "head"}
        assert all(session.perf_model.graph_cost(m, "forward") is not None for m in timed)
