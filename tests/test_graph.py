"""ModuleGraph: hand-built graphs, queries, JSON."""

from __future__ import annotations

import pytest

from lightning_mosaic.graph import ModuleGraph

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


def test_critical_path_is_the_heaviest_chain():
    graph = diamond()  # vision, audio -> projector (also audio) -> llm
    assert graph.critical_path({"vision": 5, "audio": 1, "projector": 1, "llm": 1}) == [
        "vision",
        "projector",
        "llm",
    ]
    assert graph.critical_path({"vision": 1, "audio": 5, "projector": 1, "llm": 1}) == [
        "audio",
        "projector",
        "llm",
    ]
    alone = ModuleGraph.from_edges({"a": [], "b": []})
    assert alone.critical_path({"a": 1.0, "b": 2.0}) == ["b"]
    assert ModuleGraph.from_edges({}).critical_path({}) == []
