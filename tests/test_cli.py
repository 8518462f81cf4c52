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


def test_python_dash_m_runs_the_demo():
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
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ModuleGraph: 4 modules, 3 edges" in done.stdout
    assert "Plan for cpu: temporal" in done.stdout


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
    assert "    SMs   batch     measured    predicted    error" in out
    first = profile.samples[0]
    assert f"{first.quota:>7}  {first.batch:>6}  {'infeasible':>11}  (out of memory)" in out
    rows = [line for line in out.splitlines() if line.strip().endswith("%") and " ms " in line]
    assert len(rows) == len(profile.samples) - 1  # one row per feasible point
    assert "held-out MAPE per module" in out
    assert "  vision  " in out.split("held-out MAPE per module")[1]


def test_show_names_a_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(path)])
    assert exit_info.value.code == 1
    assert f"lightning-mosaic show: profile {path} is not valid JSON" in capsys.readouterr().err
