"""The steps of the closed loop that do not depend on the training framework.

The Lightning strategy and the Accelerate adapter both turn a profile into the plan to apply
(:func:`choose_plan`, on global rank 0) and a plan into the engine's backend, quotas and phases
(:func:`engine_arguments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_mosaic._logging import get_logger
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.engine import Backend, make_backend
from lightning_mosaic.engine.green import check_quotas
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.planner import Plan, device_name, temporal_plan
from lightning_mosaic.planner import plan as search_plan
from lightning_mosaic.profile import Profile

log = get_logger(__name__)


def choose_plan(
    graph: ModuleGraph,
    perf_model: Any,
    device: torch.device,
    batch_size: int,
    micro_batches: int | None = None,
    max_micro_batches: int | None = None,
    allow_lookahead: bool = True,
) -> Plan:
    """The planner's plan for ``graph`` on ``device``, or the temporal plan with the reason in its notes.

    ``perf_model`` None (none could be fitted) or a planner error (nothing fits memory, a batch that
    does not split) gives the temporal plan, with a warning. ``micro_batches`` fixes the count;
    ``max_micro_batches`` caps the search (a model whose loss couples its samples says 1);
    ``allow_lookahead`` false keeps every unit in its own step.
    """
    reason = None
    chosen: Plan | None = None
    if perf_model is None:
        reason = "no performance model could be fitted to the profile (see the warning above)"
    else:
        options: dict[str, Any] = {"micro_batches": micro_batches, "allow_lookahead": allow_lookahead}
        if max_micro_batches is not None:
            options["max_micro_batches"] = max_micro_batches
        try:
            chosen = search_plan(graph, perf_model, DeviceSpec.from_current(device), batch_size, **options)
        except ValueError as err:
            reason = f"the planner found no plan: {err}"
    if chosen is None:
        log.warning(f"{reason}; training with the temporal plan")
        chosen = temporal_plan(graph, device)
        chosen.notes.append(str(reason))
    chosen.device = device_name(device)
    if micro_batches is not None:
        set_micro_batches(chosen, micro_batches)
    return chosen


def set_micro_batches(plan: Plan, k: int) -> None:
    """Make ``plan`` run ``k`` micro-batches (given by the user), saying so in its notes."""
    if plan.lookahead and k != 1:
        plan.notes.append(f"micro_batches={k} given: {', '.join(plan.lookahead)} not computed one step ahead")
        plan.lookahead = []
    if plan.micro_batches != k:
        plan.notes.append(
            f"micro_batches={k} given: {k} micro-batches instead of the plan's {plan.micro_batches}"
        )
        plan.micro_batches = k


def engine_arguments(
    plan: Plan, units: Sequence[str], device: torch.device, backend: str | Backend
) -> tuple[Backend, dict[str, int], list[list[str]] | None]:
    """The backend, SM quotas and phases (groups) that run ``plan``; the temporal plan runs inline."""
    if plan.sequential:
        return make_backend("none", device), {}, None
    wanted = {m: q for phase in plan.phases for m, q in phase.quotas.items() if q is not None}
    where = f"{device_name(device)} (the plan was made for {plan.device})"
    quotas = quotas_for(wanted, units, device, where)
    return make_backend(backend, device), quotas, [phase.modules for phase in plan.phases]


def quotas_for(
    quotas: dict[str, int], units: Sequence[str], device: torch.device, where: str | None = None
) -> dict[str, int]:
    """``quotas`` checked against the units and, on a GPU, its SM count (``where`` names the device)."""
    sm_count = (
        torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
    )
    return check_quotas(quotas, list(units), sm_count, where or device_name(device))


def check_plan_units(plan: Plan, units: list[str]) -> None:
    """A ``ValueError`` unless ``plan`` is for exactly these units."""
    if set(plan.modules) != set(units):
        raise ValueError(
            f"the plan is for modules {plan.modules} but the strategy's units are {units}; make the plan for"
            " this model (or pass modules= to match it)"
        )


def micro_batch_cap(module: Any) -> int | None:
    """The model's ``mosaic_max_micro_batches`` (None: no limit), checked.

    A model whose loss couples the samples of a batch (contrastive losses, batch statistics) sets
    it to 1: micro-batches would change its numbers.
    """
    cap = getattr(module, "mosaic_max_micro_batches", None)
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(
            f"{type(module).__name__}.mosaic_max_micro_batches = {cap!r}; it must be a whole number >= 1"
        )
    return cap


def read_plan(plan: Any, choices: Sequence[str]) -> str | Plan:
    """``plan`` as one of ``choices`` or a :class:`Plan` (a copy; a path is read now and may raise)."""
    import os

    if isinstance(plan, Plan):
        return Plan.from_dict(plan.to_dict())
    if isinstance(plan, str) and plan in choices:
        return plan
    if isinstance(plan, (str, os.PathLike)):
        path = os.fspath(plan)
        if not os.path.exists(path):
            raise ValueError(
                f"plan={path!r} is neither one of {', '.join(choices)} nor an existing plan file"
            )
        return Plan.load(path)
    raise TypeError(
        f"plan must be one of {', '.join(choices)}, a Plan or the path of a plan file, got"
        f" {type(plan).__name__}: {plan!r}"
    )


def why_inline(backend: str | Backend, device: torch.device) -> str | None:
    """Why units cannot run side by side under ``backend`` on ``device`` (None when they can).

    ``backend="cpu"`` runs units inline but is profiled and planned with thread quotas: a rehearsal
    of the GPU pipeline, so it counts as able.
    """
    if isinstance(backend, Backend):
        from lightning_mosaic.engine.cpu import CpuThreadBackend

        able = backend.concurrent or isinstance(backend, CpuThreadBackend)
        return None if able else f"backend {backend.name!r} runs the units inline"
    if backend == "cpu":
        return None
    if backend == "none":
        return "backend 'none' runs the units inline"
    if device.type != "cuda":
        return (
            f"the units run inline on {device} (backend={backend!r} needs a GPU to run them side by side;"
            " backend='cpu' rehearses profiling and planning with thread quotas)"
        )
    return None


def first_matching(
    candidates: Sequence[tuple[str, Profile]], units: Any, device: torch.device
) -> Profile | None:
    """The first of ``(source, profile)`` measured for these units on this device, warning of the others."""
    from lightning_mosaic.profile import fingerprint
    from lightning_mosaic.profiler import device_capacity, device_label

    here, label, capacity = fingerprint(units), device_label(device), device_capacity(device)
    for source, profile in candidates:
        reason = profile.mismatch(here, label, capacity)
        if reason is None:
            log.info(f"reusing the profile from {source} (measured {profile.created}); not profiling again")
            return profile
        log.warning(f"the profile in {source} does not match this run: {reason}; profiling again")
    return None


def profile_file(path: str) -> list[tuple[str, Profile]]:
    """``[(path, profile)]`` when ``path`` exists (a corrupt file raises, naming it), else ``[]``."""
    import os

    return [(path, Profile.load(path))] if os.path.exists(path) else []
