"""``MosaicProfiler``: profile a LightningModule's units during warmup, in any project.

Add it to a Trainer (``callbacks=[MosaicProfiler()]``), with or without ``strategy="mosaic"``.
After ``warmup_steps`` ordinary training steps it records every unit's inputs during one step
(and traces the module graph in it), then, right after that step, replays each unit alone over the
grid (``profiler.py``), saves the profile as JSON and fits a
:class:`~lightning_mosaic.perfmodel.PerfModel`. Training numbers are unchanged: the replay restores
RNG states, buffers and modes and never writes ``.grad``.

It works through a :class:`~lightning_mosaic.session.Session`: under ``MosaicStrategy`` the
strategy's, which the strategy started with this callback's settings, drives and shares
(:meth:`MosaicProfiler.share`); beside any other strategy one of its own, which it drives and which
only profiles and fits. A profile file whose fingerprint (units, parameter shapes and dtypes,
precision) and device match is reused instead of measuring again; one that does not match is
replaced, with a warning; an unreadable or corrupt one is an error naming the file. The profile
also travels in checkpoints, so a resumed run does not profile again. Under DDP, global rank 0
profiles and broadcasts the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import extract_batch_size
from typing_extensions import override

from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.profile import Profile
from lightning_mosaic.profiler import DEFAULT_FRACTIONS
from lightning_mosaic.selection import check_names
from lightning_mosaic.session import ProfileSettings, Session, SessionConfig, Words

if TYPE_CHECKING:
    import lightning.pytorch as pl

LIGHTNING_WORDS = Words(
    plain="plain Lightning",
    budget="MosaicStrategy(profile_seconds=...)",
    repeats="MosaicProfiler(repeats=...)",
)


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

    ``session`` is the session it drives (from ``on_fit_start``); ``profile``, ``perf_model`` and
    ``reused`` (nothing was measured) read it.
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
        self.module_names = check_names(modules)
        self.settings = ProfileSettings(
            path=path,
            warmup_steps=warmup_steps,
            batch_fractions=tuple(batch_fractions),
            quotas=tuple(quotas) if quotas is not None else None,
            warmup=warmup,
            repeats=repeats,
            max_seconds=max_seconds,
            progress=progress,
        )
        self.session: Session | None = None
        self.restored: dict[str, Any] | None = None  # the profile of a checkpoint, until the fit starts
        self._driving = False  # the session is this callback's own (the strategy drives a shared one)

    @property
    def profile(self) -> Profile | None:
        if self.session is None:
            return Profile.from_dict(self.restored) if self.restored is not None else None
        return self.session.profile

    @property
    def perf_model(self) -> PerfModel | None:
        return self.session.perf_model if self.session is not None else None

    @property
    def reused(self) -> bool:
        return self.session is not None and self.session.reused

    def share(self, session: Session) -> None:
        """Report on ``session``: ``MosaicStrategy``'s, started with this callback's settings, which the
        strategy drives."""
        self.session, self.restored, self._driving = session, None, False

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.session, self._driving = None, False  # a new run: the strategy may share its session

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is not None:
            return  # shared by the strategy
        self._driving = True
        strategy = trainer.strategy
        config = SessionConfig(
            modules=self.module_names,
            profile=self.settings.in_directory(trainer.default_root_dir),
            profile_requested=True,
            route=False,
            precision=str(trainer.precision),
            words=LIGHTNING_WORDS,
        )
        self.session = Session(
            pl_module,
            pl_module.device,
            config,
            broadcast=strategy.broadcast,
            is_main=trainer.is_global_zero,
            batch_size_of=extract_batch_size,
        )
        if self.restored is not None:
            self.session.load_state_dict({"profile": self.restored})
            self.restored = None
        self.session.start(fitting=True)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._driving:
            self.session.before_step(trainer.global_step, batch)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._driving:
            self.session.advance(trainer.global_step)  # profiles the step just captured

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._driving:
            self.session.finish(trainer.global_step)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._driving:
            self.session.abort()

    def __getstate__(self) -> dict[str, Any]:
        """A copy (``copy.deepcopy`` of the callbacks during ``fit``, a pickle) keeps the settings and the
        profile measured so far, not the running session: it reports that profile and, given to a
        new ``fit``, reuses it as a checkpoint's."""
        state = self.__dict__.copy()
        if self.session is not None:
            profile = self.session.profile
            state.update(session=None, _driving=False, restored=profile.to_dict() if profile else None)
        return state

    @override
    def state_dict(self) -> dict[str, Any]:
        profile = self.profile
        return {"profile": profile.to_dict() if profile is not None else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict.get("profile")
