"""Timelines drawn to PNG files: lanes labelled with what the quotas count."""

from __future__ import annotations

import pytest

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import AnalyticModel
from lightning_mosaic.plan import Phase, Plan

pytest.importorskip("matplotlib")


@pytest.mark.parametrize(("quota_unit", "label"), [("sm", "SMs"), ("thread", "threads")])
def test_lanes_are_labelled_with_what_the_quotas_count(tmp_path, monkeypatch, quota_unit, label):
    import lightning_mosaic.viz as viz

    graph = ModuleGraph.from_edges({"vision": [], "audio": [], "head": ["vision", "audio"]})
    model = AnalyticModel(
        lambda module, pass_, batch, quota: 0.01 * batch / quota,
        modules=["vision", "audio", "head"],
        capacity=8,
        quota_unit=quota_unit,
    )
    plan = Plan(
        (Phase({"vision": 4, "audio": 4}), Phase({"head": None})),
        device="cpu" if quota_unit == "thread" else "H200",
        method="heuristic",
    )
    labels = []
    draw = viz._draw
    monkeypatch.setattr(viz, "_draw", lambda ax, timeline, unit: (draw(ax, timeline, unit), labels.extend(
        t.get_text() for t in ax.get_yticklabels())))  # fmt: skip
    width, height = viz.draw_plan(graph, model, plan, 8, tmp_path / "plan.png")
    assert (tmp_path / "plan.png").stat().st_size > 0 and (width, height) == (1200, 700)
    assert f"vision (4 {label})" in labels and f"head (8 {label})" in labels
    other = "threads" if label == "SMs" else "SMs"
    assert not any(other in text for text in labels)


def test_graphed_units_are_labelled(tmp_path, monkeypatch):
    from lightning_mosaic import viz
    from lightning_mosaic.simulator import Timeline

    graph = ModuleGraph.from_edges({"vision": [], "head": ["vision"]})
    model = AnalyticModel(lambda m, p, b, q: 0.01 * b / q, modules=["vision", "head"], capacity=8)
    plan = Plan((Phase({"vision": None}), Phase({"head": None})), graphs=("vision",))
    labels, timelines = [], []
    draw = viz._draw
    monkeypatch.setattr(viz, "_draw", lambda ax, timeline, unit: (draw(ax, timeline, unit), timelines.append(
        timeline), labels.extend(t.get_text() for t in ax.get_yticklabels())))  # fmt: skip
    viz.draw_plan(graph, model, plan, 8, tmp_path / "plan.png")
    assert "vision (8 SMs, graph)" in labels and "head (8 SMs)" in labels
    assert "vision (8 SMs)" in labels, "the temporal baseline replays no graph"
    assert Timeline.from_json(timelines[1].to_json()) == timelines[1]
