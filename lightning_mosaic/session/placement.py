"""Where the units run under a plan: the engine attached with the plan's backend, quotas, phases and graphs.

:func:`attach` (re)attaches a session's engine for the plan in force: a final plan that runs units
side by side gets the configured backend with its quotas (checked against the device) and phases;
``plan="concurrent"`` before its graph is traced gets the configured quotas; everything else (the
temporal plan, the warmup of ``plan="auto"``) runs inline. CUDA graphs attach once the module graph
is known, never for a unit that runs alone, and only where graphs can be made (else said once).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.devices import DeviceSpec, device_name
from lightning_mosaic.engine import Engine, make_backend
from lightning_mosaic.engine.graphs import Capture
from lightning_mosaic.engine.green import check_quotas
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.plan import Plan
from lightning_mosaic.session.config import SessionConfig

log = get_logger("lightning_mosaic.session")


def attach(
    engine: Engine,
    units: Mapping[str, nn.Module],
    plan: Plan | None,
    config: SessionConfig,
    device: torch.device,
    graph: ModuleGraph | None,
    graph_capture: Capture | None,
) -> None:
    """Attach ``engine`` to ``units`` for ``plan`` (None: no final plan yet)."""
    if engine.attached:
        engine.detach()
    quotas: dict[str, int] = {}
    groups = None
    if plan is not None and not plan.sequential:
        wanted = {m: q for phase in plan.phases for m, q in phase.quotas.items() if q is not None}
        quotas = checked_quotas(wanted, units, device, f" (the plan was made for {plan.device})")
        backend, groups = make_backend(config.backend, device), [p.modules for p in plan.phases]
    elif plan is None and config.plan == "concurrent":
        backend, quotas = make_backend(config.backend, device), checked_quotas(config.quotas, units, device)
    else:  # the temporal plan, the warmup of plan="auto", or no plan yet: plain
        backend = make_backend("none", device)
    engine.attach(
        units,
        backend=backend,
        quotas=quotas,
        device=device,
        groups=groups,
        graphs=graphed_now(plan, units, graph, graph_capture, device),
        capture=graph_capture,
    )


def graphed_now(
    plan: Plan | None,
    units: Mapping[str, nn.Module],
    graph: ModuleGraph | None,
    graph_capture: Capture | None,
    device: torch.device,
) -> list[str]:
    """The plan's graphed units the engine captures now: once the graph is known (never a unit that
    runs alone), where CUDA graphs can be made (else said once)."""
    if plan is None or not plan.graphs or graph is None:
        return []
    chosen = [u for u in plan.graphs if u not in graph.effects and u in units]
    if chosen and graph_capture is None:
        warn_once(
            log,
            f"no-capture-{device}",
            f"the plan graphs {chosen}, but CUDA graphs need a CUDA device: they run eagerly on"
            f" {device_name(device)}",
        )
        return []
    return chosen


def checked_quotas(
    quotas: Mapping[str, int], units: Mapping[str, nn.Module], device: torch.device, where: str = ""
) -> dict[str, int]:
    """``quotas`` checked against the units and, on a GPU, its SM count."""
    spec = DeviceSpec.from_current(device)
    sm_count = spec.sm_count if spec.quota_unit == "sm" else None
    return check_quotas(quotas, list(units), sm_count, f"{spec.name}{where}")
