"""Every example runs on the CPU."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_llava_dotted_modules(tmp_path, capsys):
    module = runpy.run_path(str(EXAMPLES / "llava_dotted_modules.py"))
    strategy = module["main"](["--tiny", "--root", str(tmp_path)])
    graph = strategy.graph
    assert graph.inputs == {
        "model.model.vision_tower": [],
        "model.model.multi_modal_projector": ["model.model.vision_tower"],
        "model.model.language_model": ["model.model.multi_modal_projector"],
    }
    assert graph.frozen == ["model.model.vision_tower"]
    assert strategy.planned and strategy.session.profile is not None  # the CPU rehearsal of the whole loop
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert {"mosaic_plan.json", "mosaic_profile.json"} <= {p.name for p in log_dir.iterdir()}
    assert f"plan, profile and timeline: {log_dir}" in capsys.readouterr().out


def _main(name):
    return runpy.run_path(str(EXAMPLES / name))["main"]


def test_train_vlm_tiny_profiles_plans_and_trains(tmp_path):
    strategy = _main("train_vlm.py")(["--tiny", "--root", str(tmp_path)])
    assert strategy.planned and strategy.session.profile is not None
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert {"mosaic_plan.json", "mosaic_profile.json"} <= {p.name for p in log_dir.iterdir()}


def test_callback_only_reports_a_plan(tmp_path, capsys):
    report = _main("callback_only.py")(["--tiny", "--root", str(tmp_path)])
    assert list(report) == ["cpu"] and report["cpu"].device == "cpu"
    assert "Plan for cpu" in capsys.readouterr().out


def test_lightning_cli_with_the_avlm_config():
    from lightning_mosaic import MosaicStrategy

    cli = _main("lightning_cli.py")(["fit", "--config", str(EXAMPLES / "config_avlm.yaml"), "--tiny"])
    assert isinstance(cli.trainer.strategy, MosaicStrategy) and cli.trainer.global_step == 3
    assert type(cli.model).__name__ == "AudioVisionLanguageModel" and cli.model.size == "tiny"


def test_accelerate_vlm_tiny(tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        mosaic = _main("accelerate_vlm.py")(["--tiny", "--root", str(tmp_path)])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert mosaic.planned and mosaic.profile is not None and mosaic.plan.micro_batches == 1


def test_hf_vlm_finds_the_qwen_vl_units_with_nothing_but_strategy_mosaic(tmp_path):
    trainer = _main("hf_vlm.py")(["--root", str(tmp_path), "--steps", "3", "--batch-size", "2"])
    assert list(trainer.strategy.units) == [
        "model.model.visual",
        "model.model.language_model",
        "model.lm_head",
    ]
    assert trainer.strategy.graph.inputs["model.model.language_model"] == ["model.model.visual"]
    assert trainer.global_step == 3
