"""The closed loop of one model, framework-free: warmup -> capture -> profile -> fit -> plan -> apply.

A :class:`Session` is the facade a training framework drives; the work is done by its components,
each owning its state: :class:`~lightning_mosaic.session.units.Units` (which modules are units and
their module graph), :class:`~lightning_mosaic.session.profiling.Profiling` (the profiling stage,
the profile and its performance model), :class:`~lightning_mosaic.session.guarding.PlanGuard` (step
times, and the plan awaiting its verdict), :class:`~lightning_mosaic.session.outputs.Outputs` (the
plan's log line and files); the decisions are functions of data
(:mod:`~lightning_mosaic.session.decisions`). A driver builds one frozen
:class:`~lightning_mosaic.session.config.SessionConfig` and calls, where its loop is:

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

The plan in force is ``plan``; ``planned`` says it is final: from the start for a plan given by hand
or restored, once the graph is traced for ``"temporal"`` and ``"concurrent"``, and after the profile
for ``"auto"`` (``from_profile``), whose warmup runs the provisional temporal plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_mosaic._compile import compiled_note, compiled_parts
from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.clock import Clock, Marks
from lightning_mosaic.devices import DeviceSpec, device_name
from lightning_mosaic.engine import Engine, why_inline
from lightning_mosaic.engine.graphs import Capture, capture_for
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.microbatch import batch_size as default_batch_size
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.plan import Plan, temporal_plan
from lightning_mosaic.profile import Profile
from lightning_mosaic.session.checkpoint import state_dict, stored_state
from lightning_mosaic.session.config import (
    PLAN_SOURCES,
    PROFILE_FILE,
    ProfileSettings,
    SessionConfig,
    Words,
    check_micro_batches,
    check_plan_source,
    micro_batch_cap,
)
from lightning_mosaic.session.decisions import (
    Planning,
    chosen_plan,
    finalized,
    judged,
    plan_without_profile,
    without_trainable_lookahead,
)
from lightning_mosaic.session.guarding import PlanGuard
from lightning_mosaic.session.outputs import PLAN_FILE, TIMELINE_FILE, Outputs
from lightning_mosaic.session.placement import attach
from lightning_mosaic.session.profiling import Profiling, Stage
from lightning_mosaic.session.units import Units, split_changes_numbers
from lightning_mosaic.tracing import Tracer

__all__ = [
    "PLAN_FILE",
    "PLAN_SOURCES",
    "PROFILE_FILE",
    "TIMELINE_FILE",
    "ProfileSettings",
    "Session",
    "SessionConfig",
    "Stage",
    "Words",
    "check_micro_batches",
    "check_plan_source",
]

log = get_logger(__name__)
T = TypeVar("T")


class Session:
    """One model's units, engine, graph, profile, performance model and plan; see the module docstring.

    Args:
        model: the model whose units run under the plan (a LightningModule, an unwrapped model).
        device: where the units live.
        config: what is asked (:class:`~lightning_mosaic.session.config.SessionConfig`).
        broadcast: ``broadcast(obj)`` returns the main process's ``obj`` on every process.
        is_main: whether this process measures, plans and writes files.
        batch_size_of: the number of samples in a batch (for the profiled batch size).
        on_apply: called with the final plan (None while provisional) each time the engine is attached.
        clock: what times the guard's steps (default CUDA events on a GPU, the wall clock on a CPU).
        graph_capture: what makes CUDA graphs (default: CUDA graphs on a CUDA device, none elsewhere).

    ``units``, ``graph``, ``engine``, ``stage``, ``profile``, ``perf_model``, ``reused`` (the profile
    was not measured in this run), ``plan``, ``planned`` and ``optimizer_steps`` tell where it stands.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        config: SessionConfig | None = None,
        *,
        broadcast: Callable[[Any], Any] | None = None,
        is_main: bool = True,
        batch_size_of: Callable[[Any], int] = default_batch_size,
        on_apply: Callable[[Plan | None], None] | None = None,
        clock: Marks | None = None,
        graph_capture: Capture | None = None,
    ) -> None:
        config = config if config is not None else SessionConfig()
        self.model_name = type(model).__name__
        self.device = torch.device(device)
        self.config = config
        self.broadcast: Callable[[Any], Any] = broadcast or _same
        self.is_main = is_main
        self.batch_size_of = batch_size_of
        self.on_apply = on_apply
        self.graph_capture = graph_capture if graph_capture is not None else capture_for(self.device)
        self.max_micro_batches, self._cap_reason = micro_batch_cap(model)
        self.model_units = Units(model, config.modules, refinable=config.given_plan is None)
        self.profiling = Profiling(config.profile, config.precision, self.device, self.broadcast, is_main)
        self._clock = clock or Clock(self.device.type == "cuda")
        self.plan_guard = PlanGuard(self._clock, config.guard_steps)
        self.outputs = Outputs(config.out_dir, is_main)
        self.engine: Engine | None = Engine() if config.route else None
        self.plan: Plan | None = None
        self.planned = False
        self.from_profile = False  # this run makes the plan from a profile
        self.optimizer_steps = 0
        self.fitting = False
        self._started = False
        self._finished = False
        self._restored: dict[str, Any] | None = None
        self._tracer: Tracer | None = None
        self._first_step = True  # of the run: traced, so not timed
        self._split_checked = False  # micro-batches that change the numbers were looked for

    # ------------------------------------------------------------------ what it has

    @property
    def units(self) -> dict[str, nn.Module]:
        return self.model_units.modules

    @property
    def selection(self) -> dict[str, nn.Module]:
        return self.model_units.selection

    @property
    def graph(self) -> ModuleGraph | None:
        return self.model_units.graph

    @property
    def stage(self) -> Stage:
        return self.profiling.stage

    @property
    def profile(self) -> Profile | None:
        return self.profiling.profile

    @property
    def perf_model(self) -> PerfModel | None:
        return self.profiling.perf_model

    @property
    def reused(self) -> bool:
        return self.profiling.reused

    @property
    def micro_batches_now(self) -> int:
        """Micro-batches per training step right now (1 while a plan made from a profile is pending)."""
        fixed = self.config.micro_batches
        if fixed is not None and (self.planned or not self.from_profile):
            return fixed
        return self.plan.micro_batches if self.planned and self.plan is not None else 1

    # ------------------------------------------------------------------ what drivers call

    def start(self, fitting: bool = True, config: SessionConfig | None = None) -> None:
        """Begin a run (``fitting``: a training run, where profiling happens) under ``config`` (None:
        the one it has; a new run of the same units may bring its own): apply the plan at hand."""
        if config is not None and config != self.config:
            self._configure(config)
        config = self.config
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
        compiled = compiled_parts(self.model_units.root)
        if compiled and fitting and self.is_main:
            log.info(compiled_note(compiled))
        restored, self._restored = self._restored or {}, None
        from_checkpoint = False
        given = config.given_plan
        if given is not None and not self.planned:
            self.model_units.take_names(given.modules)  # a plan made for the parts of automatic units
            self._set_plan(given)
        elif restored.get("plan") is not None and config.plan == "auto":
            self._restore_plan(restored["plan"])  # a plan given by hand wins
            from_checkpoint = self.planned
        if self.planned and self.plan is not None:
            self.plan.check_units(self.model_units.names)
            self._set_plan(self._lookahead_checked(self.plan, given=given is not None))
        self._check_cap()
        self.from_profile = (
            self.engine is not None
            and config.plan == "auto"
            and not self.planned
            and fitting
            and why_inline(config.backend, self.device) is None
            and config.unprofilable is None
        )
        if config.unprofilable is not None and fitting and config.profile_requested and self.is_main:
            warn_once(
                log, f"unprofilable-{config.unprofilable}", f"no profile is measured: {config.unprofilable}"
            )
        wanted = fitting and (self.from_profile or config.profile_requested) and config.unprofilable is None
        self.profiling.begin(wanted, self.model_units, restored.get("profile"))
        self._attach()
        if from_checkpoint:
            self._write_restored_outputs(restored)

    @contextmanager
    def step(self, train: bool = True) -> Iterator[None]:
        """Bracket one step call: the engine joins when it ends; the first step is traced.

        While fitting, the first *training* step is traced (validation steps of a sanity check come
        first); outside fit, the first step of any kind.
        """
        if not self.units:
            yield
            return
        wanted = self.graph is None or bool(self.model_units.unseen)
        trace = wanted and self._tracer is None and (train or not self.fitting)
        tracer = self._new_tracer() if trace else None
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
                    traced = self._end_recording()
        if traced is not None:
            self._traced(*traced)
        if tracer is not None:
            self._traced(tracer.graph(), tracer)
        if before is not None and engine is not None:
            self._called({u for u, n in engine.calls.items() if n > before.get(u, 0)})

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
            self.plan_guard.end()
        self._at_boundary(steps_done)
        if self.micro_batches_now > 1 and not self._split_checked:
            self._split_checked = True
            self._warn_split_numbers()
        pending = self.from_profile and not self.planned
        timed = self.engine is not None and (self.plan_guard.watching or pending)
        if self.profiling.due(steps_done):
            # Under a plan with micro-batches the units see the first (largest) micro-batch.
            self.profiling.record(self.model_units, -(-self.batch_size_of(batch) // self.micro_batches_now))
            if self.graph is None and self._tracer is None:
                self._tracer = self._new_tracer().__enter__()
        recording = self.profiling.open()
        if timed:
            first, self._first_step = self._first_step, False
            self.plan_guard.start(
                untimed=first or recording or bool(self.model_units.unseen), temporal=pending
            )

    def advance(self, steps_done: int | None = None) -> None:
        """A step is over: end its capture, profile it, fit, plan from a profile at hand, apply the plan."""
        if self.profiling.stage is Stage.CAPTURING:
            traced = self._end_recording()
            if traced is not None:
                self._traced(*traced)
        self._at_boundary(steps_done)

    def finish(self, steps_done: int) -> None:
        """Training ended: a captured step is still profiled (and planned); say so if none was."""
        if self._finished or not self._started:
            return
        self._finished = True
        self.plan_guard.end()
        self.advance(steps_done)
        if self.plan_guard.watching:
            self._judge()  # on the plan steps there were
        if self.profiling.stage is Stage.WARMUP and self.is_main:
            log.warning(
                f"training ended at step {steps_done}, before the profile (warmup_steps="
                f"{self.config.profile.warmup_steps}); nothing was profiled"
            )

    def abort(self) -> None:
        """Training failed: remove the capture and tracing hooks, whatever the stage."""
        self.profiling.abort()
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            self._tracer = None

    def close(self) -> None:
        """Detach the engine: the units are exactly as they were before :meth:`start`."""
        self.abort()
        if self.engine is not None and self.engine.attached:
            self.engine.detach()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The final plan and the profile, as plain data."""
        return state_dict(self.plan if self.planned else None, self.profile)

    def load_state_dict(self, state: Any, source: str = "the checkpoint") -> None:
        """Take a checkpoint's plan and profile: at :meth:`start`, or at once when started already.

        The entries are checked; one that is malformed (``source`` names where it came from) is
        ignored with a warning: what it held is made again.
        """
        state = stored_state(state, source)
        if not self._started:
            self._restored = state
            return
        if state.get("plan") is not None and self.config.plan == "auto":
            self._restore_plan(state["plan"])
            if self.planned and self.plan is not None:
                self.plan.check_units(self.model_units.names)
                self._set_plan(self._lookahead_checked(self.plan))
                self.from_profile = False
                if not self.config.profile_requested:
                    self.abort()
                    self.profiling.stop()
                self._attach()
                self._write_restored_outputs(state)
        if state.get("profile") is not None and self.profiling.stage is Stage.WARMUP:  # still wanted
            found = self.profiling.matching([(source, state["profile"])], self.model_units)
            if found is not None:
                self.abort()
                self.profiling.use(found, reused=True)

    # ------------------------------------------------------------------ the loop

    def _configure(self, config: SessionConfig) -> None:
        """A new run of the same units under ``config``: its settings, files and guard."""
        if config.modules != self.config.modules:
            raise ValueError(
                f"a session's units are fixed: modules={config.modules} asked for, the session has"
                f" {self.config.modules}; make a new session"
            )
        self.config = config
        self.profiling.configure(config.profile, config.precision)
        self.plan_guard = PlanGuard(self._clock, config.guard_steps)
        self.outputs = Outputs(config.out_dir, self.is_main)

    def _new_tracer(self) -> Tracer:
        """A tracer of the units; while the automatic selection may still be refined, it records which
        forwards ran and probes the units that may route between towers."""
        refine = self.model_units.may_refine
        return Tracer(self.units, record_calls=refine, probe=self.model_units.probe() if refine else None)

    def _end_recording(self) -> tuple[ModuleGraph, Tracer] | None:
        """A training step is over: stop recording its inputs, and return the graph traced with the
        recording, if it was, for :meth:`_traced` (called by the caller, outside the step)."""
        traced = None
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            tracer, self._tracer = self._tracer, None
            traced = (tracer.graph(), tracer)
        graph = self.graph
        self.profiling.close(set(graph.called if graph is not None else ()) | self.model_units.unseen)
        return traced

    def _at_boundary(self, steps_done: int | None) -> None:
        """At a step boundary: profile a recorded step, plan from a profile at hand, judge a plan."""
        if steps_done is not None:
            self.optimizer_steps = steps_done
        if self.profiling.stage is Stage.CAPTURED:
            graphing = self.config.graphs is not False and self.graph_capture is not None
            failed = self.profiling.measure(
                self.model_units,
                self.engine.paused if self.engine is not None else None,
                self.graph_capture if graphing else None,
            )
            if failed is not None:
                self._unprofiled(failed)
        warmed = self.optimizer_steps >= self.config.profile.warmup_steps  # a reused profile waits
        if self.profiling.stage is Stage.PROFILED and self.from_profile and not self.planned and warmed:
            if self.broadcast(not self.model_units.unseen if self.is_main else None):  # the main graph
                self._plan_from_profile()
        if self.plan_guard.due():
            self._judge()

    def _unprofiled(self, reason: str) -> None:
        """Nothing to plan from: say why, and train on with the temporal plan."""
        if not self.from_profile or self.planned:
            if self.is_main:
                log.warning(f"{reason}; training goes on")
            return
        self.from_profile = False
        self.plan_guard.clear()
        if self.is_main:
            log.warning(f"{reason}; training goes on with the temporal plan")
        graph = self.model_units.graph_or_chain()
        self._apply(temporal_plan(graph, device_name(self.device), notes=[f"{reason}: temporal plan"]))
        self._write_outputs(graph)

    def _plan_from_profile(self) -> None:
        """Plan on the main process, share the plan, apply it everywhere, write it out."""
        profile = self.profile
        assert profile is not None
        graph = self.graph
        if graph is None:
            if profile.graph is None:
                return  # the first step traces it
            graph = profile.graph
        data = None
        if self.is_main:
            planning = Planning(
                device=DeviceSpec.from_current(self.device),
                max_micro_batches=self.max_micro_batches,
                trainable=tuple(n for n, m in self.units.items() if _trainable(m)),
                can_capture=self.graph_capture is not None,
            )
            data = chosen_plan(graph, profile, self.perf_model, self.config, planning).to_dict()
        self._apply(Plan.from_dict(self.broadcast(data)))
        self._write_outputs(graph)
        if self.plan is not None and not self.plan.plain:  # runs units otherwise than plain: time it
            self.plan_guard.watch()

    def _judge(self) -> None:
        """Keep the plan if it measured at least as fast as temporal (within the tolerance), else drop
        it; the main process's measurements decide, for every process."""
        assert self.plan is not None
        verdict = self.plan_guard.verdict(self.is_main, self.broadcast)
        if verdict is None:
            if self.is_main:
                log.warning(
                    "the plan is not checked against temporal steps: none was timed before it (warmup_steps"
                    f"={self.config.profile.warmup_steps}) or none after it; it stays"
                )
            return
        profile_graph = self.profile.graph if self.profile is not None else None
        graph = self.graph or profile_graph or self.model_units.graph_or_chain()
        judgement = judged(self.plan, verdict, graph, self.plan_guard.tolerance)
        if self.is_main:
            (log.info if judgement.kept else log.warning)(judgement.message)
        if judgement.kept:
            self.plan = judgement.plan
        else:
            self._apply(judgement.plan)
        if self.graph is not None:
            self._write_outputs(self.graph)

    def _refine(self, tracer: Tracer) -> bool:
        """Replace routers between towers by their parts, and units whose forward never ran by their
        parts that did (the main process decides); True when the units changed, so that the next
        training step is traced again."""
        found = self.model_units.refinement(tracer.ran, tracer.probe) if self.is_main else None
        names = self.broadcast(found[0] if found is not None else None)
        replaced = self.model_units.refine(names, found[1] if found is not None else None)
        if self.is_main:
            chosen = "\n".join(f"  {name}: {self.model_units.reasons.get(name, 'a unit')}" for name in names)
            again = ", traced again at the next step" if replaced else ""
            log.info(f"units chosen from the first training step{again}:\n{chosen}")
        if not replaced:
            return False
        self.profiling.abort()  # recorded for the old units
        self._attach()
        return True

    def _called(self, ran: set[str]) -> None:
        """A training step called ``ran``: a unit the graph has not seen run is traced at the next step
        (its graph joins the one known) while the plan is pending; afterwards it is only said."""
        new = self.model_units.called(ran)
        if not new or self.plan is None or (self.planned and self.plan.sequential):
            return  # nothing depends on the graph: the units run one after another as plain code
        unseen = set(self.model_units.unseen)
        if self.from_profile and not self.planned and self.model_units.retrace(new):
            if not new <= unseen and self.is_main:
                log.info(
                    f"a training step called units {sorted(new)} that the module graph has not seen;"
                    " tracing again"
                )
        else:
            warn_once(
                log,
                f"late-units-{sorted(new)}",
                f"units {sorted(new)} ran for the first time after the module graph was final; the plan runs"
                " them as it places them (alone, when it was made without them)",
            )

    def _traced(self, graph: ModuleGraph, tracer: Tracer | None = None) -> None:
        """A step's graph is known: refine the units, join a graph seen before, or (the first step)
        fix the plan of the sources that need no profile."""
        if (
            tracer is not None
            and tracer.record_calls
            and self.model_units.may_refine
            and self._refine(tracer)
        ):
            return
        for name, attrs in self.model_units.kept(tracer.harmless if tracer is not None else {}).items():
            if self.is_main:
                log.info(
                    f"unit {name} keeps tensors in its attribute {', '.join(attrs)}, which nothing else reads"
                    " during the step: harmless, so it still runs side by side"
                )
        for name, effect in graph.effects.items():
            warn_once(
                log,
                f"effects-{name}",
                f"unit {name} {effect}: that data flow bypasses the tensors it returns, so it runs alone"
                " (after everything before it, before everything after it)",
            )
        if self.model_units.unseen and self.graph is not None:
            self.model_units.join(graph)
            self._serialize()
            if self.is_main:
                log.info(
                    f"the module graph joins the units of steps with other inputs:\n{self.graph.describe()}"
                )
            return
        self.model_units.trace(graph)
        self._serialize()
        here = device_name(self.device)
        config = self.config
        if self.engine is not None and not self.planned:
            if self.from_profile and config.plan == "auto":
                self.plan = temporal_plan(graph, here)  # provisional: the warmup runs plain
            else:
                backend = self.engine.backend
                granted = {u: g.granted for u, g in backend.grants.items() if g.partitioned}
                reason = config.unprofilable or why_inline(config.backend, self.device)
                made = plan_without_profile(
                    graph,
                    config,
                    here,
                    self.graph_capture is not None,
                    granted,
                    backend.name,
                    reason or "nothing is profiled outside fit",
                )
                self._set_plan(made)
        if self.planned and self.plan is not None and self.plan.graphs:
            self._attach()  # graphs attach once the graph is known: units that run alone never replay one
        if self.is_main:
            pending = ""
            if self.from_profile and not self.planned:
                pending = (
                    f"\nplan: auto; the first {config.profile.warmup_steps} steps run plain, then the units"
                    " are profiled and planned"
                )
            log.info(f"{graph.describe()}{pending}")
        self._log_plan()

    # ------------------------------------------------------------------ applying a plan

    def _lookahead_checked(self, plan: Plan, given: bool = False) -> Plan:
        trainable = [n for n in plan.lookahead if _trainable(self.units[n])]
        return without_trainable_lookahead(plan, trainable, given)

    def _set_plan(self, plan: Plan) -> None:
        self.plan, self.planned = finalized(plan, self.config), True

    def _restore_plan(self, plan: Plan) -> None:
        """Apply the plan a checkpoint holds, unless it was made for another device."""
        here = device_name(self.device)
        if plan.device != here:
            log.warning(
                f"the checkpoint's plan was made for {plan.device}, not {here}; it is not applied and the"
                " plan is made again"
            )
            return
        self.model_units.take_names(plan.modules)
        self._set_plan(plan)
        if self.is_main:
            log.info("applying the plan from the checkpoint; not profiling or planning again")

    def _write_restored_outputs(self, state: Mapping[str, Any]) -> None:
        """A plan taken from a checkpoint: this run's directory gets it too, with the profile it came
        from (which the session then reports, when it measures none of its own)."""
        profile = state.get("profile")
        if self.profile is None and self.profiling.stage is Stage.OFF and profile is not None:
            self.profiling.report(profile)
        graph = self.graph
        if graph is None and self.profile is not None:
            graph = self.profile.graph
        self._write_outputs(graph or self.model_units.graph_or_chain())

    def _apply(self, plan: Plan) -> None:
        self._set_plan(plan)
        self._attach()
        self._log_plan()

    def _check_cap(self) -> None:
        cap = self.max_micro_batches
        asked = self.config.micro_batches
        if asked is None and self.planned and self.plan is not None:
            asked = self.plan.micro_batches
        if cap is not None and asked is not None and asked > cap:
            raise ValueError(
                f"{asked} micro-batches per step asked for, but {self.model_name} {self._cap_reason}; use at"
                f" most {cap}"
            )

    def _attach(self) -> None:
        """(Re)attach the engine for the plan in force (``placement.py``), and tell the driver."""
        if self.engine is None or not self.units:
            return
        final = self.plan if self.planned else None
        attach(self.engine, self.units, final, self.config, self.device, self.graph, self.graph_capture)
        self._serialize()
        if self.on_apply is not None:
            self.on_apply(final)

    def _serialize(self) -> None:
        """Units whose data flow bypasses their outputs run alone; all of them until a step was traced."""
        if self.engine is not None:
            self.engine.serial = self.model_units.alone

    def _log_plan(self) -> None:
        if self.planned and self.plan is not None:
            self.outputs.announce(self.plan, self.engine, self.config.backend)

    def _write_outputs(self, graph: ModuleGraph) -> None:
        if self.plan is not None:
            self.outputs.publish(self.plan, graph, self.profile, self.perf_model, self.config.profile.path)

    def _warn_split_numbers(self) -> None:
        """Say once when micro-batches will change the numbers: batch statistics, random masks."""
        found = split_changes_numbers(self.model_units.root)
        if found:
            warn_once(
                log,
                f"split-numbers-{self.model_name}",
                f"{self.micro_batches_now} micro-batches per step: {self.model_name} has {'; '.join(found)},"
                f" so the numbers will differ from {self.config.words.plain}'s (micro_batches=1 keeps them"
                " identical)",
            )


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _same(obj: T) -> T:
    return obj
