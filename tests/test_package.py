"""The package: a core without Lightning, light imports, the strategy registered when Lightning loads."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CORE = [
    "lightning_mosaic",
    "lightning_mosaic.accelerate",
    "lightning_mosaic.devices",
    "lightning_mosaic.engine",
    "lightning_mosaic.graph",
    "lightning_mosaic.microbatch",
    "lightning_mosaic.perfmodel",
    "lightning_mosaic.plan",
    "lightning_mosaic.planner",
    "lightning_mosaic.profile",
    "lightning_mosaic.profiler",
    "lightning_mosaic.selection",
    "lightning_mosaic.session",
    "lightning_mosaic.simulator",
    "lightning_mosaic.tracing",
    "lightning_mosaic.viz",
]


def run(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported yet); fail with its output if it fails."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_core_works_with_lightning_absent():
    run(
        f"""
        import importlib, sys
        sys.modules["lightning"] = sys.modules["pytorch_lightning"] = None  # import lightning -> ImportError
        for name in {CORE!r}:
            importlib.import_module(name)
        assert "lightning" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]

        # the core still runs: a session over a plain torch model, planned from its traced graph
        import torch
        from lightning_mosaic import Session, SessionConfig
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        session = Session(model, torch.device("cpu"), SessionConfig(plan="temporal"))
        session.start(fitting=True)
        with session.step():
            model(torch.randn(3, 4)).sum().backward()
        assert session.planned and session.plan.modules == ["0", "1"], session.plan

        import lightning_mosaic
        try:
            lightning_mosaic.MosaicStrategy
        except ImportError:
            pass
        else:
            raise AssertionError("MosaicStrategy needs Lightning")
        """
    )


def test_planning_from_files_imports_neither_torch_nor_lightning():
    run(
        """
        import sys
        import lightning_mosaic, lightning_mosaic.plan, lightning_mosaic.planner, lightning_mosaic.simulator
        import lightning_mosaic.graph, lightning_mosaic.devices, lightning_mosaic.profile
        import lightning_mosaic.plan_command, lightning_mosaic.show, lightning_mosaic.cli
        heavy = {"torch", "lightning", "sklearn"} & {m.split(".")[0] for m in sys.modules}
        assert not heavy, heavy
        """
    )


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"], ["show", "--help"], ["demo", "--help"]])
def test_cli_help_loads_no_heavy_package(argv):
    done = run(
        f"""
        import sys
        from lightning_mosaic.cli import main
        try:
            main({argv!r})
        except SystemExit as stop:
            assert stop.code in (0, None), stop.code
        heavy = {{"torch", "lightning", "sklearn"}} & {{m.split(".")[0] for m in sys.modules}}
        assert not heavy, heavy
        """
    )
    assert "usage: lightning-mosaic" in done.stdout


@pytest.mark.parametrize("first", ["lightning_mosaic", "lightning", "the strategy class"])
def test_mosaic_is_registered_whichever_is_imported_first(first):
    """Also when the first import is the strategy class itself, which loads Lightning on its way."""
    if first == "the strategy class":
        imports = "from lightning_mosaic import MosaicStrategy\nimport lightning"
        loaded = "True"
    else:
        other = "lightning" if first == "lightning_mosaic" else "lightning_mosaic"
        imports = f"import {first}\nloaded = 'lightning' in sys.modules\nimport {other}"
        loaded = repr(first == "lightning")
    done = run(
        f"""
        import sys
        {imports.replace(chr(10), chr(10) + " " * 8)}
        assert ("lightning" in sys.modules) if {loaded} else True
        from lightning.pytorch import Trainer
        from lightning.pytorch.strategies import StrategyRegistry
        from lightning_mosaic import MosaicStrategy
        assert StrategyRegistry["mosaic"]["strategy"] is MosaicStrategy
        assert StrategyRegistry["mosaic_fork"]["init_params"] == {{"start_method": "fork"}}
        trainer = Trainer(strategy="mosaic", accelerator="cpu", devices=1, logger=False)
        assert isinstance(trainer.strategy, MosaicStrategy)
        """
    )
    assert "could not be registered" not in done.stderr


def test_a_registration_that_fails_is_logged_and_lightning_still_imports():
    done = run(
        """
        import sys
        import lightning_mosaic
        sys.modules["lightning_mosaic.lightning.strategy"] = None  # the strategy cannot be imported
        import lightning.pytorch
        from lightning.pytorch.strategies import StrategyRegistry
        assert "mosaic" not in StrategyRegistry
        """
    )
    registered = "strategy='mosaic' could not be registered with lightning.pytorch (ModuleNotFoundError"
    assert registered in done.stderr
    assert "pass strategy=lightning_mosaic.lightning.MosaicStrategy() instead" in done.stderr


def test_lazy_names():
    import lightning_mosaic

    assert set(lightning_mosaic.__all__) <= set(dir(lightning_mosaic))
    assert lightning_mosaic.Plan.__module__ == "lightning_mosaic.plan"
    with pytest.raises(AttributeError, match="has no attribute 'Planner'"):
        lightning_mosaic.Planner  # noqa: B018


def test_modules_import_each_other_in_one_direction():
    """No import cycle among the package's modules (module-level imports, type-checking ones aside)."""
    import ast
    from pathlib import Path

    root = Path(__file__).parent.parent / "lightning_mosaic"
    names = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}  # fmt: skip
    imports: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("lightning_mosaic"):
                    targets = [f"{sub.module}.{alias.name}" for alias in sub.names]
                    found |= {t for t in targets if t in names} or {sub.module}
                elif isinstance(sub, ast.Import):
                    found |= {a.name for a in sub.names if a.name in names}
        imports[name] = found - {name}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for nxt in imports.get(stack.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    packages = {n for n, p in names.items() if p.name == "__init__.py"}
    cycles = [
        (a, b)
        for a in imports
        for b in imports[a]
        if reaches(b, a) and not (a in packages and b.startswith(f"{a}."))  # a package exporting its modules
    ]
    assert not cycles, cycles
    assert imports["lightning_mosaic.graphcost"] == set(), "the cost of graphs needs nothing of the package"
    assert imports["lightning_mosaic.simulator"] == {
        "lightning_mosaic.graphcost",
        "lightning_mosaic.schedule",
    }, "the simulator needs nothing of the package but the schedule and what graphs cost"
    assert imports["lightning_mosaic.schedule"] == set(), "the schedule is plain data and its order"
    assert "lightning_mosaic.planner" not in imports["lightning_mosaic.plan"]


def test_the_layers_of_the_architecture_hold():
    """The contracts in pyproject.toml ([tool.importlinter]): the core imports no training framework,
    data flows one way through the layers, the session's components sit under what uses them."""
    from pathlib import Path

    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "3 kept" in done.stdout
