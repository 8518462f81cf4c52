"""``MosaicProfiler``: profile a LightningModule's units during warmup, in any project.

Add it to a Trainer (``callbacks=[MosaicProfiler()]``), with or without ``strategy="mosaic"``.
After ``warmup_steps`` ordinary training steps it records every unit's inputs during one step
(and traces the module graph in it, unless the strategy already has one), then, between that step
and the next, replays each unit alone over the grid (``profiler.py``), saves the profile as JSON
and fits a :class:`~lightning_mosaic.perfmodel.PerfModel`. Training numbers are unchanged: the
replay restores RNG states, buffers and modes and never writes ``.grad``.

A profile file whose fingerprint (units, parameter shapes and dtypes) and device match is reused
instead of measuring again; one that does not match is replaced, with a warning; an unreadable
or corrupt one is an error naming the file. The profile also travels in checkpoints, so a resumed
run does not profile again. Under DDP, global rank 0 profiles and broadcasts the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import extract_batch_size

from lightning_mosaic._logging import get_logger
from lightning_mosaic.graph import ModuleGraph, Tracer
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.pipeline import first_matching, profile_file
from lightning_mosaic.profile import Profile
from lightning_mosaic.profiler import (
    DEFAULT_FRACTIONS,
    InputCapture,
    profile_units,
)
from lightning_mosaic.selection import check_names, select_modules

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch import nn

log = get_logger(__name__)
PROFILE_FILE = "mosaic_profile.json"


class MosaicProfiler(Callback):
    """Profile each unit alone after ``warmup_steps`` steps; see the module docstring.

    Args:
        modules: the units as dotted paths (``None``: the children that own parameters, as the
            strategy selects them).
        warmup_steps: ordinary optimizer steps before the step whose inputs are captured.
        path: the profile file; default ``<default_root_dir>/mosaic_profile.json``.
        batch_fractions: fractions of the batch to replay (default 1/4, 1/2, 1).
        quotas: SM counts (GPU) or thread counts (CPU) to measure, besides the whole device
            (always measured); default a grid from the smallest the hardware allows.
        warmup: untimed runs per grid point.
        repeats: timed runs per grid point (the median is kept; fewer when ``max_seconds`` is short).
        max_seconds: time budget of the whole profile.
        progress: show a progress bar over the grid.

    After profiling (or reusing), ``profile`` holds the :class:`~lightning_mosaic.profile.Profile`,
    ``perf_model`` the fitted model and ``reused`` whether nothing was measured.
    """

    def __init__(
        self,
        modules: Sequence[str] | None = None,
        warmup_steps: int = 3,
        path: str | os.PathLike | None = None,
        batch_fractions: Sequence[float] = DEFAULT_FRACTIONS,
        quotas: Sequence[int] | None = None,
        warmup: int = 2,
        repeats: int = 5,
        max_seconds: float = 60.0,
        progress: bool = True,
    ) -> None:
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be a whole number of steps, 0 or more")
        self.module_names = check_names(modules)
        self.warmup_steps = warmup_steps
        self.path = os.fspath(path) if path is not None else None
        self.options: dict[str, Any] = dict(
            batch_fractions=tuple(batch_fractions),
            quotas=quotas,
            warmup=warmup,
            repeats=repeats,
            max_seconds=max_seconds,
            progress=progress,
        )
        self.profile: Profile | None = None
        self.perf_model: PerfModel | None = None
        self.reused = False
        self.units: dict[str, nn.Module] = {}
        self._capture: InputCapture | None = None
        self._tracer: Tracer | None = None
        self._batch_size = 0
        self._from_checkpoint: dict[str, Any] | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.units = select_modules(pl_module, self.module_names)
        if self.path is None:
            self.path = os.path.join(trainer.default_root_dir, PROFILE_FILE)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.units:
            return
        assert self.path is not None
        candidates = []
        if self._from_checkpoint is not None:
            candidates.append(("the checkpoint", Profile.from_dict(self._from_checkpoint)))
        candidates += profile_file(self.path)  # a corrupt file raises, naming it
        profile = first_matching(candidates, self.units, pl_module.device)
        if profile is not None:
            self._use(profile, reused=True)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.profile is not None or self._capture is not None or not self.units:
            return
        if trainer.global_step < self.warmup_steps:
            return
        # Under a plan with micro-batches the units see the first (largest) micro-batch.
        split = getattr(trainer.strategy, "active_micro_batches", 1)
        self._batch_size = -(-extract_batch_size(batch) // split)
        self._capture = InputCapture(self.units)
        self._capture.start()
        self._tracer = None
        if self._strategy_graph(trainer) is None:
            self._tracer = Tracer(self.units)
            self._tracer.__enter__()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        capture = self._capture
        if capture is None:
            return
        capture.stop()
        self._capture = None
        graph = self._strategy_graph(trainer)
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            graph, self._tracer = self._tracer.graph(), None
        data = None
        if trainer.is_global_zero:
            engine = getattr(trainer.strategy, "engine", None)
            paused = engine.paused() if hasattr(engine, "paused") else nullcontext()
            with paused:
                profile = profile_units(
                    self.units, capture.captured, self._batch_size, calls=dict(capture.calls), **self.options
                )
            assert self.path is not None
            profile.graph = graph.to_dict() if graph is not None else None
            profile.save(self.path)
            log.info(f"{profile.describe()}\nprofile saved to {self.path}")
            data = profile.to_dict()
        data = trainer.strategy.broadcast(data, src=0)
        self._use(Profile.from_dict(data), reused=False)
        if trainer.is_global_zero and self.perf_model is not None:
            log.info(self.perf_model.describe())

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._capture is not None:
            self._capture.stop()
            self._capture = None
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            self._tracer = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        if self.profile is None and self.units:
            log.warning(
                f"training ended at step {trainer.global_step}, before the profile (warmup_steps="
                f"{self.warmup_steps}); nothing was profiled"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict() if self.profile is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._from_checkpoint = state_dict.get("profile")

    # ------------------------------------------------------------------ internals

    def _strategy_graph(self, trainer: pl.Trainer) -> ModuleGraph | None:
        """The graph the strategy traced (``strategy="mosaic"``), when it is over the same units."""
        graph = getattr(trainer.strategy, "graph", None)
        if isinstance(graph, ModuleGraph) and set(graph.modules) == set(self.units):
            return graph
        return None

    def _use(self, profile: Profile, reused: bool) -> None:
        self.profile, self.reused = profile, reused
        try:
            model = PerfModel().fit(profile)
            model.score()  # held-out accuracy, computed once while the profile is at hand
        except ValueError as err:  # e.g. a module with no feasible point
            log.warning(f"no performance model could be fitted to the profile: {err}")
            return
        self.perf_model = model
