"""ModuleGraph: hand-built graphs, queries, JSON, and tracing from real steps."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import Encoder, demo_model, hf_loader, hf_model
from torch import nn

from lightning_mosaic.graph import ModuleGraph, trace
from lightning_mosaic.selection import select_modules

# ---------------------------------------------------------------- by hand


def diamond() -> ModuleGraph:
    return ModuleGraph.from_edges(
        {"vision": [], "audio": [], "projector": ["vision", "audio"], "llm": ["projector", "audio"]},
        frozen=["vision"],
    )


def test_from_edges_queries():
    g = diamond()
    assert g.modules == ["vision", "audio", "projector", "llm"]
    assert g.sources == ["vision", "audio"]
    assert g.sinks == ["llm"]
    assert g.edges == [
        ("vision", "projector"),
        ("audio", "projector"),
        ("projector", "llm"),
        ("audio", "llm"),
    ]
    assert g.consumers("audio") == ["projector", "llm"]
    assert g.ancestors("llm") == {"projector", "vision", "audio"}
    assert g.independent("vision", "audio")
    assert not g.independent("vision", "llm") and not g.independent("llm", "vision")
    assert g.levels() == [["vision", "audio"], ["projector"], ["llm"]]
    assert g.frozen == ["vision"]


def test_topological_order_puts_producers_first():
    g = ModuleGraph.from_edges({"llm": ["proj"], "proj": ["vision"], "vision": []})
    assert g.topological_order() == ["vision", "proj", "llm"]
    assert g.levels() == [["vision"], ["proj"], ["llm"]]


def test_describe_is_readable():
    text = diamond().describe()
    assert text.splitlines()[0] == "ModuleGraph: 4 modules, 4 edges"
    assert "projector  <- vision, audio" in text
    assert "[frozen, source]" in text
    assert "can run side by side: vision | audio" in text
    chain = ModuleGraph.from_edges({"a": [], "b": ["a"]}).describe()
    assert "can run side by side: nothing (a chain)" in chain


def test_json_round_trip():
    g = diamond()
    g.calls = {"vision": 1, "audio": 2, "projector": 1, "llm": 1}
    g.parameters = {"vision": 10, "audio": 20, "projector": 3, "llm": 100}
    assert ModuleGraph.from_json(g.to_json()) == g


@pytest.mark.parametrize(
    ("edges", "kwargs", "message"),
    [
        ({"llm": ["vision"]}, {}, r"module 'llm' consumes unknown module 'vision'; known modules: \['llm'\]"),
        ({"a": ["a"]}, {}, r"module 'a' consumes itself"),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, {}, r"module graph has a cycle: a -> c -> b -> a"),
        ({"a": [], "b": ["a", "a"]}, {}, r"module 'b' lists a producer twice: \['a', 'a'\]"),
        ({"a": []}, {"frozen": ["z"]}, r"`frozen` names unknown modules \['z'\]"),
    ],
)
def test_invalid_graphs(edges, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModuleGraph.from_edges(edges, **kwargs)


def test_unknown_schema_version():
    data = diamond().to_dict()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match=r"schema version 99 is not supported \(expected 1\)"):
        ModuleGraph.from_dict(data)


def test_query_unknown_module():
    with pytest.raises(KeyError, match=r"unknown module 'text'"):
        diamond().consumers("text")


# ---------------------------------------------------------------- traced from real steps


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
    assert "modules ['unused'] were selected but not called" in caplog.text
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
