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
