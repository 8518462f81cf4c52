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
