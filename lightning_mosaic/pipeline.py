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
    sm_count = (
        torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
    )
    wanted = {m: q for phase in plan.phases for m, q in phase.quotas.items() if q is not None}
    where = f"{device_name(device)} (the plan was made for {plan.device})"
    quotas = check_quotas(wanted, list(units), sm_count, where)
    return make_backend(backend, device), quotas, [phase.modules for phase in plan.phases]


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


def matching_profile(path: str, units: Any, device: torch.device) -> Profile | None:
    """The profile in ``path`` if it was measured for these units on this device, else None.

    A missing file is None; one for other units or another device is None with a warning; a
    corrupt one raises a ``ProfileError`` naming it.
    """
    import os

    from lightning_mosaic.profile import Profile, fingerprint
    from lightning_mosaic.profiler import device_capacity, device_label

    if not os.path.exists(path):
        return None
    profile = Profile.load(path)
    reason = profile.mismatch(fingerprint(units), device_label(device), device_capacity(device))
    if reason is not None:
        log.warning(f"the profile in {path} does not match this run: {reason}; profiling again")
        return None
    return profile
