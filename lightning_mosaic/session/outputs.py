"""What a session tells the user: the plan in force (logged once), and the files of a plan.

:class:`Outputs` logs the final plan with the engine's backend once per plan, and writes the plan,
the profile it came from and its timeline picture to the run's directory on the main process. A
file that cannot be written is said once; training goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.engine import Backend, Engine
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.plan import Plan
from lightning_mosaic.profile import Profile
from lightning_mosaic.session.config import PROFILE_FILE

log = get_logger("lightning_mosaic.session")
PLAN_FILE = "mosaic_plan.json"
TIMELINE_FILE = "mosaic_plan.png"


class Outputs:
    """The plan's log line and files for one session (``out_dir``: None writes nothing)."""

    def __init__(self, out_dir: str | None, is_main: bool) -> None:
        self.out_dir = out_dir
        self.is_main = is_main
        self.written: list[str] = []  # the files of the last publish
        self._announced: Plan | None = None

    def announce(self, plan: Plan, engine: Engine | None, asked: str | Backend) -> None:
        """Log ``plan`` and the engine's backend, once per plan."""
        if self._announced is plan:
            return
        self._announced = plan
        if not self.is_main or engine is None:
            return
        line = engine.backend.describe()
        asked = asked if isinstance(asked, str) else asked.name
        if plan.sequential and asked not in ("auto", "none", engine.backend.name):
            line += f" — the plan runs each unit alone: backend={asked!r} has nothing to run side by side"
        log.info(f"{plan.describe()}\n{line}")

    def publish(
        self,
        plan: Plan,
        graph: ModuleGraph,
        profile: Profile | None,
        model: PerfModel | None,
        profile_path: str | None,
    ) -> list[str]:
        """Write ``plan`` (with ``profile`` and the timeline) to ``out_dir`` on the main process; the
        names written (the profile counts when it already lies there, at ``profile_path``)."""
        if not self.is_main or self.out_dir is None:
            return []
        out_dir = self.out_dir
        written: list[str] = []

        def write(name: str, save: Callable[[str], Any]) -> None:
            try:
                save(os.path.join(out_dir, name))
                written.append(name)
            except ImportError as err:
                warn_once(log, f"unwritten-{name}", f"{name} is not written: {err}")
            except Exception as err:  # an optional output: training goes on
                warn_once(
                    log,
                    f"unwritten-{name}-{out_dir}",
                    f"{name} could not be written to {out_dir} ({type(err).__name__}: {err});"
                    " training goes on",
                )

        write(PLAN_FILE, plan.save)
        if profile is not None:
            target = os.path.join(out_dir, PROFILE_FILE)
            if os.path.abspath(target) != os.path.abspath(profile_path or ""):
                write(PROFILE_FILE, profile.save)
            else:
                written.append(PROFILE_FILE)
            if model is not None:
                from lightning_mosaic.viz import draw_plan

                write(TIMELINE_FILE, lambda path: draw_plan(graph, model, plan, profile.batch_size, path))
        if written:
            log.info(f"{', '.join(written)} written to {out_dir}")
        self.written = written
        return written
