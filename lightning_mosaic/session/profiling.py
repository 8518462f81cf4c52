"""Profiling within a run: wait for the warmup, record one step's unit inputs, replay, fit.

:class:`Profiling` owns the profiling stage (:class:`Stage`), the recorder of unit inputs, the
profile and its fitted performance model. Its transitions, each in one method:
``OFF | WARMUP`` (:meth:`Profiling.begin`: nothing to profile, or plain steps until
``warmup_steps`` optimizer steps are done; a matching profile on file or in a checkpoint skips to
``PROFILED``), ``WARMUP -> CAPTURING`` (:meth:`record`: the next training step's unit inputs are
recorded), ``CAPTURING -> CAPTURED`` (:meth:`close`: every unit the graph knows was seen, or
``MAX_CAPTURE_STEPS`` steps were recorded), ``CAPTURED -> PROFILED | OFF`` (:meth:`measure`: replayed
on the main process, broadcast, fitted; a failure ends profiling). Only the main process measures.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from lightning_mosaic._logging import get_logger
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.engine.graphs import Capture
from lightning_mosaic.inputs import InputCapture
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.profile import Profile, ProfileError, fingerprint, precision_of
from lightning_mosaic.profiler import profile_units
from lightning_mosaic.session.config import ProfileSettings
from lightning_mosaic.session.units import Units

log = get_logger("lightning_mosaic.session")
MAX_CAPTURE_STEPS = 8  # training steps recorded at most, waiting for every unit of the graph to run


class Stage(enum.Enum):
    """Where a run's profiling stands (see the module docstring)."""

    OFF = "off"
    WARMUP = "warmup"
    CAPTURING = "capturing"
    CAPTURED = "captured"
    PROFILED = "profiled"


class Profiling:
    """The profile of one model's units in one run; see the module docstring.

    ``profile``, ``perf_model`` and ``reused`` (the profile was not measured in this run) are what it
    has; ``batch_size`` is the batch the recorded step's units saw.
    """

    def __init__(
        self,
        settings: ProfileSettings,
        precision: str,
        device: torch.device,
        broadcast: Callable[[Any], Any],
        is_main: bool,
    ) -> None:
        self.settings = settings
        self.precision = precision
        self.device = device
        self.broadcast = broadcast
        self.is_main = is_main
        self.stage = Stage.OFF
        self.profile: Profile | None = None
        self.perf_model: PerfModel | None = None
        self.reused = False
        self.recorder: InputCapture | None = None
        self.recording = False  # this training step's inputs are being recorded
        self.recorded_steps = 0
        self.batch_size = 0

    def configure(self, settings: ProfileSettings, precision: str) -> None:
        """A new run's settings and precision (the profile at hand is kept, and checked at :meth:`begin`)."""
        self.settings, self.precision = settings, precision

    def report(self, profile: Profile) -> None:
        """Report ``profile`` (a checkpoint's, whose plan applies) without fitting or measuring."""
        self.profile, self.reused = profile, True

    # ------------------------------------------------------------------ transitions

    def begin(self, wanted: bool, units: Units, checkpoint: Profile | None = None) -> None:
        """A run starts: profile it (``wanted``) unless a profile is at hand or matches from the
        checkpoint or the settings' file."""
        if not wanted:
            self.stage = Stage.OFF
            return
        if self.profile is not None:
            self.stage = Stage.PROFILED
            return
        candidates: list[tuple[str, Profile]] = []
        if checkpoint is not None:
            candidates.append(("the checkpoint", checkpoint))
        path = self.settings.path
        if path is not None and os.path.exists(path):
            try:
                candidates.append((path, Profile.load(path)))
            except ProfileError as err:
                log.warning(f"{err}; it is not reused, and a new profile replaces it")
        found = self.matching(candidates, units)
        if found is not None:
            self.use(found, reused=True)
        else:
            self.stage = Stage.WARMUP

    def due(self, steps_done: int) -> bool:
        """Whether the step starting after ``steps_done`` optimizer steps is to be recorded."""
        return self.stage is Stage.WARMUP and steps_done >= self.settings.warmup_steps

    def record(self, units: Units, batch_size: int) -> None:
        """Record the units' inputs from the next training step on (``batch_size``: what they see)."""
        self.batch_size = batch_size
        self.recorder, self.recorded_steps = InputCapture(units.modules), 0
        self.stage = Stage.CAPTURING

    def open(self) -> bool:
        """A training step starts: record it if a recording is due; True while recording."""
        if self.stage is not Stage.CAPTURING or self.recorder is None:
            return False
        if not self.recording:
            self.recorder.start()  # again, when the units of the steps before were not all seen
            self.recording = True
        return True

    def close(self, wanted: set[str]) -> None:
        """The recorded step is over: stop recording, for good once every unit of ``wanted`` was seen
        or after ``MAX_CAPTURE_STEPS`` steps (the main process decides)."""
        if self.recorder is None or not self.recording:
            return
        self.recorder.stop()
        self.recording = False
        self.recorded_steps += 1
        if self.stage is not Stage.CAPTURING:
            return
        missing = sorted(wanted - set(self.recorder.captured))
        more = bool(missing) and self.recorded_steps < MAX_CAPTURE_STEPS
        if not self.broadcast(more if self.is_main else None):
            self.stage = Stage.CAPTURED
        elif self.is_main:
            log.info(f"units {missing} did not run in the captured step; recording the next one too")

    def measure(
        self,
        units: Units,
        paused: Callable[[], AbstractContextManager[Any]] | None,
        graph_capture: Capture | None,
    ) -> str | None:
        """Replay the recorded units on the main process (inside ``paused()``: outside the engine),
        share the profile and fit it. Returns why no profile came of it (None: one did)."""
        recorder, self.recorder = self.recorder, None
        assert recorder is not None
        data = None
        if self.is_main:
            try:
                with paused() if paused is not None else nullcontext():
                    alone = units.alone
                    profile = profile_units(
                        units.modules,
                        recorder.captured,
                        self.batch_size,
                        calls=dict(recorder.calls),
                        precision=precision_of(self.precision),
                        capture=graph_capture,
                        graph_units=[u for u in units.modules if u not in alone],
                        **self.settings.grid(),
                    )
            except Exception as err:  # profiling is optional: it never ends a run
                data = {"error": f"{type(err).__name__}: {err}"}
            else:
                profile.graph = units.graph
                log.info(f"{profile.describe()}{self._save(profile)}")
                data = {"profile": profile.to_dict()}
        data = self.broadcast(data)
        if "error" in data:
            self.stage = Stage.OFF
            return f"profiling failed ({data['error']})"
        self.use(Profile.from_dict(data["profile"]), reused=False)
        return None

    def use(self, profile: Profile, reused: bool) -> None:
        """Take ``profile`` and fit the performance model to it (None when none fits: said)."""
        self.profile, self.reused, self.stage = profile, reused, Stage.PROFILED
        try:
            self.perf_model = PerfModel(held_out=True).fit(profile)
        except ValueError as err:  # e.g. a module with no feasible point
            log.warning(f"no performance model could be fitted to the profile: {err}")
            self.perf_model = None
            return
        if self.is_main:
            log.info(self.perf_model.describe())

    def abort(self) -> None:
        """Stop recording, whatever the stage; a recording in progress is started again later."""
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder = None
        self.recording = False
        if self.stage in (Stage.CAPTURING, Stage.CAPTURED):
            self.stage = Stage.WARMUP

    def stop(self) -> None:
        """Nothing more is profiled in this run."""
        self.abort()
        self.stage = Stage.OFF

    # ------------------------------------------------------------------ helpers

    def matching(self, candidates: Sequence[tuple[str, Profile]], units: Units) -> Profile | None:
        """The first ``(source, profile)`` measured for these units on this device; warns of the others."""
        spec = DeviceSpec.from_current(self.device)
        for source, profile in candidates:
            named = units.named(list(profile.fingerprint.get("modules", {}))) or units.modules
            reason = profile.mismatch(
                fingerprint(named, precision_of(self.precision)), spec.name, spec.sm_count
            )
            if reason is None:
                units.take_names(list(named))  # the parts of automatic units, refined when it was measured
                log.info(
                    f"reusing the profile from {source} (measured {profile.created}); not profiling again"
                )
                return profile
            log.warning(f"the profile in {source} does not match this run: {reason}; profiling again")
        return None

    def _save(self, profile: Profile) -> str:
        """Write ``profile`` to the settings' path; what to add to the log line (a failure warns)."""
        path = self.settings.path
        if path is None:
            return ""
        try:
            profile.save(path)
        except OSError as err:
            log.warning(f"the profile could not be written to {path}: {err}; training goes on")
            return ""
        return f"\nprofile saved to {path}"
