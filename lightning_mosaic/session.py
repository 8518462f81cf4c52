"""The closed loop of one model, framework-free: warmup -> capture -> profile -> fit -> plan -> apply.

A :class:`Session` owns everything mosaic does to one model: its units, the engine that routes their
calls, the traced module graph, the profile and its performance model, and the plan in force. The
training framework only tells it where the loop is; the Lightning strategy, the ``MosaicProfiler``
callback and the Accelerate adapter are such drivers, each a few hooks long:

- ``start(fitting)`` once the model is on its device (and any checkpoint state was loaded);
- ``with session.step(train):`` around each step call (joins the engine, traces the first step);
- ``before_step(steps_done, batch)`` when a training step starts, ``advance(steps_done)`` when one
  is over (after its optimizer step, or at the next start), ``finish(steps_done)`` when training
  ends;
- ``state_dict()`` / ``load_state_dict()`` for checkpoints (the plan and the profile).

Calls are idempotent at a boundary, so two drivers of one session (the strategy and a callback) do
no work twice. Where the processes of a run must agree, the session asks the driver: ``broadcast``
sends the main process's value to every process and ``is_main`` says which process measures,
plans and writes files.

The profiling pipeline moves through :class:`Stage`: ``WARMUP`` (plain steps until
``warmup_steps`` optimizer steps are done), ``CAPTURING`` (one training step's unit inputs are
recorded), ``CAPTURED`` (profiled at the next boundary, on the main process, inside
``engine.paused()``, then broadcast), ``PROFILED`` (a profile and its fitted model are at hand:
measured, reused from a matching file or restored from a checkpoint); ``OFF`` when nothing is to be
profiled. Independently ``planned`` says the plan in force is final: from the start for a plan given
by hand or restored, once the graph is traced for ``"temporal"`` and ``"concurrent"``, and after
the profile for ``"auto"``, whose warmup runs the provisional temporal plan.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.clock import Clock, Marks
from lightning_mosaic.devices import DeviceSpec, device_name
from lightning_mosaic.engine import Backend, Engine, check_backend, make_backend, why_inline
from lightning_mosaic.engine.graphs import Capture, capture_for, check_graphs
from lightning_mosaic.engine.green import check_quotas
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.graphcost import launch_bound
from lightning_mosaic.guard import OTHER, PLAN, STEPS, TEMPORAL, Guard, Verdict
from lightning_mosaic.microbatch import batch_size as default_batch_size
from lightning_mosaic.perfmodel import MAX_MAPE, PerfModel, too_wrong
from lightning_mosaic.plan import Plan, concurrent_plan, temporal_plan
from lightning_mosaic.planner import plan as search_plan
from lightning_mosaic.profile import Profile, ProfileError, fingerprint, precision_of
from lightning_mosaic.profiler import DEFAULT_FRACTIONS, InputCapture, profile_units
from lightning_mosaic.selection import called_units, check_names, select_modules
from lightning_mosaic.tracing import Tracer

log = get_logger(__name__)
T = TypeVar("T")
PLAN_SOURCES = ("auto", "temporal", "concurrent")
PROFILE_FILE = "mosaic_profile.json"
PLAN_FILE = "mosaic_plan.json"
TIMELINE_FILE = "mosaic_plan.png"
CAP = "mosaic_max_micro_batches"
MAX_CAPTURE_STEPS = 8  # training steps recorded at most, waiting for every unit of the graph to run
MAX_RETRACES = 8  # training steps traced at most after the first, for units not seen before
STATE_VERSION = 1


class Stage(enum.Enum):
    """Where a session's profiling stands (see the module docstring)."""

    OFF = "off"
    WARMUP = "warmup"
    CAPTURING = "capturing"
    CAPTURED = "captured"
    PROFILED = "profiled"


@dataclass(frozen=True)
class ProfileSettings:
    """What to profile and how: the file, the warmup, the grid and the time budget, checked at once.

    ``path`` is the profile file (None: the driver's default, next to the logs); ``warmup_steps`` the
    plain optimizer steps before the captured one; ``batch_fractions`` and ``quotas`` the grid (SM
    or thread counts besides the whole device; None: a grid from the smallest the hardware allows);
    ``warmup`` and ``repeats`` the untimed and timed runs per point; ``max_seconds`` the budget of
    the whole profile; ``progress`` a progress bar.
    """

    path: str | None = None
    warmup_steps: int = 3
    batch_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    quotas: tuple[int, ...] | None = None
    warmup: int = 2
    repeats: int = 5
    max_seconds: float = 60.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)):
                raise TypeError(
                    f"the profile path must be a file path (str or os.PathLike) or None, got"
                    f" {type(self.path).__name__}: {self.path!r}"
                )
            object.__setattr__(self, "path", os.fspath(self.path))
            if not self.path or os.path.isdir(self.path):
                raise ValueError(
                    f"the profile path {self.path!r} must name a file (not empty, not a directory)"
                )
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress={self.progress!r} must be True or False")
        _whole("warmup_steps", self.warmup_steps, 0, "steps")
        _whole("warmup", self.warmup, 0, "runs")
        _whole("repeats", self.repeats, 1, "runs")
        fractions = tuple(self.batch_fractions)
        if not fractions or any(
            not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1 for f in fractions
        ):
            raise ValueError(f"batch_fractions={list(fractions)!r} must be numbers in (0, 1]")
        object.__setattr__(self, "batch_fractions", fractions)
        if self.quotas is not None:
            quotas = tuple(self.quotas)
            if not quotas or any(not isinstance(q, int) or isinstance(q, bool) or q < 1 for q in quotas):
                raise ValueError(
                    f"quotas={list(quotas)!r} must be whole numbers of SMs or threads, 1 or more"
                )
            object.__setattr__(self, "quotas", quotas)
        if (
            not isinstance(self.max_seconds, (int, float))
            or isinstance(self.max_seconds, bool)
            or not self.max_seconds > 0
        ):
            raise ValueError(f"max_seconds={self.max_seconds!r} must be a positive number of seconds")

    def in_directory(self, directory: str | os.PathLike) -> ProfileSettings:
        """These settings with the default file in ``directory`` when no path is set."""
        if self.path is not None:
            return self
        return replace(self, path=os.path.join(os.fspath(directory), PROFILE_FILE))

    def grid(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_mosaic.profiler.profile_units`."""
        return {
            "batch_fractions": self.batch_fractions,
            "quotas": self.quotas,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "max_seconds": self.max_seconds,
            "progress": self.progress,
        }


class Session:
    """One model's units, engine, graph, profile, performance model and plan; see the module docstring.

    Args:
        model: the model whose units run under the plan (a LightningModule, an unwrapped model).
        device: where the units live.
        modules: the units as dotted paths (None: the children that own parameters, descending
            through single wrapper children).
        plan: ``"auto"`` (profile during warmup, then plan), ``"temporal"``, ``"concurrent"`` (every
            unit on its own stream under ``quotas``), or a :class:`~lightning_mosaic.plan.Plan`.
        backend: where units run when the plan puts them side by side (a name of
            :data:`~lightning_mosaic.engine.BACKENDS` or a backend instance).
        quotas: SMs per unit for ``plan="concurrent"``.
        micro_batches: a fixed number of micro-batches per training step (None or ``"auto"``: the
            plan's).
        allow_lookahead: whether plans may compute frozen units one step ahead (the driver must
            run :class:`~lightning_mosaic.lightning.lookahead.Lookahead` for it).
        settings: the :class:`ProfileSettings`.
        profile_requested: profile during warmup even when the plan will not need it (a
            ``MosaicProfiler`` asked for the profile).
        route: route the units' calls through an engine under the plan; False only profiles and
            fits (the ``MosaicProfiler`` callback beside another strategy).
        broadcast: ``broadcast(obj)`` returns the main process's ``obj`` on every process.
        is_main: whether this process measures, plans and writes files.
        out_dir: where the plan made from a profile is written with the profile and a timeline.
        notes: notes added to every plan the session applies.
        batch_size_of: the number of samples in a batch (for the profiled batch size).
        on_apply: called with the final plan (None while provisional) each time the engine is attached.
        precision: the precision the model trains in (the framework's name: ``"32-true"``,
            ``"bf16-mixed"``, ...); a profile measured in another is not reused.
        guard_steps: steps timed under a plan made from a profile before the guard judges it.
        clock: what times the guard's steps (default CUDA events on a GPU, the wall clock on a CPU).
        graphs: per-unit CUDA graphs (``engine/graphs.py``): ``"auto"`` the units a profile shows to
            be launch-bound, ``True`` every unit that can be captured, ``False`` none. Units that run
            alone (``graph.effects``) are never graphed; ``capture`` (default: CUDA graphs on a CUDA
            device, none elsewhere) makes the graphs.

    ``units``, ``engine``, ``graph``, ``stage``, ``profile``, ``perf_model``, ``reused`` (the
    profile was not measured in this run), ``plan``, ``planned`` and ``steps`` tell where it stands.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        modules: Sequence[str] | None = None,
        plan: str | Plan = "auto",
        backend: str | Backend = "auto",
        quotas: Mapping[str, int] | None = None,
        micro_batches: int | str | None = None,
        allow_lookahead: bool = True,
        settings: ProfileSettings | None = None,
        profile_requested: bool = False,
        route: bool = True,
        broadcast: Callable[[Any], Any] | None = None,
        is_main: bool = True,
        out_dir: str | None = None,
        notes: Sequence[str] = (),
        batch_size_of: Callable[[Any], int] = default_batch_size,
        on_apply: Callable[[Plan | None], None] | None = None,
        precision: str = "32-true",
        guard_steps: int = STEPS,
        clock: Marks | None = None,
        graphs: str | bool = "auto",
        capture: Capture | None = None,
    ) -> None:
        self.model_name = type(model).__name__
        self.device = torch.device(device)
        self.selection = select_modules(model, check_names(modules))  # as selected, before any step
        self.units = dict(self.selection)
        self._root = model
        self._auto_units = modules is None
        self.plan_source = check_plan_source(plan, bool(quotas))
        self.backend = check_backend(backend)
        self.quotas = check_quotas(quotas)
        self.micro_batches = check_micro_batches(micro_batches)
        self.graphs = check_graphs(graphs)
        self.capture = capture if capture is not None else capture_for(self.device)
        self.max_micro_batches = micro_batch_cap(model)
        self._cap_reason = (
            f"sets {CAP} = {self.max_micro_batches} (its loss couples the samples of a batch, so splitting"
            " it would change the numbers)"
        )
        if getattr(model, "automatic_optimization", True) is False:  # its training_step steps itself
            self.max_micro_batches = 1
            self._cap_reason = "sets automatic_optimization = False (its training_step calls backward itself)"
        self.allow_lookahead = allow_lookahead
        self.settings = settings or ProfileSettings()
        self.profile_requested = profile_requested
        self.broadcast: Callable[[Any], Any] = broadcast or _same
        self.is_main = is_main
        self.out_dir = out_dir
        self.notes = tuple(notes)
        self.unprofilable: str | None = None  # why the units cannot be profiled here (then not planned)
        self.resident_bytes = 0  # training state a process holds besides activations (the planner's budget)
        self.batch_size_of = batch_size_of
        self.on_apply = on_apply
        self.precision = precision
        self.guard = Guard(clock or Clock(self.device.type == "cuda"), guard_steps)
        self.engine: Engine | None = Engine() if route else None
        self.graph: ModuleGraph | None = None
        self.stage = Stage.OFF
        self.profile: Profile | None = None
        self.perf_model: PerfModel | None = None
        self.reused = False
        self.plan: Plan | None = None
        self.planned = False
        self.steps = 0
        self.fitting = False
        self._planning = False  # this session makes the plan from a profile
        self._started = False
        self._finished = False
        self._restored: dict[str, Any] | None = None
        self._capture: InputCapture | None = None
        self._tracer: Tracer | None = None
        self._batch_size = 0
        self._announced: Plan | None = None
        self._first_step = True  # of the run: traced, so not timed
        self._refined = False  # the automatic selection was checked against the forwards that ran
        self._retrace: set[str] = set()  # units a step called that the graph has not seen
        self._retraces = 0
        self._capture_open = False  # this training step's inputs are being recorded
        self._capture_steps = 0
        self._split_checked = False  # micro-batches that change the numbers were looked for
        self._guarding = False  # a plan made from a profile awaits the guard's verdict
        self._plan_settled = False  # the first step under that plan is over

    # ------------------------------------------------------------------ what drivers call

    def start(self, fitting: bool = True) -> None:
        """Begin a run (``fitting``: a training run, where profiling happens): apply the plan at hand."""
        self.fitting, self._started, self._finished = fitting, True, False
        self._first_step = True
        if not self.units:
            warn_once(
                log,
                f"no-units-{self.model_name}",
                f"{self.model_name} has no child module that owns parameters, so there is nothing to run side"
                " by side; mosaic trains it exactly as it would be trained without",
            )
            return
        restored, self._restored = self._restored, None
        from_checkpoint = False
        if isinstance(self.plan_source, Plan) and not self.planned:
            self._adopt(self.plan_source.modules)  # a plan made for the parts of automatic units
            self._set_plan(self.plan_source)
        elif restored and restored.get("plan") is not None and self.plan_source == "auto":
            self._restore_plan(restored["plan"])  # a plan given by hand wins
            from_checkpoint = self.planned
        if self.planned and self.plan is not None:
            self.plan.check_units(list(self.units))
            self._set_plan(self._checked_lookahead(self.plan, given=isinstance(self.plan_source, Plan)))
        self._check_cap()
        self._planning = (
            self.engine is not None
            and self.plan_source == "auto"
            and not self.planned
            and fitting
            and why_inline(self.backend, self.device) is None
            and self.unprofilable is None
        )
        if self.unprofilable is not None and fitting and self.profile_requested and self.is_main:
            warn_once(
                log, f"unprofilable-{self.unprofilable}", f"no profile is measured: {self.unprofilable}"
            )
        wanted = fitting and (self._planning or self.profile_requested) and self.unprofilable is None
        if not wanted:
            self.stage = Stage.OFF
        elif self.profile is not None:
            self.stage = Stage.PROFILED
        else:
            candidates = []
            if restored and restored.get("profile") is not None:
                candidates.append(("the checkpoint", restored["profile"]))
            if self.settings.path is not None and os.path.exists(self.settings.path):
                try:
                    candidates.append((self.settings.path, Profile.load(self.settings.path)))
                except ProfileError as err:
                    log.warning(f"{err}; it is not reused, and a new profile replaces it")
            found = self._matching(candidates)
            if found is not None:
                self._use_profile(found, reused=True)
            else:
                self.stage = Stage.WARMUP
        self._engage()
        if from_checkpoint and restored is not None:
            self._publish_restored(restored)

    @contextmanager
    def step(self, train: bool = True) -> Iterator[None]:
        """Bracket one step call: the engine joins when it ends; the first step is traced.

        While fitting, the first *training* step is traced (validation steps of a sanity check come
        first); outside fit, the first step of any kind.
        """
        if not self.units:
            yield
            return
        wanted = self.graph is None or bool(self._retrace)
        trace = wanted and self._tracer is None and (train or not self.fitting)
        tracer = Tracer(self.units, record_calls=self._may_refine()) if trace else None
        engine = self.engine
        before = dict(engine.calls) if engine is not None and train else None
        traced = None
        with engine.step(train=train) if engine is not None else nullcontext():
            if tracer is not None:
                tracer.__enter__()
            try:
                yield
            finally:
                if tracer is not None:
                    tracer.__exit__(None, None, None)
                if train:
                    traced = self._end_capture()
        ran = None
        if before is not None and engine is not None:
            ran = {u for u, n in engine.calls.items() if n > before.get(u, 0)}
        if traced is not None:
            self._traced(*traced)
        if tracer is not None:
            self._traced(tracer.graph(), tracer.ran)
        if ran is not None:
            self._saw(ran)

    def before_step(self, steps_done: int, batch: Any) -> None:
        """A training step on ``batch`` starts after ``steps_done`` optimizer steps.

        Ends the guard's timing of the step before; profiles a step captured earlier, plans and
        judges a new plan (as :meth:`advance` does, but a capture in progress, begun for this very
        step by another driver, goes on); then, once the warmup is over, records this step's unit
        inputs (and traces it, when no graph is known yet), and starts timing this step.
        """
        if not self.units:
            return
        if self.engine is not None:
            self.guard.end()
        self._settle(steps_done)
        if self.micro_batches_now > 1 and not self._split_checked:
            self._split_checked = True
            self._check_split_numbers()
        # Timed while a plan from a profile is pending (temporal steps) or being judged (plan steps).
        timed = self.engine is not None and (self._guarding or (self._planning and not self.planned))
        if self.stage is Stage.WARMUP and steps_done >= self.settings.warmup_steps:
            # Under a plan with micro-batches the units see the first (largest) micro-batch.
            self._batch_size = -(-self.batch_size_of(batch) // self.micro_batches_now)
            self._capture, self._capture_steps = InputCapture(self.units), 0
            if self.graph is None and self._tracer is None:
                self._tracer = Tracer(self.units, record_calls=self._may_refine()).__enter__()
            self.stage = Stage.CAPTURING
        captured = self.stage is Stage.CAPTURING and self._capture is not None
        if captured and not self._capture_open:
            self._capture.start()  # again, when the units of the steps before were not all seen
            self._capture_open = True
        if timed:
            self.guard.start(self._step_kind(captured))

    def _check_split_numbers(self) -> None:
        """Say once when micro-batches will change the numbers: batch statistics, random masks."""
        norms, drops = [], []
        for name, module in self._root.named_modules():
            if not module.training:
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                norms.append(name)
            elif isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
                drops.append(name)
            elif any(
                isinstance(v := getattr(module, attr, None), float) and v > 0
                for attr in ("dropout", "attention_dropout", "activation_dropout")
            ):
                drops.append(name)
        found = []
        if norms:
            found.append(
                f"BatchNorm in training mode ({_listed(norms)}): each micro-batch has its own statistics"
            )
        if drops:
            found.append(f"dropout ({_listed(drops)}): the random masks are drawn in another order")
        if found:
            warn_once(
                log,
                f"split-numbers-{self.model_name}",
                f"{self.micro_batches_now} micro-batches per step: {self.model_name} has {'; '.join(found)},"
                " so the numbers will differ from plain Lightning's (micro_batches=1 keeps them identical)",
            )

    def _step_kind(self, captured: bool) -> str:
        """What the guard counts the step about to start as (see ``guard.py``)."""
        first, self._first_step = self._first_step, False
        if first or captured or self._retrace:
            return OTHER  # traced, or recording its inputs
        if self._guarding:
            settled, self._plan_settled = self._plan_settled, True
            return PLAN if settled else OTHER  # the first step under a plan sets up its streams
        return TEMPORAL if self._planning and not self.planned else OTHER

    def advance(self, steps_done: int | None = None) -> None:
        """A step is over: end its capture, profile it, fit, plan from a profile at hand, apply the plan."""
        if self.stage is Stage.CAPTURING:
            traced = self._end_capture()
            if traced is not None:
                self._traced(*traced)
        self._settle(steps_done)

    def _settle(self, steps_done: int | None) -> None:
        if steps_done is not None:
            self.steps = steps_done
        if self.stage is Stage.CAPTURED:
            self._measure()
        warmed = self.steps >= self.settings.warmup_steps  # a reused profile waits for the warmup's times
        if self.stage is Stage.PROFILED and self._planning and not self.planned and warmed:
            if self.broadcast(not self._retrace if self.is_main else None):  # the main process's graph
                self._plan()
        if self._guarding and self.guard.ready():
            self._judge()

    def finish(self, steps_done: int) -> None:
        """Training ended: a captured step is still profiled (and planned); say so if none was."""
        if self._finished or not self._started:
            return
        self._finished = True
        self.guard.end()
        self.advance(steps_done)
        if self._guarding:
            self._judge()  # on the plan steps there were
        if self.stage is Stage.WARMUP and self.is_main:
            log.warning(
                f"training ended at step {steps_done}, before the profile (warmup_steps="
                f"{self.settings.warmup_steps}); nothing was profiled"
            )

    def abort(self) -> None:
        """Training failed: remove the capture and tracing hooks, whatever the stage."""
        if self._capture is not None:
            self._capture.stop()
            self._capture = None
        self._capture_open = False
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            self._tracer = None
        if self.stage in (Stage.CAPTURING, Stage.CAPTURED):
            self.stage = Stage.WARMUP

    def close(self) -> None:
        """Detach the engine: the units are exactly as they were before :meth:`start`."""
        self.abort()
        if self.engine is not None and self.engine.attached:
            self.engine.detach()

    @property
    def micro_batches_now(self) -> int:
        """Micro-batches per training step right now (1 while a plan made from a profile is pending)."""
        if self.micro_batches is not None and (self.planned or not self._planning):
            return self.micro_batches
        return self.plan.micro_batches if self.planned and self.plan is not None else 1

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The final plan and the profile, as plain data."""
        return {
            "version": STATE_VERSION,
            "plan": self.plan.to_dict() if self.planned and self.plan is not None else None,
            "profile": self.profile.to_dict() if self.profile is not None else None,
        }

    def load_state_dict(self, state: Any, source: str = "the checkpoint") -> None:
        """Take a checkpoint's plan and profile: at :meth:`start`, or at once when started already.

        The entries are checked; one that is malformed (``source`` names where it came from) is
        ignored with a warning: what it held is made again.
        """
        state = _stored_state(state, source)
        if not self._started:
            self._restored = state
            return
        if state.get("plan") is not None and self.plan_source == "auto":
            self._restore_plan(state["plan"])
            if self.planned:
                self.plan.check_units(list(self.units))
                self._set_plan(self._checked_lookahead(self.plan))
                self._planning = False
                if not self.profile_requested:
                    self.abort()
                    self.stage = Stage.OFF
                self._engage()
                self._publish_restored(state)
        if state.get("profile") is not None and self.stage is Stage.WARMUP:  # still wanted
            found = self._matching([(source, state["profile"])])
            if found is not None:
                self.abort()
                self._use_profile(found, reused=True)

    # ------------------------------------------------------------------ the loop

    def _end_capture(self) -> tuple[ModuleGraph, set[int]] | None:
        """The captured step is over: stop recording (for good once every unit the graph knows was
        seen, or after ``MAX_CAPTURE_STEPS``; the main process decides). Returns the graph traced
        with the capture, if it was, for :meth:`_traced` (called by the caller, outside the step)."""
        traced = None
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            tracer, self._tracer = self._tracer, None
            traced = (tracer.graph(), tracer.ran)
        if self._capture is not None and self._capture_open:
            self._capture.stop()
            self._capture_open = False
            self._capture_steps += 1
            if self.stage is Stage.CAPTURING:
                wanted = set(self.graph.called if self.graph is not None else ()) | self._retrace
                missing = sorted(wanted - set(self._capture.captured))
                more = bool(missing) and self._capture_steps < MAX_CAPTURE_STEPS
                if not self.broadcast(more if self.is_main else None):
                    self.stage = Stage.CAPTURED
                elif self.is_main:
                    log.info(f"units {missing} did not run in the captured step; recording the next one too")
        return traced

    def _measure(self) -> None:
        """Profile the captured step on the main process (outside the engine), share it, fit it."""
        capture, self._capture = self._capture, None
        assert capture is not None
        data = None
        if self.is_main:
            try:
                with self.engine.paused() if self.engine is not None else nullcontext():
                    graphing = self.graphs is not False and self.capture is not None
                    alone = set(self.graph.effects) if self.graph is not None else set(self.units)
                    profile = profile_units(
                        self.units,
                        capture.captured,
                        self._batch_size,
                        calls=dict(capture.calls),
                        precision=precision_of(self.precision),
                        capture=self.capture if graphing else None,
                        graph_units=[u for u in self.units if u not in alone],
                        **self.settings.grid(),
                    )
            except Exception as err:  # profiling is optional: it never ends a run
                data = {"error": f"{type(err).__name__}: {err}"}
            else:
                profile.graph = self.graph.to_dict() if self.graph is not None else None
                log.info(f"{profile.describe()}{self._save_profile(profile)}")
                data = {"profile": profile.to_dict()}
        data = self.broadcast(data)
        if "error" in data:
            self._unprofiled(f"profiling failed ({data['error']})")
            return
        self._use_profile(Profile.from_dict(data["profile"]), reused=False)

    def _save_profile(self, profile: Profile) -> str:
        """Write ``profile`` to the settings' path; what to add to the log line (a failure warns)."""
        if self.settings.path is None:
            return ""
        try:
            profile.save(self.settings.path)
        except OSError as err:
            log.warning(f"the profile could not be written to {self.settings.path}: {err}; training goes on")
            return ""
        return f"\nprofile saved to {self.settings.path}"

    def _unprofiled(self, reason: str) -> None:
        """Nothing to plan from: say why, and train on with the temporal plan."""
        self.stage = Stage.OFF
        if not self._planning or self.planned:
            if self.is_main:
                log.warning(f"{reason}; training goes on")
            return
        self._planning = False
        self.guard.clear()
        if self.is_main:
            log.warning(f"{reason}; training goes on with the temporal plan")
        graph = self.graph or ModuleGraph.from_edges({name: [] for name in self.units})
        self._apply(temporal_plan(graph, device_name(self.device), notes=[f"{reason}: temporal plan"]))
        self._publish(graph)

    def _use_profile(self, profile: Profile, reused: bool) -> None:
        self.profile, self.reused, self.stage = profile, reused, Stage.PROFILED
        try:
            self.perf_model = PerfModel(held_out=True).fit(profile)
        except ValueError as err:  # e.g. a module with no feasible point
            log.warning(f"no performance model could be fitted to the profile: {err}")
            self.perf_model = None
            return
        if self.is_main:
            log.info(self.perf_model.describe())

    def _matching(self, candidates: Sequence[tuple[str, Profile]]) -> Profile | None:
        """The first ``(source, profile)`` measured for these units on this device; warns of the others."""
        spec = DeviceSpec.from_current(self.device)
        for source, profile in candidates:
            units = self._units_named(list(profile.fingerprint.get("modules", {}))) or self.units
            reason = profile.mismatch(
                fingerprint(units, precision_of(self.precision)), spec.name, spec.sm_count
            )
            if reason is None:
                self._adopt(list(units))  # the parts of automatic units, refined when it was measured
                log.info(
                    f"reusing the profile from {source} (measured {profile.created}); not profiling again"
                )
                return profile
            log.warning(f"the profile in {source} does not match this run: {reason}; profiling again")
        return None

    def _plan(self) -> None:
        """Plan on the main process, share the plan, apply it everywhere, write it out."""
        assert self.profile is not None
        graph = self.graph
        if graph is None:
            if self.profile.graph is None:
                return  # the first step traces it
            graph = ModuleGraph.from_dict(self.profile.graph)
        data = self._choose(graph).to_dict() if self.is_main else None
        self._apply(Plan.from_dict(self.broadcast(data)))
        self._publish(graph)
        if not self.plan.plain:  # a plan that runs units otherwise than plain PyTorch: time it
            self._guarding, self._plan_settled = True, False
            self.guard.restart_plan()

    def _judge(self) -> None:
        """Keep the plan if it measured at least as fast as temporal (within the tolerance), else drop it.

        The main process's measurements decide, for every process.
        """
        assert self.plan is not None
        self._guarding = False
        verdict = self.guard.verdict() if self.is_main else None
        self.guard.clear()  # nothing more to time in this run
        data = self.broadcast(asdict(verdict) if verdict is not None else None)
        if data is None:
            if self.is_main:
                log.warning(
                    "the plan is not checked against temporal steps: none was timed before it (warmup_steps"
                    f"={self.settings.warmup_steps}) or none after it; it stays"
                )
            return
        verdict = Verdict(**data)
        measured = replace(self.plan, measured_step_s=verdict.plan_s, measured_temporal_s=verdict.temporal_s)
        predicted = f"predicted {measured.speedup:.2f}x, " if measured.speedup is not None else ""
        if verdict.keep:
            self.plan = measured.with_notes(f"guard: {predicted}{verdict.describe()}: plan kept")
            if self.is_main:
                log.info(f"the plan is kept: {predicted}{verdict.describe()}")
        else:
            reason = (
                f"guard: {predicted}{verdict.describe()}, more than {self.guard.tolerance:.0%} slower than"
                f" temporal: the {measured.method} plan is dropped for the temporal plan"
            )
            if self.is_main:
                log.warning(reason)
            graph = self.graph or ModuleGraph.from_dict(self.profile.graph or {})
            temporal = replace(
                temporal_plan(graph, device_name(self.device), notes=[*measured.notes, reason]),
                micro_batches=1,
                predicted_step_s=measured.predicted_temporal_s,
                predicted_temporal_s=measured.predicted_temporal_s,
                measured_step_s=verdict.temporal_s,
                measured_temporal_s=verdict.temporal_s,
            )
            self._apply(temporal)
        if self.graph is not None:
            self._publish(self.graph)

    def _choose(self, graph: ModuleGraph) -> Plan:
        """The planner's plan for ``graph`` here, or the temporal plan with the reason in its notes."""
        assert self.profile is not None
        here = device_name(self.device)
        chosen, reason = None, None
        wrong = too_wrong(self.perf_model, graph, self.profile.batch_size) if self.perf_model else {}
        unprofiled = [m for m in graph.called if self.perf_model and m not in self.perf_model.modules]
        if self.perf_model is None:
            reason = "no performance model could be fitted to the profile (see the warning above)"
        elif unprofiled:
            reason = f"units {unprofiled} ran in training steps but have no profile (see the warnings above)"
        elif wrong:
            listed = ", ".join(f"{m} {e:.0%}" for m, e in wrong.items())
            cut = any(note.startswith("stopped by max_seconds") for note in self.profile.notes)
            hint = (
                "the profile was cut short: raise profile_seconds"
                if cut
                else "its timings are noisy (a shared machine, or units of a few ms at most: the profile"
                f" took {self.profile.seconds:.1f} s); more repeats help (MosaicProfiler(repeats=...))"
            )
            reason = (
                f"the performance model is too wrong to plan from: held-out MAPE {listed} on the critical"
                f" path, above {MAX_MAPE:.0%}; {hint}"
            )
        else:
            options: dict[str, Any] = {
                "micro_batches": self.micro_batches,
                "allow_lookahead": self.allow_lookahead,
            }
            if self.max_micro_batches is not None:
                options["max_micro_batches"] = self.max_micro_batches
            if self.resident_bytes:
                options["resident_bytes"] = self.resident_bytes
            graphs, note = self._graph_units(graph, self.perf_model)
            options["graphs"] = graphs
            try:
                chosen = search_plan(
                    graph,
                    self.perf_model,
                    DeviceSpec.from_current(self.device),
                    self.profile.batch_size,
                    **options,
                )
            except ValueError as err:
                reason = f"the planner found no plan: {err}"
            else:
                chosen = chosen.with_notes(note) if note else chosen
        if chosen is None:
            log.warning(f"{reason}; training with the temporal plan")
            chosen = self._with_graphs(temporal_plan(graph, here, notes=[str(reason)]), graph)
        chosen = self._checked_lookahead(replace(chosen, device=here))
        if self.micro_batches is not None:
            chosen = chosen.with_micro_batches(self.micro_batches)
        return chosen

    def _graph_units(self, graph: ModuleGraph, model: Any = None) -> tuple[list[str], str | None]:
        """The units to capture as CUDA graphs under ``graphs=`` (from ``model``'s host and device
        times for ``"auto"``), and a note for the plan (None: nothing to say)."""
        if self.graphs is False:
            return [], None
        candidates = [m for m in graph.called if m not in graph.effects]
        if self.capture is None:
            if self.graphs is True:
                return [], (
                    f"graphs=True: CUDA graphs need a CUDA device; the units run eagerly on"
                    f" {device_name(self.device)}"
                )
            return [], None
        if self.graphs is True:
            return candidates, None
        if model is None or self.profile is None:
            return [], None
        bound = launch_bound(model, candidates, self.profile.batch_size)
        if not bound:
            return [], "graphs='auto': no unit is launch-bound (host time under device time): none graphed"
        return bound, f"graphs='auto': units with host time >= device time replay CUDA graphs: {bound}"

    def _with_graphs(self, plan: Plan, graph: ModuleGraph) -> Plan:
        """``plan`` with the units ``graphs=True`` captures (a plan made without a profile)."""
        if self.graphs is not True:
            return plan
        units, note = self._graph_units(graph)
        plan = replace(plan, graphs=tuple(u for u in units if u not in plan.lookahead))
        return plan.with_notes(note) if note else plan

    def _may_refine(self) -> bool:
        """The units were selected automatically and nothing given by hand names them."""
        return self._auto_units and not isinstance(self.plan_source, Plan) and not self._refined

    def _adopt(self, names: Sequence[str]) -> bool:
        """Make ``names`` the units (a refined selection a profile, plan or checkpoint was made for),
        where the selection was automatic and they all resolve; True if the units are now ``names``."""
        units = self._units_named(names)
        if units is None:
            return False
        if list(units) != list(self.units):
            self.units, self._refined = units, True
        return True

    def _units_named(self, names: Sequence[str]) -> dict[str, nn.Module] | None:
        """The units ``names`` in the model's order: these units, or (automatic selection) the
        model's modules of those names; None when they do not resolve."""
        if set(names) == set(self.units):
            return self.units
        if not self._auto_units:
            return None
        try:
            found = select_modules(self._root, list(names))
        except (ValueError, TypeError, AttributeError):
            return None
        selected = list(self.selection)
        refines = all(
            any(n == s or n.startswith(f"{s}.") for n in found)
            for s in selected  # no unit left out
        ) and all(any(n == s or n.startswith(f"{s}.") for s in selected) for n in found)  # nothing else
        if not refines:
            return None
        order = {id(m): i for i, m in enumerate(self._root.modules())}
        return dict(sorted(found.items(), key=lambda item: order.get(id(item[1]), len(order))))

    def _refine(self, ran: set[int]) -> bool:
        """Replace units whose forward never ran by their parts that did (the main process decides);
        True when the units changed, so that the next training step is traced again."""
        self._refined = True
        names = self.broadcast(list(called_units(self.units, ran)) if self.is_main else None)
        if names == list(self.units):
            return False
        before = list(self.units)
        self._adopt(names)
        if self.is_main:
            replaced = [n for n in before if n not in self.units]
            log.info(
                f"units {replaced} never ran their own forward in the first training step (the model calls"
                f" their parts directly); the units are now {list(self.units)}, traced again at the next step"
            )
        self.graph = None
        if self._capture is not None:  # recorded for the old units
            self._capture.stop()
            self._capture, self._capture_open = None, False
            if self.stage in (Stage.CAPTURING, Stage.CAPTURED):
                self.stage = Stage.WARMUP
        self._engage()
        return True

    def _saw(self, ran: set[str]) -> None:
        """A training step called ``ran``: a unit the graph has not seen run is traced at the next step
        (its graph joins the one known) while the plan is pending; afterwards it is only said."""
        if self.graph is None:
            return
        new = ran - set(self.graph.called)
        if not new:
            return
        if self.plan is None or (self.planned and self.plan.sequential):
            return  # nothing depends on the graph: the units run one after another as plain code
        if self._planning and not self.planned and self._retraces < MAX_RETRACES:
            if not new <= self._retrace and self.is_main:
                log.info(
                    f"a training step called units {sorted(new)} that the module graph has not seen;"
                    " tracing again"
                )
            self._retrace |= new
        else:
            warn_once(
                log,
                f"late-units-{sorted(new)}",
                f"units {sorted(new)} ran for the first time after the module graph was final; the plan runs"
                " them as it places them (alone, when it was made without them)",
            )

    def _serialize(self) -> None:
        """Units whose data flow bypasses their outputs run alone; all of them until a step was traced."""
        if self.engine is not None:
            self.engine.serial = set(self.graph.effects) if self.graph is not None else set(self.units)

    def _traced(self, graph: ModuleGraph, ran: set[int] | None = None) -> None:
        """A step's graph is known: refine the units, join a graph seen before, or (the first step)
        fix the plan of the sources that need no profile."""
        if ran is not None and self._may_refine() and self._refine(ran):
            return
        for name, effect in graph.effects.items():
            warn_once(
                log,
                f"effects-{name}",
                f"unit {name} {effect}: that data flow bypasses the tensors it returns, so it runs alone"
                " (after everything before it, before everything after it)",
            )
        if self._retrace and self.graph is not None:
            wanted, self._retrace = self._retrace, set()
            self._retraces += 1
            self.graph = self.graph.union(graph)
            self._serialize()
            missing = wanted - set(self.graph.called)
            if missing and self._retraces < MAX_RETRACES:
                self._retrace = missing  # that step called other units: trace the next one too
            if self.is_main:
                log.info(
                    f"the module graph joins the units of steps with other inputs:\n{self.graph.describe()}"
                )
            return
        self.graph = graph
        self._serialize()
        here = device_name(self.device)
        if self.engine is not None and not self.planned:
            if self.plan_source == "concurrent":
                backend = self.engine.backend
                granted = {u: g.granted for u, g in backend.grants.items() if g.partitioned}
                made = concurrent_plan(graph, granted, here, method=f"{backend.name} backend")
                self._set_plan(self._with_graphs(made, graph))
            elif self.plan_source == "temporal":
                self._set_plan(self._with_graphs(temporal_plan(graph, here), graph))
            elif not self._planning:
                reason = (
                    self.unprofilable
                    or why_inline(self.backend, self.device)
                    or "nothing is profiled outside fit"
                )
                made = temporal_plan(graph, here, notes=[f"{reason}: temporal plan"])
                self._set_plan(self._with_graphs(made, graph))
            else:
                self.plan = temporal_plan(graph, here)  # provisional: the warmup runs plain
        if self.planned and self.plan is not None and self.plan.graphs:
            self._engage()  # graphs attach once the graph is known: units that run alone never replay one
        if self.is_main:
            pending = ""
            if self._planning and not self.planned:
                pending = (
                    f"\nplan: auto; the first {self.settings.warmup_steps} steps run plain, then the units"
                    " are profiled and planned"
                )
            log.info(f"{graph.describe()}{pending}")
        self._announce()

    def _checked_lookahead(self, plan: Plan, given: bool = False) -> Plan:
        """``plan`` without lookahead units that have trainable parameters now (on the modules).

        A unit computed one step ahead must not change between steps. A plan ``given`` by hand that
        lists a trainable unit is refused; a stored one (a checkpoint's: the unit was unfrozen since)
        loses that lookahead, with a warning.
        """
        trainable = [n for n in plan.lookahead if any(p.requires_grad for p in self.units[n].parameters())]
        if not trainable:
            return plan
        why = (
            f"lookahead {trainable}: {'these units have' if len(trainable) > 1 else 'this unit has'}"
            " parameters with requires_grad=True, so its output for the next batch would be computed"
            " before this step's update"
        )
        if given:
            raise ValueError(
                f"the plan computes {why}; list only units whose parameters all have requires_grad=False"
            )
        log.warning(f"the plan's {why}; not computed one step ahead")
        kept = tuple(n for n in plan.lookahead if n not in trainable)
        return replace(plan, lookahead=kept).with_notes(f"lookahead {trainable} dropped: trainable now")

    def _set_plan(self, plan: Plan) -> None:
        if self.micro_batches is not None:
            plan = plan.with_micro_batches(self.micro_batches)
        if self.graphs is False and plan.graphs:
            plan = replace(plan, graphs=()).with_notes(f"graphs=False: {list(plan.graphs)} run eagerly")
        missing = [note for note in self.notes if note not in plan.notes]
        self.plan, self.planned = plan.with_notes(*missing) if missing else plan, True

    def _restore_plan(self, plan: Plan) -> None:
        """Apply the plan a checkpoint holds, unless it was made for another device."""
        here = device_name(self.device)
        if plan.device != here:
            log.warning(
                f"the checkpoint's plan was made for {plan.device}, not {here}; it is not applied and the"
                " plan is made again"
            )
            return
        self._adopt(plan.modules)
        self._set_plan(plan)
        if self.is_main:
            log.info("applying the plan from the checkpoint; not profiling or planning again")

    def _publish_restored(self, state: dict[str, Any]) -> None:
        """A plan taken from a checkpoint: this run's directory gets it too, with the profile it came
        from (which the session then reports, when it measures none of its own)."""
        if self.profile is None and self.stage is Stage.OFF and state.get("profile") is not None:
            self.profile, self.reused = state["profile"], True
        graph = self.graph
        if graph is None and self.profile is not None and self.profile.graph is not None:
            graph = ModuleGraph.from_dict(self.profile.graph)
        self._publish(graph or ModuleGraph.from_edges({name: [] for name in self.units}))

    def _apply(self, plan: Plan) -> None:
        self._set_plan(plan)
        self._engage()
        self._announce()

    def _check_cap(self) -> None:
        cap = self.max_micro_batches
        asked = self.micro_batches
        if asked is None and self.planned and self.plan is not None:
            asked = self.plan.micro_batches
        if cap is not None and asked is not None and asked > cap:
            raise ValueError(
                f"{asked} micro-batches per step asked for, but {self.model_name} {self._cap_reason}; use at"
                f" most {cap}"
            )

    def _engage(self) -> None:
        """(Re)attach the engine: the plan's backend, quotas and phases, or inline while none is final."""
        engine = self.engine
        if engine is None or not self.units:
            return
        if engine.attached:
            engine.detach()
        quotas: dict[str, int] = {}
        groups = None
        if self.planned and self.plan is not None and not self.plan.sequential:
            wanted = {m: q for phase in self.plan.phases for m, q in phase.quotas.items() if q is not None}
            quotas = self._checked_quotas(wanted, f" (the plan was made for {self.plan.device})")
            backend, groups = make_backend(self.backend, self.device), [p.modules for p in self.plan.phases]
        elif not self.planned and self.plan_source == "concurrent":
            backend, quotas = make_backend(self.backend, self.device), self._checked_quotas(self.quotas)
        else:  # the temporal plan, the warmup of plan="auto", or no plan yet: plain
            backend = make_backend("none", self.device)
        graphs = self._graphs_now()
        engine.attach(
            self.units,
            backend=backend,
            quotas=quotas,
            device=self.device,
            groups=groups,
            graphs=graphs,
            capture=self.capture,
        )
        self._serialize()
        if self.on_apply is not None:
            self.on_apply(self.plan if self.planned else None)

    def _graphs_now(self) -> list[str]:
        """The plan's graphed units the engine captures now: once the graph is known (never a unit
        that runs alone), where CUDA graphs can be made (else said once)."""
        if not self.planned or self.plan is None or not self.plan.graphs or self.graph is None:
            return []
        units = [u for u in self.plan.graphs if u not in self.graph.effects and u in self.units]
        if units and self.capture is None:
            warn_once(
                log,
                f"no-capture-{self.device}",
                f"the plan graphs {units}, but CUDA graphs need a CUDA device: they run eagerly on"
                f" {device_name(self.device)}",
            )
            return []
        return units

    def _checked_quotas(self, quotas: Mapping[str, int], where: str = "") -> dict[str, int]:
        """``quotas`` checked against the units and, on a GPU, its SM count."""
        spec = DeviceSpec.from_current(self.device)
        sm_count = spec.sm_count if spec.quota_unit == "sm" else None
        return check_quotas(quotas, list(self.units), sm_count, f"{spec.name}{where}")

    def _announce(self) -> None:
        """Log the final plan and the engine's backend once."""
        if not self.planned or self.plan is None or self._announced is self.plan:
            return
        self._announced = self.plan
        if self.is_main and self.engine is not None:
            line = self.engine.backend.describe()
            asked = self.backend if isinstance(self.backend, str) else self.backend.name
            if self.plan.sequential and asked not in ("auto", "none", self.engine.backend.name):
                line += f" — the plan runs each unit alone: backend={asked!r} has nothing to run side by side"
            log.info(f"{self.plan.describe()}\n{line}")

    def _publish(self, graph: ModuleGraph) -> None:
        """Write the plan (with the profile and the timeline) to ``out_dir`` on the main process."""
        if not self.is_main or self.out_dir is None or self.plan is None:
            return
        out_dir, plan, profile, model = self.out_dir, self.plan, self.profile, self.perf_model
        written = []

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
            if os.path.abspath(target) != os.path.abspath(self.settings.path or ""):
                write(PROFILE_FILE, profile.save)
            else:
                written.append(PROFILE_FILE)
            if model is not None:
                from lightning_mosaic.viz import draw_plan

                write(TIMELINE_FILE, lambda path: draw_plan(graph, model, plan, profile.batch_size, path))
        if written:
            log.info(f"{', '.join(written)} written to {out_dir}")


# ---------------------------------------------------------------------- argument checks


def check_plan_source(
    plan: Any, quotas_given: bool = False, choices: Sequence[str] = PLAN_SOURCES
) -> str | Plan:
    """``plan`` as one of ``choices`` or a :class:`Plan` (a path is read now and may raise).

    Quotas given by hand make ``"auto"`` a ``"concurrent"`` plan; with any other source they are an
    error.
    """
    if isinstance(plan, Plan):
        source: str | Plan = plan
    elif isinstance(plan, str) and plan in choices:
        source = plan
    elif isinstance(plan, (str, os.PathLike)):
        path = os.fspath(plan)
        if not os.path.exists(path):
            raise ValueError(
                f"plan={path!r} is neither one of {', '.join(choices)} nor an existing plan file"
            )
        source = Plan.load(path)
    else:
        raise TypeError(
            f"plan must be one of {', '.join(choices)}, a Plan or the path of a plan file, got"
            f" {type(plan).__name__}: {plan!r}"
        )
    if quotas_given:
        if source == "auto":
            return "concurrent"  # quotas by hand are a plan by hand
        if source != "concurrent":
            raise ValueError(
                f"quotas= sets the SM quotas by hand, which only goes with plan='concurrent', not"
                f" plan={plan!r}; put the quotas in the plan instead"
            )
    return source


def check_micro_batches(value: Any) -> int | None:
    """A fixed micro-batch count (a whole number, 1 or more), or None for ``"auto"``: the plan's."""
    if value is None or value == "auto":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(
        f"micro_batches={value!r} must be 'auto' (the plan's count) or a whole number, 1 or more"
    )


def micro_batch_cap(model: Any) -> int | None:
    """The model's ``mosaic_max_micro_batches`` (None: no limit), checked.

    A model whose loss couples the samples of a batch (contrastive losses, batch statistics) sets
    it to 1: micro-batches would change its numbers.
    """
    cap = getattr(model, CAP, None)
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"{type(model).__name__}.{CAP} = {cap!r}; it must be a whole number >= 1")
    return cap


def _stored_state(state: Any, source: str) -> dict[str, Any]:
    """A session state from a checkpoint as ``{"plan": Plan | None, "profile": Profile | None}``; a
    malformed entry is left out with a warning naming ``source``."""
    if not isinstance(state, Mapping):
        log.warning(
            f"{source}'s mosaic state is not a mapping but {type(state).__name__}; it is ignored (the plan"
            " and the profile are made again)"
        )
        return {}
    out: dict[str, Any] = {}
    for key, parse in (("plan", Plan.from_dict), ("profile", Profile.from_dict)):
        value = state.get(key)
        if value is None:
            continue
        try:
            out[key] = parse(value) if not isinstance(value, (Plan, Profile)) else value
        except ValueError as err:
            log.warning(f"{source}'s mosaic {key} is not valid ({err}); it is ignored and made again")
    return out


def _listed(names: list[str], most: int = 3) -> str:
    shown = ", ".join(n or "the model itself" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _whole(name: str, value: Any, least: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be a whole number of {what}, {least} or more")


def _same(obj: T) -> T:
    return obj
