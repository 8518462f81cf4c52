"""The session's decisions as functions of plain data: which plan, which units graphed, what the guard's
verdict does to a plan. Nothing here holds state or touches a model's modules.

- :func:`finalized`: a plan as the configuration wants it run (fixed micro-batches, ``graphs=False``,
  the driver's notes);
- :func:`graph_units` / :func:`with_graphs`: the units captured as CUDA graphs under ``graphs=``;
- :func:`without_trainable_lookahead`: no unit with trainable parameters is computed one step ahead;
- :func:`plan_without_profile`: the plan of ``"temporal"`` / ``"concurrent"`` or of a run that
  profiles nothing;
- :func:`chosen_plan`: the planner's plan from a profile, or the temporal plan with the reason;
- :func:`judged`: the plan the guard's verdict leaves in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from lightning_mosaic._logging import get_logger
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.graphcost import launch_bound
from lightning_mosaic.guard import Verdict
from lightning_mosaic.perfmodel import MAX_MAPE, PerfModel, too_wrong
from lightning_mosaic.plan import Plan, concurrent_plan, temporal_plan
from lightning_mosaic.planner import plan as search_plan
from lightning_mosaic.profile import Profile
from lightning_mosaic.session.config import SessionConfig

log = get_logger("lightning_mosaic.session")


def finalized(plan: Plan, config: SessionConfig) -> Plan:
    """``plan`` as ``config`` runs it: its fixed micro-batch count, no CUDA graphs under
    ``graphs=False``, and the configuration's notes."""
    if config.micro_batches is not None:
        plan = plan.with_micro_batches(config.micro_batches)
    if config.graphs is False and plan.graphs:
        plan = replace(plan, graphs=()).with_notes(f"graphs=False: {list(plan.graphs)} run eagerly")
    missing = [note for note in config.notes if note not in plan.notes]
    return plan.with_notes(*missing) if missing else plan


def graph_units(
    graph: ModuleGraph,
    graphs: str | bool,
    can_capture: bool,
    device: str,
    model: Any = None,
    batch_size: float = 0,
) -> tuple[list[str], str | None]:
    """The units to capture as CUDA graphs under ``graphs=`` (``"auto"``: those ``model``'s host and
    device times at ``batch_size`` show launch-bound), and a note for the plan (None: nothing to say).
    Units that run alone (``graph.effects``) are never graphed."""
    if graphs is False:
        return [], None
    candidates = [m for m in graph.called if m not in graph.effects]
    if not can_capture:
        if graphs is True:
            return [], f"graphs=True: CUDA graphs need a CUDA device; the units run eagerly on {device}"
        return [], None
    if graphs is True:
        return candidates, None
    if model is None:
        return [], None
    bound = launch_bound(model, candidates, batch_size)
    if not bound:
        return [], "graphs='auto': no unit is launch-bound (host time under device time): none graphed"
    return bound, f"graphs='auto': units with host time >= device time replay CUDA graphs: {bound}"


def with_graphs(plan: Plan, graph: ModuleGraph, graphs: str | bool, can_capture: bool) -> Plan:
    """``plan`` with the units ``graphs=True`` captures (a plan made without a profile)."""
    if graphs is not True:
        return plan
    units, note = graph_units(graph, graphs, can_capture, plan.device)
    plan = replace(plan, graphs=tuple(u for u in units if u not in plan.lookahead))
    return plan.with_notes(note) if note else plan


def without_trainable_lookahead(plan: Plan, trainable: list[str], given: bool = False) -> Plan:
    """``plan`` without the lookahead units ``trainable`` (those with trainable parameters now).

    A unit computed one step ahead must not change between steps. A plan ``given`` by hand that
    lists a trainable unit is refused; a stored one (a checkpoint's: the unit was unfrozen since)
    loses that lookahead, with a warning.
    """
    trainable = [n for n in plan.lookahead if n in trainable]
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


def plan_without_profile(
    graph: ModuleGraph,
    config: SessionConfig,
    device: str,
    can_capture: bool,
    granted: Mapping[str, int | None] | None = None,
    backend: str = "",
    reason: str | None = None,
) -> Plan:
    """The plan of a source that needs no profile: ``"concurrent"`` (under the quotas the backend
    ``granted``), ``"temporal"``, or the temporal plan of a run that profiles nothing (``reason``)."""
    if config.plan == "concurrent":
        made = concurrent_plan(graph, dict(granted or {}), device, method=f"{backend} backend")
    elif config.plan == "temporal":
        made = temporal_plan(graph, device)
    else:
        made = temporal_plan(graph, device, notes=[f"{reason}: temporal plan"])
    return with_graphs(made, graph, config.graphs, can_capture)


@dataclass(frozen=True)
class Planning:
    """What :func:`chosen_plan` plans from besides the profile: the device, the model's micro-batch
    cap, the trainable lookahead candidates and whether CUDA graphs can be made here."""

    device: DeviceSpec
    max_micro_batches: int | None
    trainable: tuple[str, ...]
    can_capture: bool


def chosen_plan(
    graph: ModuleGraph,
    profile: Profile,
    model: PerfModel | None,
    config: SessionConfig,
    planning: Planning,
) -> Plan:
    """The planner's plan for ``graph`` from ``profile``, or the temporal plan with the reason in its
    notes (a model too wrong to plan from, units without a profile, no plan found)."""
    here = planning.device.name
    chosen, reason = None, None
    wrong = too_wrong(model, graph, profile.batch_size) if model else {}
    unprofiled = [m for m in graph.called if model and m not in model.modules]
    if model is None:
        reason = "no performance model could be fitted to the profile (see the warning above)"
    elif unprofiled:
        reason = f"units {unprofiled} ran in training steps but have no profile (see the warnings above)"
    elif wrong:
        reason = too_wrong_reason(wrong, profile, config)
    else:
        options: dict[str, Any] = {
            "micro_batches": config.micro_batches,
            "allow_lookahead": config.allow_lookahead,
        }
        if planning.max_micro_batches is not None:
            options["max_micro_batches"] = planning.max_micro_batches
        if config.resident_bytes:
            options["resident_bytes"] = config.resident_bytes
        graphs, note = graph_units(
            graph, config.graphs, planning.can_capture, here, model, profile.batch_size
        )
        options["graphs"] = graphs
        try:
            chosen = search_plan(graph, model, planning.device, profile.batch_size, **options)
        except ValueError as err:
            reason = f"the planner found no plan: {err}"
        else:
            chosen = chosen.with_notes(note) if note else chosen
    if chosen is None:
        log.warning(f"{reason}; training with the temporal plan")
        made = temporal_plan(graph, here, notes=[str(reason)])
        chosen = with_graphs(made, graph, config.graphs, planning.can_capture)
    chosen = without_trainable_lookahead(replace(chosen, device=here), list(planning.trainable))
    if config.micro_batches is not None:
        chosen = chosen.with_micro_batches(config.micro_batches)
    return chosen


def too_wrong_reason(wrong: Mapping[str, float], profile: Profile, config: SessionConfig) -> str:
    """Why a model whose held-out MAPE is ``wrong`` per unit is not planned from, and what to change,
    in the driver's words (``config.words``)."""
    listed = ", ".join(f"{m} {e:.0%}" for m, e in wrong.items())
    words = config.words
    if any(note.startswith("stopped by max_seconds") for note in profile.notes):
        hint = f"the profile was cut short: raise {words.budget}"
    else:
        more = f"more repeats help ({words.repeats})" if words.repeats else f"a longer {words.budget} helps"
        hint = (
            "its timings are noisy (a shared machine, or units of a few ms at most: the profile took"
            f" {profile.seconds:.1f} s); {more}"
        )
    return (
        f"the performance model is too wrong to plan from: held-out MAPE {listed} on the critical path,"
        f" above {MAX_MAPE:.0%}; {hint}"
    )


@dataclass(frozen=True)
class Judgement:
    """The plan in force after a verdict, whether the judged plan was kept, and what to say."""

    plan: Plan
    kept: bool
    message: str


def judged(plan: Plan, verdict: Verdict, graph: ModuleGraph, tolerance: float) -> Judgement:
    """Keep ``plan`` if it measured at least as fast as temporal (within ``tolerance``), else the
    temporal plan that replaces it, both with the measurements in their notes."""
    measured = replace(plan, measured_step_s=verdict.plan_s, measured_temporal_s=verdict.temporal_s)
    predicted = f"predicted {measured.speedup:.2f}x, " if measured.speedup is not None else ""
    if verdict.keep:
        message = f"the plan is kept: {predicted}{verdict.describe()}"
        return Judgement(
            measured.with_notes(f"guard: {predicted}{verdict.describe()}: plan kept"), True, message
        )
    reason = (
        f"guard: {predicted}{verdict.describe()}, more than {tolerance:.0%} slower than temporal: the"
        f" {measured.method} plan is dropped for the temporal plan"
    )
    temporal = replace(
        temporal_plan(graph, plan.device, notes=[*measured.notes, reason]),
        micro_batches=1,
        predicted_step_s=measured.predicted_temporal_s,
        predicted_temporal_s=measured.predicted_temporal_s,
        measured_step_s=verdict.temporal_s,
        measured_temporal_s=verdict.temporal_s,
    )
    return Judgement(temporal, False, reason)
