"""Every example runs on the CPU."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_llava_dotted_modules(capsys):
    module = runpy.run_path(str(EXAMPLES / "llava_dotted_modules.py"))
    strategy = module["main"](["--steps", "2"])
    graph = strategy.graph
    assert graph.inputs == {
        "model.model.vision_tower": [],
        "model.model.multi_modal_projector": ["model.model.vision_tower"],
        "model.model.language_model": ["model.model.multi_modal_projector"],
    }
    assert graph.frozen == ["model.model.vision_tower"]
    assert "Plan for cpu: temporal" in capsys.readouterr().out
