"""The Accelerate adapter: same numbers as a plain Accelerate loop, the closed loop, saved plans."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from helpers import assert_bitwise_equal, hf_loader, hf_model, parameters

import lightning_mosaic.accelerate as mosaic_accelerate
import lightning_mosaic.session as session_module
import lightning_mosaic.session.profiling as profiling_module
from lightning_mosaic.plan import Phase, Plan


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train(steps=6, mosaic=None, project_dir=None, after_prepare=None):
    """A plain Accelerate loop over the tiny HF model; ``mosaic`` options switch to ``prepare``."""
    accelerator = Accelerator(cpu=True, project_dir=str(project_dir) if project_dir else None)
    model = hf_model()
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-3)
    loader = hf_loader()
    if mosaic is None:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    else:
        model, optimizer, loader = mosaic_accelerate.prepare(accelerator, model, optimizer, loader, **mosaic)
    if after_prepare is not None:
        after_prepare(accelerator)
    model.train()
    for step, batch in enumerate(loader):
        if step == steps:
            break
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    return accelerator, accelerator.unwrap_model(model)


def test_prepare_trains_bitwise_like_a_plain_accelerate_loop():
    _, plain = train()
    accelerator, mosaic = train(mosaic={})
    assert_bitwise_equal(parameters(plain), parameters(mosaic))
    s = mosaic_accelerate.session(accelerator)
    assert s.planned and s.plan.is_temporal and "units run inline on cpu" in s.plan.notes[0]
    assert s.engine.calls["llm"] == 6 and s.graph.inputs["llm"] == ["vision_proj", "audio_proj"]


def test_the_closed_loop_profiles_plans_and_keeps_the_numbers(tmp_path):
    _, plain = train(steps=6)
    accelerator, mosaic = train(
        steps=6, mosaic=dict(backend="cpu", warmup_steps=2, profile_seconds=20), project_dir=tmp_path
    )
    assert_bitwise_equal(parameters(plain), parameters(mosaic))
    s = mosaic_accelerate.session(accelerator)
    assert s.planned and s.profile is not None and s.perf_model is not None
    assert s.plan.micro_batches == 1 and s.plan.lookahead == ()
    assert (tmp_path / "mosaic_profile.json").exists() and Plan.load(tmp_path / "mosaic_plan.json") == s.plan


def test_save_state_carries_the_plan_and_load_state_applies_it(tmp_path, monkeypatch):
    accelerator, _ = train(
        steps=4, mosaic=dict(backend="cpu", warmup_steps=1, profile_seconds=20), project_dir=tmp_path
    )
    first = mosaic_accelerate.session(accelerator).plan
    accelerator.save_state(str(tmp_path / "state"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

    def never(*args, **kwargs):
        raise AssertionError("profiled again")

    monkeypatch.setattr(profiling_module, "profile_units", never)
    (tmp_path / "mosaic_profile.json").unlink()
    restored, _ = train(
        steps=4,
        mosaic=dict(backend="cpu", warmup_steps=1),
        project_dir=tmp_path,
        after_prepare=lambda acc: acc.load_state(str(tmp_path / "state")),
    )
    assert mosaic_accelerate.session(restored).plan == first


def test_a_scheduler_among_the_objects_does_not_count_steps_twice():
    accelerator = Accelerator(cpu=True)
    model = hf_model()
    optimizer = torch.optim.SGD((p for p in model.parameters() if p.requires_grad), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model, optimizer, loader, scheduler = mosaic_accelerate.prepare(
        accelerator, model, optimizer, hf_loader(), scheduler
    )
    for step, batch in enumerate(loader):
        if step == 3:
            break
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    assert mosaic_accelerate.session(accelerator).optimizer_steps == 3


def test_graphed_units_train_bitwise_like_a_plain_accelerate_loop(monkeypatch):
    from lightning_mosaic.engine.graphs import EmulatedCapture

    capture = EmulatedCapture()
    monkeypatch.setattr(session_module, "capture_for", lambda device: capture)
    _, plain = train()
    accelerator, mosaic = train(mosaic=dict(plan="temporal", graphs=True))
    assert_bitwise_equal(parameters(plain), parameters(mosaic))
    s = mosaic_accelerate.session(accelerator)
    assert set(s.plan.graphs) == set(s.graph.called) - set(s.graph.effects)
    assert sum(g.replays for g in capture.graphs) >= 5 * len(s.plan.graphs)


def test_bad_arguments_are_rejected(tmp_path):
    accelerator = Accelerator(cpu=True)
    with pytest.raises(
        ValueError, match="plan='fast' is neither one of auto, temporal nor an existing plan file"
    ):
        mosaic_accelerate.prepare(accelerator, hf_model(), plan="fast")
    with pytest.raises(ValueError, match=r"the plan is for modules \['vision'\]"):
        mosaic_accelerate.prepare(accelerator, hf_model(), plan=Plan([Phase({"vision": None})]))
    with pytest.raises(ValueError, match="graphs='always' is not one of 'auto'"):
        mosaic_accelerate.prepare(accelerator, hf_model(), graphs="always")
    with pytest.raises(KeyError, match="went through no"):
        mosaic_accelerate.session(Accelerator(cpu=True))


def test_a_prepared_model_copies_and_pickles_as_a_plain_model():
    """EMA copies and ``torch.save(model)`` during the loop: the copy runs outside the session."""
    import copy
    import io

    copies = []

    def copy_now(accelerator):
        [model] = accelerator._models  # the prepared model, carrying the loop's hooks
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        copies.extend([copy.deepcopy(model), torch.load(buffer, weights_only=False)])

    accelerator, model = train(steps=3, mosaic={}, after_prepare=copy_now)
    s = mosaic_accelerate.session(accelerator)
    steps, calls = s.engine.step_calls, dict(s.engine.calls)
    batch = next(iter(hf_loader()))
    for twin in copies:
        twin.load_state_dict(model.state_dict())
        with torch.no_grad():
            twin(**batch)
    assert (s.engine.step_calls, dict(s.engine.calls)) == (steps, calls), "a copy drove the session"
