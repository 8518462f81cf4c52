"""The ``lightning-mosaic`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_mosaic.cli import main


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: lightning-mosaic" in capsys.readouterr().out


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_demo_help_is_the_demo_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "usage: lightning-mosaic demo" in capsys.readouterr().out


def test_python_dash_m_runs_the_demo(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_mosaic",
            "demo",
            "--size",
            "tiny",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    both = done.stdout + done.stderr  # logged (stderr) or printed (stdout), once
    assert both.count("ModuleGraph: 4 modules, 3 edges") == 1 and both.count("Plan for cpu: temporal") == 1


def test_show_prints_measured_vs_held_out_predictions_and_mape(tmp_path, capsys):
    from test_perfmodel import synthetic_profile

    profile = synthetic_profile(0, batches=(8, 16, 32))
    profile.samples[0].feasible, profile.samples[0].seconds = False, None
    profile.samples[0].error = "out of memory"
    path = tmp_path / "profile.json"
    profile.save(path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "profile of 2 modules on synthetic GPU (132 SMs)" in out
    assert "vision / forward" in out and "llm / backward" in out
    assert "    SMs   batch     measured    predicted    error         host" in out
    first = profile.samples[0]
    assert f"{first.quota:>7}  {first.batch:>6}  {'infeasible':>11}  (out of memory)" in out
    rows = [line for line in out.splitlines() if "%  " in line and " ms " in line]
    assert len(rows) == len(profile.samples) - 1  # one row per feasible point
    assert all(row.endswith("          -") for row in rows), "no host time in this profile"
    assert "held-out MAPE per module" in out
    assert "  vision  " in out.split("held-out MAPE per module")[1]
    assert "as CUDA graphs" not in out, "this profile timed no graphs"


def test_show_lists_what_the_cuda_graphs_measured(tmp_path, capsys):
    import dataclasses

    from test_perfmodel import synthetic_profile

    profile = synthetic_profile(0, batches=(8, 16, 32))
    full = [
        s for s in profile.samples if s.batch == 32 and s.quota == profile.capacity and s.module == "vision"
    ]
    profile.graphed = [dataclasses.replace(s, seconds=s.seconds / 4, host_seconds=3e-5) for s in full]
    path = tmp_path / "profile.json"
    profile.save(path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "as CUDA graphs, batch 32 on the whole device (replayed):" in out
    assert "vision / forward: measured" in out and "x0.25 the eager device time, host 0.030 ms" in out


def test_show_flags_a_unit_too_wrong_to_plan_from(tmp_path, capsys):
    from test_perfmodel import synthetic_profile

    from lightning_mosaic.graph import ModuleGraph

    profile = synthetic_profile(0, batches=(8, 16, 32))
    rng = __import__("random").Random(0)
    for s in profile.samples:
        if s.module == "llm":  # measurements all over the place
            s.seconds *= rng.choice([0.2, 1.0, 5.0])
        s.host_seconds = 1e-4
    profile.graph = ModuleGraph.from_edges({"vision": [], "llm": ["vision"]})
    path = tmp_path / "profile.json"
    profile.save(path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    mape = out.split("held-out MAPE per module")[1]
    assert "  llm " in mape and "<- above 25% on the critical path: too wrong to plan from" in mape
    assert "vision" in mape and mape.count("<- above") == 1
    assert "     0.100 ms" in out, "the host time of each point"


def test_show_names_a_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(path)])
    assert exit_info.value.code == 1
    assert f"lightning-mosaic show: profile {path} is not valid JSON" in capsys.readouterr().err


def _profile_with_graph(tmp_path, graph=True):
    from test_perfmodel import synthetic_profile

    from lightning_mosaic.graph import ModuleGraph

    profile = synthetic_profile(0, batches=(8, 16, 32))
    profile.device = "NVIDIA H100 80GB HBM3"
    if graph:
        profile.graph = ModuleGraph.from_edges({"vision": [], "llm": ["vision"]})
    path = tmp_path / "profile.json"
    profile.save(path)
    return path


def test_plan_writes_the_plan_and_a_timeline_png(tmp_path, capsys):
    import matplotlib.image

    from lightning_mosaic.plan import Plan

    profile = _profile_with_graph(tmp_path)
    out, png = tmp_path / "plan.json", tmp_path / "plan.png"
    assert main(["plan", str(profile), "--batch-size", "32", "--out", str(out), "--timeline", str(png)]) == 0
    text = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3: 132 SMs in quotas of 8" in text
    plan = Plan.load(out)
    assert plan.modules == ["vision", "llm"] and plan.device == "NVIDIA H100 80GB HBM3"
    assert plan.predicted_step_s is not None and plan.predicted_step_s <= plan.predicted_temporal_s
    assert matplotlib.image.imread(png).shape[:2] == (700, 1200)  # rows x columns: 12 x 7 inches at 100 dpi
    assert f"timeline written to {png} (1200x700 px)" in text


def test_plan_what_if_is_explicit(tmp_path, capsys):
    profile = _profile_with_graph(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(profile), "--batch-size", "64"])
    assert exit_info.value.code == 2
    assert "at batch 32; planning for NVIDIA H100 80GB HBM3 (132 SMs) at batch 64 extrapolates" in (
        capsys.readouterr().err
    )
    assert main(["plan", str(profile), "--batch-size", "64", "--device", "a100", "--what-if"]) == 0
    out = capsys.readouterr().out
    assert "Plan for NVIDIA A100-SXM4-80GB" in out
    assert "what-if: planned for NVIDIA A100-SXM4-80GB at batch 64 from a profile of NVIDIA H100" in out


def test_a_cpu_profile_plans_no_gpu_even_as_a_what_if(tmp_path, capsys):
    from lightning_mosaic.profile import Profile

    path = _profile_with_graph(tmp_path)
    profile = Profile.load(path)
    profile.device, profile.device_type, profile.quota_unit, profile.capacity = "cpu", "cpu", "thread", 2
    profile.quotas = [q for q in profile.quotas if q <= 2] or [1, 2]
    profile.samples = [s for s in profile.samples if s.quota <= 2]
    profile.save(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(path), "--batch-size", "32", "--device", "h100", "--what-if"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the profile was measured on cpu in threads; it says nothing about NVIDIA H100 80GB HBM3" in err


def test_plan_needs_a_graph(tmp_path, capsys):
    profile = _profile_with_graph(tmp_path, graph=False)
    with pytest.raises(SystemExit):
        main(["plan", str(profile), "--batch-size", "32"])
    assert "holds no module graph; pass --graph GRAPH.json" in capsys.readouterr().err
    graph = tmp_path / "graph.json"
    from lightning_mosaic.graph import ModuleGraph

    graph.write_text(ModuleGraph.from_edges({"vision": [], "llm": ["vision"]}).to_json())
    assert main(["plan", str(profile), "--batch-size", "32", "--graph", str(graph)]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["demo", "--quota", "nosuch=8", "--steps", "1"],
            "lightning-mosaic demo: error: ValueError: `quotas` names unknown modules ['nosuch']",
        ),
    ],
)
def test_an_error_is_one_line_and_exit_status_1(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTNING_MOSAIC_TRACEBACK", raising=False)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message) and err[-1].endswith(
        "(LIGHTNING_MOSAIC_TRACEBACK=1 shows the traceback)"
    )
    assert not any(line.startswith("Traceback") for line in err)
    monkeypatch.setenv("LIGHTNING_MOSAIC_TRACEBACK", "1")
    with pytest.raises(Exception, match=message.split(": ", 3)[-1][:30].replace("[", r"\[")):
        main(argv)


def test_plan_what_if_graphs_compares_with_and_without(tmp_path, capsys):
    import dataclasses

    from lightning_mosaic.plan import Plan
    from lightning_mosaic.profile import Profile

    path = _profile_with_graph(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(path), "--batch-size", "32", "--what-if", "graphs"])
    assert exit_info.value.code == 1
    assert "measured no host (issue) times" in capsys.readouterr().err
    profile = Profile.load(path)
    host = {"vision": 0.05, "llm": 1e-4}  # the vision tower: hundreds of tiny kernels
    profile.samples = [dataclasses.replace(s, host_seconds=host[s.module]) for s in profile.samples]
    profile.save(path)
    out = tmp_path / "plan.json"
    assert main(["plan", str(path), "--batch-size", "32", "--what-if", "graphs", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vision: host 100.000 ms" in text and "(launch-bound: graphed, then host 0.120 ms" in text
    assert "(device-bound)" in text
    plan = Plan.load(out)
    assert plan.graphs == ("vision",)
    assert any(n.startswith("what-if graphs:") and "ms with (" in n for n in plan.notes)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(path), "--batch-size", "32", "--what-if", "nosuch"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err
