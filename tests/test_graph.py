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


# ---------------------------------------------------------------- steps that call different units


def test_called_and_subgraph():
    g = ModuleGraph(
        inputs={"vision": [], "text": [], "fuse": ["vision", "text"], "val_head": []},
        frozen=["vision"],
        calls={"vision": 1, "text": 1, "fuse": 2, "val_head": 0},
    )
    assert g.called == ["vision", "text", "fuse"]
    sub = g.subgraph(g.called)
    assert sub.modules == ["vision", "text", "fuse"] and sub.inputs["fuse"] == ["vision", "text"]
    assert sub.frozen == ["vision"] and sub.calls == {"vision": 1, "text": 1, "fuse": 2}
    assert diamond().called == diamond().modules, "a graph without call counts calls every unit"
    assert g.subgraph(["fuse", "text"]).inputs == {"text": [], "fuse": ["text"]}
    with pytest.raises(ValueError, match=r"subgraph names unknown modules \['audio'\]"):
        g.subgraph(["audio"])


def test_union_of_steps_that_call_other_units():
    """An image-only step and an image-text step: the union has every edge, producers first."""
    images = ModuleGraph(
        inputs={"image": [], "image_head": ["image"], "text": [], "fuse": []},
        calls={"image": 1, "image_head": 1, "text": 0, "fuse": 0},
    )
    pairs = ModuleGraph(
        inputs={"text": [], "image": [], "fuse": ["image", "text"], "image_head": []},
        frozen=["text"],
        calls={"text": 1, "image": 1, "fuse": 1, "image_head": 0},
    )
    both = images.union(pairs)
    assert both.inputs == {"image": [], "image_head": ["image"], "text": [], "fuse": ["image", "text"]}
    assert both.calls == {"image": 1, "image_head": 1, "text": 1, "fuse": 1}
    assert both.frozen == ["text"] and both.called == both.modules
    late = ModuleGraph(inputs={"fuse": [], "image": ["fuse"]})  # fuse feeds image: disagrees into a cycle
    with pytest.raises(ValueError, match="cycle"):
        pairs.union(late)


def test_a_unit_with_side_effects_gets_a_level_of_its_own():
    g = ModuleGraph(
        inputs={"vision": [], "cache": [], "audio": [], "llm": ["vision", "cache", "audio"]},
        frozen=["cache"],
        effects={"cache": "keeps tensors in its attribute features"},
    )
    assert g.levels() == [["vision"], ["cache"], ["audio"], ["llm"]], "audio is called after cache"
    assert g.frozen_sources == [], "a unit that runs alone is never computed one step ahead"
    assert ModuleGraph.from_json(g.to_json()) == g
    assert g.subgraph(["cache", "llm"]).effects == g.effects
    with pytest.raises(ValueError, match=r"`effects` names unknown modules \['text'\]"):
        ModuleGraph(inputs={"a": []}, effects={"text": "returns no tensor"})
