"""The demo: trains with strategy="mosaic" on CPU and prints the module graph and the plan."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_mosaic.demo import SIZES, DemoMultimodalModel, SyntheticMultimodal, main


def test_demo_trains_and_prints_graph_and_plan(capsys):
    assert main(["--size", "tiny", "--steps", "3", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 steps in" in out
    assert "ModuleGraph: 4 modules, 3 edges" in out
    assert "projector  <- vision, audio" in out
    assert "Plan for cpu: temporal (every module alone on the whole device), 1 micro-batch per step" in out
    assert "routed calls per module: {'vision': 3, 'audio': 3, 'projector': 3, 'llm': 3}" in out


def test_demo_with_quotas_on_cpu_says_they_are_ignored(capsys, caplog):
    from lightning_mosaic._logging import _said

    _said.discard("quotas-inline-none")
    with caplog.at_level("WARNING", logger="lightning_mosaic"):
        assert main(["--size", "tiny", "--steps", "1", "--batch-size", "2", "--quota", "vision=32"]) == 0
    assert "SM quotas {'vision': 32} are ignored: backend 'none' runs the units inline on cpu" in caplog.text
    assert "engine backend: none" in capsys.readouterr().out


def test_demo_frozen_vision(capsys):
    assert main(["--size", "tiny", "--steps", "2", "--batch-size", "2", "--freeze-vision"]) == 0
    assert "frozen" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps and --batch-size must be >= 1, got 0 and 8"),
        (["--size", "huge"], "invalid choice: 'huge'"),
        (["--quota", "vision:32"], "--quota takes MODULE=SMS with a whole number of SMs, got 'vision:32'"),
        (["--backend", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_demo_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_synthetic_data_is_deterministic_and_shaped():
    s = SIZES["tiny"]
    data = SyntheticMultimodal("tiny", num_samples=4)
    a, b = data[1], SyntheticMultimodal("tiny", num_samples=4)[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["pixels"].shape == (3, s.image, s.image)
    assert a["mels"].shape == (s.mels, s.frames)
    assert a["input_ids"].shape == (s.text,) and int(a["input_ids"].max()) < s.vocab
    with pytest.raises(IndexError, match="index 4 out of range for 4 samples"):
        data[4]


def test_unknown_size():
    with pytest.raises(
        ValueError, match=r"unknown demo size 'huge'; choose one of tiny, small, medium, base"
    ):
        DemoMultimodalModel("huge")


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_builds(size):
    with torch.device("meta"):  # shapes only: the base size would take seconds to initialise
        model = DemoMultimodalModel(size)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_inconsistent_sizes_are_rejected():
    base = SIZES["tiny"]
    with pytest.raises(ValueError, match="LLM width 32 is not divisible by its 3 attention heads"):
        dataclasses.replace(base, llm_heads=3)
    with pytest.raises(ValueError, match="image side 16 is not a multiple of the patch side 5"):
        dataclasses.replace(base, patch=5)
