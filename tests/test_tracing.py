"""Tracing the module graph from real steps: user code between units, Hugging Face outputs, the engine."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import Encoder, demo_model, hf_loader, hf_model
from torch import nn

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.selection import select_modules
from lightning_mosaic.tracing import trace


def _demo_batch():
    torch.manual_seed(0)
    return torch.randn(2, 3, 16, 16), torch.randn(2, 8, 16), torch.randint(0, 64, (2, 8))


def test_trace_follows_user_code_between_units():
    model = demo_model()
    graph, logits = trace(select_modules(model), lambda: model(*_demo_batch()))
    assert graph.inputs == {"vision": [], "audio": [], "projector": ["vision", "audio"], "llm": ["projector"]}
    assert graph.calls == {"vision": 1, "audio": 1, "projector": 1, "llm": 1}
    assert graph.parameters["projector"] == sum(p.numel() for p in model.projector.parameters())
    assert graph.frozen == []
    assert torch.equal(logits, model(*_demo_batch())), "tracing runs the step unchanged"


def test_trace_leaves_no_hooks_and_no_mode_behind():
    model = demo_model()
    trace(select_modules(model), lambda: model(*_demo_batch()))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not torch._C._len_torch_dispatch_stack()


def test_trace_keeps_eval_fast_paths_bitwise():
    """The tracer is a dispatch mode, so nn.TransformerEncoder's inference fast path is still taken."""
    model = demo_model().eval()
    with torch.no_grad():
        plain = model(*_demo_batch())
        _, traced = trace(select_modules(model), lambda: model(*_demo_batch()))
    assert torch.equal(plain, traced)


def test_trace_hugging_face_model_outputs():
    model = hf_model()
    batch = next(iter(hf_loader()))
    graph, out = trace(select_modules(model), lambda: model(**batch))
    assert graph.inputs == {
        "vision": [],
        "audio": [],
        "vision_proj": ["vision"],
        "audio_proj": ["audio"],
        "llm": ["vision_proj", "audio_proj"],
    }
    assert graph.frozen == ["vision"]
    assert graph.sinks == ["llm"]
    assert torch.equal(out.loss, model(**batch).loss)


class Branches(nn.Module):
    """Units wired through slicing, arithmetic, detach, dict outputs and repeated calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d, self.unused = Encoder(), Encoder(), Encoder(), Encoder(), Encoder()
        self.dict_unit = DictUnit()

    def forward(self, x):
        a = self.a(x)
        b = self.b(x[:, :8] * 2)
        d1 = self.d(x)
        mixed = (a.detach() + 1).reshape(2, 8)
        out = self.dict_unit(mixed)
        d2 = self.d(out["hidden"][:, :8])  # second call of d consumes dict_unit's output
        c = self.c(b.clamp(min=0) + d1)
        return c.sum() + d2.mean()


class DictUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return {"hidden": self.fc(x), "aux": [x.mean()]}


def test_trace_through_slicing_arithmetic_detach_dicts_and_repeated_calls(caplog):
    model = Branches()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        graph, _ = trace(select_modules(model), lambda: model(torch.randn(2, 8)))
    assert graph.modules == ["a", "b", "d", "dict_unit", "c", "unused"]
    assert graph.inputs["dict_unit"] == ["a"]
    assert graph.inputs["c"] == ["b", "d"]
    assert graph.calls["d"] == 2 and graph.calls["unused"] == 0
    assert graph.called == ["a", "b", "d", "dict_unit", "c"]
    # d first ran before dict_unit, so the edge dict_unit -> d would close a cycle: it is dropped, loudly.
    assert graph.inputs["d"] == []
    assert "the edge 'dict_unit' -> 'd' is left out of the module graph" in caplog.text
    assert "called 2x" in graph.describe() and "not called" in graph.describe()


def test_trace_marks_frozen_units():
    model = demo_model(freeze_vision=True)
    graph, _ = trace(select_modules(model), lambda: model(*_demo_batch()))
    assert graph.frozen == ["vision"]
    assert "frozen" in graph.describe()


def test_trace_through_the_engine_with_pending_outputs():
    """Under a concurrent backend units return pending shells; the traced graph is the same."""
    from lightning_mosaic.engine import Engine, RecordingBackend

    model = demo_model()
    units = select_modules(model)
    engine = Engine()
    engine.attach(units, backend=RecordingBackend())
    with engine.step():
        graph, _ = trace(units, lambda: model(*_demo_batch()))
    engine.detach()
    assert graph.inputs == {"vision": [], "audio": [], "projector": ["vision", "audio"], "llm": ["projector"]}


def test_data_flow_that_bypasses_the_outputs_is_found():
    from test_engine import SideEffects

    model = SideEffects()
    graph, _ = trace(select_modules(model), lambda: model(torch.randn(4, 8)))
    assert graph.effects == {
        "scale": "changes its input of shape (4, 8) in place",
        "cache": "keeps tensors in its attribute features (read by the code between units)",
    }
    assert "runs alone: keeps tensors in its attribute features" in graph.describe()
    units = {"sink": _NoTensor(), "enc": Encoder()}
    graph, _ = trace(units, lambda: (units["sink"](torch.randn(2, 8)), units["enc"](torch.randn(2, 8))))
    assert graph.effects == {"sink": "returns no tensor"}
    assert ModuleGraph.from_json(graph.to_json()) == graph


class _NoTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> int:
        return int(self.fc(x).argmax())


class _Deltas(nn.Module):
    """Keeps a cache of its output in an attribute, as Qwen-VL keeps ``rope_deltas``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.deltas: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.deltas = y.sum(0).detach()
        return y


class _ReadsDeltas(nn.Module):
    def __init__(self, read: str | None) -> None:
        super().__init__()
        self.a, self.b, self.read = _Deltas(), nn.Linear(8, 1), read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.read == "glue":
            y = y + self.a.deltas
        elif self.read == "unit":
            return self.b(self.a.deltas).sum() + y.sum()
        return self.b(y).sum()


@pytest.mark.parametrize(
    ("read", "effect"),
    [
        (None, None),
        ("glue", "keeps tensors in its attribute deltas (read by the code between units)"),
        ("unit", "keeps tensors in its attribute deltas (read by unit b)"),
    ],
)
def test_a_kept_attribute_is_an_effect_only_when_something_else_reads_it(read, effect):
    from lightning_mosaic.tracing import Tracer

    model = _ReadsDeltas(read)
    tracer = Tracer(select_modules(model))
    with tracer:
        model(torch.randn(3, 8))
    graph = tracer.graph()
    assert graph.effects.get("a") == effect
    assert tracer.harmless == ({} if effect else {"a": ["deltas"]})
