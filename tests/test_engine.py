"""Engine: hooks every unit without wrapping it, and leaves the model as it found it."""

from __future__ import annotations

import pickle

import pytest
import torch
from helpers import demo_model

from lightning_mosaic.engine import Engine
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
    assert engine.steps == 3
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


def test_pickle_only_when_detached():
    engine = Engine()
    assert pickle.loads(pickle.dumps(engine)).steps == 0
    engine.attach(select_modules(demo_model()))
    with pytest.raises(RuntimeError, match="an attached engine cannot be pickled"):
        pickle.dumps(engine)


def test_step_counts_even_when_the_step_raises():
    engine = Engine()
    with pytest.raises(ZeroDivisionError), engine.step():
        1 / 0  # noqa: B018
    assert engine.steps == 1
