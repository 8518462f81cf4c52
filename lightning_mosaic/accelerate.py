"""The closed loop for Accelerate training loops: ``prepare()`` in place of ``accelerator.prepare()``.

::

    from lightning_mosaic.accelerate import prepare

    model, optimizer, loader = prepare(accelerator, model, optimizer, loader)
    for batch in loader:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

``prepare`` calls ``accelerator.prepare`` and hooks the same engine the Lightning strategy uses
into the model: one forward of the prepared model is one step (the engine joins when it returns),
and the engine joins again before every optimizer step. With ``plan="auto"`` the first
``warmup_steps`` optimizer steps run plain, the next forward's unit inputs are captured (and the
module graph traced), and after that step the main process profiles every unit alone, fits the
performance model, plans and broadcasts the plan, which every process applies from the next
forward. Your loop computes the loss, so nothing here splits batches: plans have one micro-batch and
no unit one step ahead. The session (:func:`session`) is registered for ``accelerator.save_state``:
a run restored with ``load_state`` applies the saved plan without profiling again.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from lightning_mosaic._logging import get_logger
from lightning_mosaic.engine import Backend, Engine, make_backend
from lightning_mosaic.engine.backends import check_backend
from lightning_mosaic.graph import ModuleGraph, Tracer
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.pipeline import (
    check_plan_units,
    choose_plan,
    engine_arguments,
    first_matching,
    profile_file,
    read_plan,
    why_inline,
)
from lightning_mosaic.planner import Plan, device_name, temporal_plan
from lightning_mosaic.profile import Profile
from lightning_mosaic.profiler import InputCapture, profile_units
from lightning_mosaic.selection import check_names, select_modules

log = get_logger(__name__)
PLANS = ("auto", "temporal")
_SESSIONS: weakref.WeakKeyDictionary[Any, MosaicSession] = weakref.WeakKeyDictionary()


def prepare(
    accelerator: Any,
    model: nn.Module,
    *objects: Any,
    modules: Sequence[str] | None = None,
    plan: str | os.PathLike | Plan = "auto",
    backend: str | Backend = "auto",
    profile: str | os.PathLike | None = None,
    warmup_steps: int = 3,
    profile_seconds: float = 60.0,
) -> Any:
    """``accelerator.prepare(model, *objects)`` with the model's units run under a mosaic plan.

    Returns what ``accelerator.prepare`` returns. ``modules``, ``plan`` (``"auto"``, ``"temporal"``,
    a ``Plan`` or a plan file), ``backend``, ``profile`` (default ``<project_dir>/mosaic_profile.json``),
    ``warmup_steps`` and ``profile_seconds`` mean what they mean for ``MosaicStrategy``. The
    optimizers among ``objects`` get the engine's join before every step.
    """
    prepared = accelerator.prepare(model, *objects)
    items = prepared if isinstance(prepared, tuple) else (prepared,)
    mosaic = MosaicSession(
        accelerator,
        items[0],
        [o for o in items[1:] if isinstance(o, torch.optim.Optimizer)],  # Accelerate's wrapper is one too
        modules=modules,
        plan=plan,
        backend=backend,
        profile=profile,
        warmup_steps=warmup_steps,
        profile_seconds=profile_seconds,
    )
    _SESSIONS[accelerator] = mosaic
    accelerator.register_for_checkpointing(mosaic)
    return prepared


def session(accelerator: Any) -> MosaicSession:
    """The :class:`MosaicSession` that :func:`prepare` made for ``accelerator``."""
    if accelerator not in _SESSIONS:
        raise KeyError("this accelerator went through no lightning_mosaic.accelerate.prepare()")
    return _SESSIONS[accelerator]


class MosaicSession:
    """The engine, profile and plan of one prepared model; see the module docstring.

    ``plan`` is the plan in use (None until the first forward, the temporal plan during warmup),
    ``planned`` whether it is final, ``graph`` the traced module graph, ``profile`` and
    ``perf_model`` what profiling produced, ``engine`` the engine.
    """

    def __init__(
        self,
        accelerator: Any,
        model: nn.Module,
        optimizers: Sequence[Any],
        modules: Sequence[str] | None = None,
        plan: str | os.PathLike | Plan = "auto",
        backend: str | Backend = "auto",
        profile: str | os.PathLike | None = None,
        warmup_steps: int = 3,
        profile_seconds: float = 60.0,
    ) -> None:
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be a whole number of steps, 0 or more")
        self.accelerator = accelerator
        self.backend = check_backend(backend)
        self.warmup_steps, self.profile_seconds = warmup_steps, profile_seconds
        self.device: torch.device = accelerator.device
        root = getattr(accelerator, "project_dir", None) or "."
        self.path = os.fspath(profile) if profile is not None else os.path.join(root, "mosaic_profile.json")
        self.units = select_modules(accelerator.unwrap_model(model), check_names(modules))
        self.engine = Engine()
        self.graph: ModuleGraph | None = None
        self.profile: Profile | None = None
        self.perf_model: PerfModel | None = None
        self.steps = 0
        source = read_plan(plan, PLANS)
        self.plan = source if isinstance(source, Plan) else None
        self.planned = source != "auto"
        if self.planned and self.plan is not None:
            check_plan_units(self.plan, list(self.units))
        self._auto = source == "auto"
        self._stack: ExitStack | None = None
        self._tracer: Tracer | None = None
        self._capture: InputCapture | None = None
        self._batch = 0
        model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        model.register_forward_hook(self._after_forward, always_call=True)
        inner = {id(o): getattr(o, "optimizer", o) for o in optimizers}  # the torch optimizers, once each
        for optimizer in inner.values():
            optimizer.register_step_pre_hook(lambda *_: self.engine.join())
            optimizer.register_step_post_hook(self._after_optimizer_step)
        self._engage()
        if self._auto and self._side_by_side() is None:
            self.profile = first_matching(profile_file(self.path), self.units, self.device)
            self._fit_model()

    # ------------------------------------------------------------------ checkpoints (save_state / load_state)

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict() if self.planned and self.plan is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("plan") is None:
            return
        restored = Plan.from_dict(state["plan"])
        if restored.device != device_name(self.device):
            log.warning(
                f"the saved plan was made for {restored.device}, not {device_name(self.device)}; not applied"
            )
            return
        check_plan_units(restored, list(self.units))
        self.plan, self.planned = restored, True
        self._engage()
        log.info("applying the saved plan; not profiling or planning again")

    # ------------------------------------------------------------------ hooks

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._stack is not None or not self.units:
            return
        stack = ExitStack()
        stack.enter_context(self.engine.step())
        if self.graph is None:
            self._tracer = stack.enter_context(Tracer(self.units))
        if self._wants_capture() and module.training:
            from lightning_mosaic.microbatch import batch_size

            self._batch = batch_size((args, kwargs))
            self._capture = InputCapture(self.units)
            self._capture.start()
        self._stack = stack

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if self._capture is not None:
            self._capture.stop()
        stack.close()  # leaves the tracer, then the engine's step (joins)
        if self._tracer is not None:
            self.graph, self._tracer = self._tracer.graph(), None
            if self.plan is None or not self.planned:
                self.plan = temporal_plan(self.graph, self.device)
                reason = self._side_by_side() if self._auto else None
                if reason is not None:  # nothing to profile for: the plan is final
                    self.plan.notes.append(f"{reason}: temporal plan")
                    self.planned = True
            if self.accelerator.is_main_process:
                log.info(f"{self.graph.describe()}\n{self.plan.describe()}")

    def _after_optimizer_step(self, *_: Any) -> None:
        self.steps += 1
        if self._capture is not None:
            capture, self._capture = self._capture, None
            self._profile_and_plan(capture)
        elif self._auto and not self.planned and self.profile is not None and self.graph is not None:
            self._plan()  # a reused profile: plan at once

    # ------------------------------------------------------------------ the loop

    def _side_by_side(self) -> str | None:
        return why_inline(self.backend, self.device)

    def _wants_capture(self) -> bool:
        return (
            self._auto
            and not self.planned
            and self.profile is None
            and self._side_by_side() is None
            and self.steps >= self.warmup_steps
        )

    def _profile_and_plan(self, capture: InputCapture) -> None:
        data = None
        if self.accelerator.is_main_process:
            with self.engine.paused():
                profile = profile_units(
                    self.units,
                    capture.captured,
                    self._batch,
                    calls=dict(capture.calls),
                    max_seconds=self.profile_seconds,
                )
            profile.graph = self.graph.to_dict() if self.graph is not None else None
            profile.save(self.path)
            log.info(f"{profile.describe()}\nprofile saved to {self.path}")
            data = profile.to_dict()
        self.profile = Profile.from_dict(_broadcast(data))
        self._fit_model()
        self._plan()

    def _fit_model(self) -> None:
        if self.profile is None:
            return
        try:
            self.perf_model = PerfModel().fit(self.profile)
        except ValueError as err:
            log.warning(f"no performance model could be fitted to the profile: {err}")
            self.perf_model = None

    def _plan(self) -> None:
        assert self.profile is not None
        graph = self.graph or ModuleGraph.from_dict(self.profile.graph or {})
        data = None
        if self.accelerator.is_main_process:
            chosen = choose_plan(
                graph,
                self.perf_model,
                self.device,
                self.profile.batch_size,
                micro_batches=1,
                allow_lookahead=False,
            )
            chosen.notes.append("Accelerate loop: one micro-batch, no unit one step ahead")
            data = chosen.to_dict()
        self.plan, self.planned = Plan.from_dict(_broadcast(data)), True
        self._engage()
        if self.accelerator.is_main_process:
            log.info(f"{self.plan.describe()}\n{self.engine.backend.describe()}")
            self.plan.save(os.path.join(os.path.dirname(os.path.abspath(self.path)), "mosaic_plan.json"))

    def _engage(self) -> None:
        if self.engine.attached:
            self.engine.detach()
        if not self.units:
            return
        if self.planned and self.plan is not None:
            backend, quotas, groups = engine_arguments(self.plan, list(self.units), self.device, self.backend)
        else:
            backend, quotas, groups = make_backend("none", self.device), {}, None
        self.engine.attach(self.units, backend=backend, quotas=quotas, device=self.device, groups=groups)


def _broadcast(data: Any) -> Any:
    """``data`` of the main process, on every process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return data
    from accelerate.utils import broadcast_object_list

    box = [data]
    broadcast_object_list(box, from_process=0)
    return box[0]
