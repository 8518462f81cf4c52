"""The demo: trains with strategy="mosaic" on CPU and prints the module graph and the plan."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from lightning_mosaic.demo import SIZES, DemoMultimodalModel, SyntheticMultimodal, main


def test_demo_runs_the_whole_loop_on_cpu_and_writes_the_files(tmp_path, capsys, caplog):
    argv = ["--size", "tiny", "--steps", "6", "--batch-size", "2", "--warmup-steps", "1"]
    with caplog.at_level("INFO", logger="lightning_mosaic"):
        assert main([*argv, "--profile-seconds", "10", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "with backend='cpu'" in out and "6 steps in" in out
    assert "ModuleGraph: 4 modules, 3 edges" in caplog.text and "projector  <- vision, audio" in caplog.text
    assert "profile saved to" in caplog.text and "Plan for cpu" in caplog.text
    assert "the plan in use is the last one logged above" in out
    assert f"files in {tmp_path}/: mosaic_plan.json, mosaic_plan.png, mosaic_profile.json" in out
    assert "routed calls per module: {'vision': 4, 'audio': 4, 'projector': 4, 'llm': 4}" in out


def test_the_demo_prints_the_graph_and_the_plan_once(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "lightning_mosaic", "demo", "--size", "tiny", "--steps", "2",
         "--batch-size", "2", "--backend", "none", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    both = done.stdout + done.stderr
    assert both.count("ModuleGraph: 4 modules, 3 edges") == 1
    assert both.count("Plan for cpu: temporal") == 1, both


def test_demo_with_quotas_on_cpu_says_they_are_ignored(tmp_path, capsys, caplog):
    from lightning_mosaic._logging import _said

    _said.discard("quotas-inline-none")
    with caplog.at_level("WARNING", logger="lightning_mosaic"):
        argv = [
            "--size",
            "tiny",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--quota",
            "vision=32",
            "--backend",
            "none",
        ]
        assert main(argv) == 0
    assert "SM quotas {'vision': 32} are ignored: backend 'none' runs the units inline on cpu" in caplog.text
    assert "routed calls per module: {'vision': 1" in capsys.readouterr().out


def test_demo_with_thread_quotas_in_the_cpu_rehearsal_says_what_they_are(tmp_path, caplog):
    with caplog.at_level("INFO", logger="lightning_mosaic"):
        argv = ["--size", "tiny", "--steps", "1", "--batch-size", "2", "--quota", "vision=1"]
        assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "thread quotas {'vision': 1}: the profiler measured the units under such quotas" in caplog.text
    assert "are ignored" not in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_demo_on_a_gpu_that_is_not_there_says_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--accelerator", "gpu", "--steps", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--accelerator gpu: this torch (" in err and "sees no CUDA GPU; use --accelerator cpu" in err


def test_demo_frozen_vision(tmp_path, caplog):
    argv = ["--size", "tiny", "--steps", "2", "--batch-size", "2", "--freeze-vision", "--backend", "none"]
    with caplog.at_level("INFO", logger="lightning_mosaic"):
        assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "vision                       [14.8k params, frozen" in caplog.text


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


def test_demo_graphs_on_without_a_gpu_says_they_run_eagerly(tmp_path, capsys, caplog):
    argv = ["--size", "tiny", "--steps", "2", "--batch-size", "2", "--plan", "temporal", "--graphs", "on"]
    with caplog.at_level("INFO", logger="lightning_mosaic"):
        assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "graphs=True: CUDA graphs need a CUDA device; the units run eagerly on cpu" in caplog.text
    with pytest.raises(SystemExit):
        main([*argv[:-1], "maybe"])
    assert "argument --graphs: invalid choice: 'maybe'" in capsys.readouterr().err
