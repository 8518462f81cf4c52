"""The closed loop for Accelerate training loops: ``prepare()`` in place of ``accelerator.prepare()``.

::

    from lightning_mosaic.accelerate import prepare

    model, optimizer, loader = prepare(accelerator, model, optimizer, loader)
    for batch in loader:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

``prepare`` calls ``accelerator.prepare`` and drives a :class:`~lightning_mosaic.session.Session`
(the same the Lightning strategy uses) from hooks on the prepared model and its optimizers: one
forward of the prepared model is one step (the engine joins when it returns; in training mode it is
also where the session's warmup ends and a step is captured), the engine joins again before every
optimizer step, and after every optimizer step the session advances (profiles a captured step,
plans, broadcasts the plan and applies it). Your loop computes the loss, so nothing here splits
batches: plans have one micro-batch and no unit one step ahead. The session (:func:`session`) is
registered for ``accelerator.save_state``: a run restored with ``load_state`` applies the saved plan
without profiling again. Lightning is not needed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from lightning_mosaic._hooks import LiveHook
from lightning_mosaic.engine import Backend
from lightning_mosaic.plan import Plan
from lightning_mosaic.session import ProfileSettings, Session, SessionConfig, Words

PLANS = ("auto", "temporal")
NOTE = "Accelerate loop: one micro-batch, no unit one step ahead"
WORDS = Words(plain="the same Accelerate loop without mosaic", budget="prepare(profile_seconds=...)")
_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


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
    graphs: str | bool = "auto",
) -> Any:
    """``accelerator.prepare(model, *objects)`` with the model's units run under a mosaic plan.

    Returns what ``accelerator.prepare`` returns. ``modules``, ``plan`` (``"auto"``, ``"temporal"``,
    a ``Plan`` or a plan file), ``backend``, ``profile`` (default ``<project_dir>/mosaic_profile.json``),
    ``warmup_steps``, ``profile_seconds`` and ``graphs`` mean what they mean for ``MosaicStrategy``. The
    optimizers among ``objects`` get the engine's join before every step.
    """
    settings = ProfileSettings(path=profile, warmup_steps=warmup_steps, max_seconds=profile_seconds)
    project_dir = getattr(accelerator, "project_dir", None) or "."
    settings = settings.in_directory(project_dir)
    config = SessionConfig(  # checked before preparing anything
        modules=modules,
        plan=plan,
        plan_choices=PLANS,
        backend=backend,
        micro_batches=1,
        allow_lookahead=False,
        graphs=graphs,
        profile=settings,
        out_dir=os.path.dirname(os.path.abspath(settings.path or ".")),
        notes=(NOTE,),
        precision=f"accelerate mixed_precision={accelerator.mixed_precision}",
        words=WORDS,
    )
    prepared = accelerator.prepare(model, *objects)
    items = prepared if isinstance(prepared, tuple) else (prepared,)
    mosaic = Session(
        accelerator.unwrap_model(items[0]),
        accelerator.device,
        config,
        broadcast=_broadcast,
        is_main=accelerator.is_main_process,
    )
    _Hooks(mosaic, items[0], [o for o in items[1:] if isinstance(o, torch.optim.Optimizer)])
    mosaic.start(fitting=True)
    _SESSIONS[accelerator] = mosaic
    accelerator.register_for_checkpointing(mosaic)
    return prepared


def session(accelerator: Any) -> Session:
    """The :class:`~lightning_mosaic.session.Session` that :func:`prepare` made for ``accelerator``."""
    if accelerator not in _SESSIONS:
        raise KeyError("this accelerator went through no lightning_mosaic.accelerate.prepare()")
    return _SESSIONS[accelerator]


class _Hooks:
    """Tell the session where an Accelerate loop is: forwards of the prepared model, optimizer steps."""

    def __init__(self, mosaic: Session, model: nn.Module, optimizers: Sequence[Any]) -> None:
        self.session = mosaic
        self.steps = 0
        self._stack: ExitStack | None = None
        model.register_forward_pre_hook(LiveHook(self._before_forward), with_kwargs=True)
        model.register_forward_hook(LiveHook(self._after_forward), always_call=True)
        inner = {id(o): getattr(o, "optimizer", o) for o in optimizers}  # the torch optimizers, once each
        for optimizer in inner.values():
            optimizer.register_step_pre_hook(self._before_optimizer_step)
            optimizer.register_step_post_hook(self._after_optimizer_step)

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._stack is not None:
            return
        if module.training:
            self.session.before_step(self.steps, (args, kwargs))
        stack = ExitStack()
        stack.enter_context(self.session.step(train=module.training))
        self._stack = stack

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()  # the engine joins; the first step's graph is traced, a capture ends

    def _before_optimizer_step(self, *_: Any) -> None:
        if self.session.engine is not None:
            self.session.engine.join()

    def _after_optimizer_step(self, *_: Any) -> None:
        self.steps += 1
        self.session.advance(self.steps)


def _broadcast(data: Any) -> Any:
    """``data`` of the main process, on every process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return data
    from accelerate.utils import broadcast_object_list

    box = [data]
    broadcast_object_list(box, from_process=0)
    return box[0]
