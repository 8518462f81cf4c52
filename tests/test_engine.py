"""Engine: hooks every unit without wrapping it, and leaves the model as it found it."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import Encoder, demo_batch, demo_model, hf_loader, hf_model, long_lived, train_recorded
from torch import nn

from lightning_mosaic.engine import Engine, HappensBefore, PendingTensor, RecordingBackend, find_races
from lightning_mosaic.selection import select_modules


def _batch():
    torch.manual_seed(0)
    return torch.randn(2, 3, 16, 16), torch.randn(2, 8, 16), torch.randint(0, 64, (2, 8))


def test_routes_every_call_and_counts_steps():
    model = demo_model()
    engine = Engine()
    engine.attach(select_modules(model))
    for _ in range(3):
        with engine.step():
            model(*_batch())
    assert dict(engine.calls) == {"vision": 3, "audio": 3, "projector": 3, "llm": 3}
    assert engine.step_calls == 3
    engine.detach()
    model(*_batch())
    assert engine.calls["vision"] == 3, "detached: calls are no longer routed"


def test_attach_does_not_wrap_and_detach_restores():
    model = demo_model()
    keys, types = list(model.state_dict()), [type(m) for m in model.modules()]
    expected = model(*_batch())
    engine = Engine()
    engine.attach(select_modules(model))
    assert list(model.state_dict()) == keys and [type(m) for m in model.modules()] == types
    assert torch.equal(model(*_batch()), expected), "the inline backend computes the same numbers"
    engine.detach()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert "forward" not in model.vision.__dict__


def test_attach_twice_is_an_error():
    engine = Engine()
    engine.attach(select_modules(demo_model()))
    with pytest.raises(RuntimeError, match=r"already attached to \['vision', 'audio', 'projector', 'llm'\]"):
        engine.attach(select_modules(demo_model()))


def test_a_copy_of_an_attached_engine_is_a_new_detached_one():
    model = demo_model()
    engine = Engine()
    engine.attach(select_modules(model))
    with engine.step():
        model._loss(demo_batch(1))
    for copied in (pickle.loads(pickle.dumps(engine)), copy.deepcopy(engine)):
        assert isinstance(copied, Engine) and copied is not engine
        assert not copied.attached and copied.modules == {} and copied.step_calls == 0
    assert engine.attached and engine.step_calls == 1, "the run's engine is untouched"


def test_step_counts_even_when_the_step_raises():
    engine = Engine()
    with pytest.raises(ZeroDivisionError), engine.step():
        1 / 0  # noqa: B018
    assert engine.step_calls == 1


# ---------------------------------------------------------------- the sync protocol, on the recording fake


def _forward(log, stream):
    return [
        i for i, e in enumerate(log) if e.kind == "launch" and e.stream == stream and e.phase == "forward"
    ]


def _assert_race_free(engine, model):
    races = find_races(engine.backend.log, long_lived(model))
    assert not races, "\n".join(r.describe(engine.backend.log) for r in races[:5])


def test_two_encoder_model_is_race_free_and_its_encoders_concurrent():
    model = demo_model()
    engine = train_recorded(model, lambda step: model._loss(demo_batch(step)), steps=2)
    _assert_race_free(engine, model)
    fresh = demo_model()
    one = train_recorded(fresh, lambda step: fresh._loss(demo_batch(step)), steps=1)
    log = one.backend.log
    hb = HappensBefore(log)
    vision, audio = one.backend.launches("vision", "forward"), one.backend.launches("audio", "forward")
    assert vision and audio
    assert hb.concurrent(vision, audio), (
        "the audio encoder never waits for the vision encoder, nor vice versa"
    )
    projector = one.backend.launches("projector", "forward")
    assert all(hb.ordered(v, p) for v in vision for p in projector), (
        "the projector waits for the vision encoder"
    )
    backward = {e.stream for e in log if e.kind == "launch" and e.phase == "backward"}
    assert {"vision", "audio", "projector", "llm"} <= backward, "backward runs on the units' streams"


def test_hugging_face_model_is_race_free_and_its_encoders_concurrent():
    model = hf_model()
    batches = list(hf_loader(batch_size=2, num_samples=4))
    engine = train_recorded(model, lambda step: model(**batches[step]).loss, steps=2)
    _assert_race_free(engine, model)
    log = engine.backend.log
    first_backward = next(i for i, e in enumerate(log) if e.phase == "backward")
    vision = [i for i in engine.backend.launches("vision", "forward") if i < first_backward]
    audio = [i for i in engine.backend.launches("audio", "forward") if i < first_backward]
    assert HappensBefore(log).concurrent(vision, audio)


class NoPendingEngine(Engine):
    """Deliberately broken: hands back unit outputs as plain tensors, so nobody waits for them."""

    def _pending(self, tensor, done, stream):
        return tensor


def test_the_race_checker_catches_a_broken_protocol():
    model = demo_model()
    engine = train_recorded(
        model, lambda step: model._loss(demo_batch(step)), steps=1, engine=NoPendingEngine()
    )
    races = find_races(engine.backend.log, long_lived(model))
    assert races and {r.kind for r in races} == {"read-after-write"}
    assert any("aten.cat" in engine.backend.log[r.later].op for r in races), (
        "torch.cat reads unfinished outputs"
    )


class Units(nn.Module):
    """Units whose outputs come nested, are used twice, are never used, or are read by user code first."""

    def __init__(self) -> None:
        super().__init__()
        self.nested = Nested()
        self.shared = Encoder()
        self.unused = Encoder()
        self.frozen = Encoder().requires_grad_(False)
        self.head = Encoder()
        self.seen: list = []

    def forward(self, x):
        out = self.nested(x)
        self.seen = [out["a"], out["b"][0], out["b"][1][0], out["c"].last_hidden_state]
        first, second = self.shared(x), self.shared(out["a"])  # one unit, called twice
        self.kept = self.unused(x)  # output never used during the step (read after it, by user code)
        frozen = self.frozen(x)
        scale = first.mean()  # consumed first by user code, not by a unit
        hidden = torch.cat([second, frozen, out["c"].last_hidden_state], dim=1)[:, :8] * scale
        return self.head(hidden).pow(2).mean()


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        from transformers.modeling_outputs import BaseModelOutput

        y = self.fc(x)
        return {"a": y, "b": (y * 2, [y + 1]), "c": BaseModelOutput(last_hidden_state=y - 1)}


def _units_run(engine_cls=Engine, steps=2) -> tuple[Units, Engine]:
    model = Units()
    data = [torch.randn(2, 8, generator=torch.Generator().manual_seed(s)) for s in range(steps)]
    engine = train_recorded(
        model,
        lambda step: model(data[step]),
        steps=steps,
        engine=engine_cls(),
        after_step=lambda: model.kept.sum(),
    )
    return model, engine


def test_nested_repeated_unused_frozen_and_user_consumed_outputs_are_race_free():
    model, engine = _units_run()
    _assert_race_free(engine, model)
    assert dict(engine.calls) == {"nested": 2, "shared": 4, "unused": 2, "frozen": 2, "head": 2}


def test_nested_outputs_keep_their_containers_and_are_pending_during_the_step():
    model = Units()
    engine = Engine()
    engine.attach(select_modules(model), backend=RecordingBackend())
    captured = {}
    model.nested.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    with engine.step():
        model(torch.randn(2, 8))
        out = captured["out"]
        assert type(out) is dict and type(out["b"]) is tuple and type(out["b"][1]) is list
        assert type(out["c"]).__name__ == "BaseModelOutput"
        assert all(type(t) is PendingTensor for t in model.seen)
    assert all(type(t) is torch.Tensor for t in model.seen), "the step's end retires every pending output"


def test_user_code_waits_for_the_output_it_reads_first():
    _, engine = _units_run(steps=1)
    log = engine.backend.log
    hb = HappensBefore(log)
    mean = next(i for i, e in enumerate(log) if e.stream == "caller" and "aten.mean" in e.op)
    shared, unused = (
        engine.backend.launches("shared", "forward"),
        engine.backend.launches("unused", "forward"),
    )
    assert all(hb.ordered(i, mean) for i in shared[:2]), "first.mean() waits for the shared unit"
    assert not any(hb.ordered(i, mean) for i in unused), "nobody waits for unused outputs"


class NoJoinEngine(Engine):
    """Deliberately broken: never makes the caller's stream wait for the units (retires shells only)."""

    def join(self):
        self._dirty.clear()
        super().join()


def test_without_the_join_user_code_after_the_step_races_with_an_unused_output():
    model, engine = _units_run(NoJoinEngine, steps=2)
    log = engine.backend.log
    races = find_races(log, long_lived(model))
    assert races and {r.kind for r in races} == {"read-after-write"}
    assert {log[r.earlier].stream for r in races} == {"unused"}, (
        "nobody waited for the unit whose output was unused"
    )
    assert {(log[r.later].stream, log[r.later].phase) for r in races} == {("caller", "other")}, (
        "read after the step"
    )
    assert type(model.kept) is torch.Tensor, "retired all the same"


def test_frozen_units_outputs_have_no_grad_and_stay_race_free():
    model = demo_model(freeze_vision=True)
    engine = train_recorded(model, lambda step: model._loss(demo_batch(step)), steps=2)
    _assert_race_free(engine, model)
    backward = {e.stream for e in engine.backend.log if e.kind == "launch" and e.phase == "backward"}
    assert "vision" not in backward and "audio" in backward


def test_a_forward_that_raises_restores_the_callers_stream():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            raise RuntimeError("boom")

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.boom = Boom()

    root = Root()
    backend = RecordingBackend()
    engine = Engine()
    engine.attach(select_modules(root), backend=backend)
    with pytest.raises(RuntimeError, match="boom"), engine.step():
        root.boom(torch.ones(2))
    assert backend.current_stream() is backend.caller


def test_a_unit_called_twice_per_step_waits_for_its_second_input():
    model, engine = _units_run(steps=1)
    log = engine.backend.log
    hb = HappensBefore(log)
    shared = engine.backend.launches("shared", "forward")
    half = len(shared) // 2
    first_call, second_call = shared[:half], shared[half:]
    assert first_call and second_call
    nested = engine.backend.launches("nested", "forward")
    assert all(hb.ordered(n, s) for n in nested for s in second_call), "the 2nd call consumes nested's output"
    done_events = [e.event for e in log if e.kind == "record" and e.stream == "shared"]
    assert len(done_events) >= 2 and len(set(done_events)) == len(done_events), "one done-event per call"
    _assert_race_free(engine, model)


# ---------------------------------------------------------------- data flow that bypasses the outputs


class SideEffects(nn.Module):
    """``scale`` changes its input in place and returns nothing; ``cache`` keeps its features in an
    attribute and returns nothing; user code reads both after the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = Scale()
        self.cache = Cache()
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0  # the caller's own tensor
        self.scale(x)
        self.cache(x)
        return self.head(x + self.cache.features).sum()


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> None:
        x.mul_(self.weight)


class Cache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> None:
        self.features = self.fc(x)


def _side_effects(serial: set[str]) -> tuple[SideEffects, Engine]:
    torch.manual_seed(0)
    model = SideEffects()
    engine = Engine()
    engine.serial = serial
    batch = torch.randn(4, 8)
    return model, train_recorded(model, lambda step: model(batch), steps=2, engine=engine)


def test_units_with_side_effects_race_unless_they_run_alone():
    model, engine = _side_effects(set())
    races = find_races(engine.backend.log, long_lived(model))
    assert {engine.backend.log[r.earlier].stream for r in races} >= {"scale", "cache"}
    model, engine = _side_effects({"scale", "cache"})
    assert find_races(engine.backend.log, long_lived(model)) == []
    assert not engine.backend.launches("scale") and not engine.backend.launches("cache"), "run inline"
    assert engine.calls == {"scale": 2, "cache": 2, "head": 2}
