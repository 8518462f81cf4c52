"""Deployment plans: which units run side by side, under which quota, in how many micro-batches.

A ``Plan`` is plain, immutable data (JSON round-trip, ``describe()``; derive a changed copy with
:func:`dataclasses.replace` or the ``with_*`` methods). A step runs its phases in order; the units
of one phase run side by side, each under its quota (SMs on a GPU, intra-op threads on a CPU;
``None`` is the whole device). The temporal plan runs every unit alone on the whole device, one
after another, which is what plain PyTorch does. The search for a plan is ``planner.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from lightning_mosaic._files import (
    OTHERS,
    FormatError,
    MapOf,
    check_schema,
    expect,
    parse_json,
    read_json,
    write_text,
)

if TYPE_CHECKING:
    from lightning_mosaic.graph import ModuleGraph

SCHEMA_VERSION = 1
_NUMBER = (int, float, type(None))
SCHEMA = {
    "schema_version": int,
    "phases": [MapOf((int, type(None)))],  # each phase: unit -> SMs (null: the whole device)
    "micro_batches": int,
    "device": str,
    "method": str,
    "predicted_step_s": _NUMBER,
    "predicted_temporal_s": _NUMBER,
    "predicted_peak_bytes": (int, type(None)),
    "measured_step_s": _NUMBER,
    "measured_temporal_s": _NUMBER,
    "notes": [str],
    "lookahead": [str],
    "graphs": [str],
    OTHERS: True,
}
"""A plan file's JSON layout, in the schema language of ``_files.schema_problems``."""
OPTIONAL = frozenset(SCHEMA) - {"schema_version", "phases"}


@dataclass(frozen=True)
class Phase:
    """Units that run side by side, each with its quota (``None``: the whole device); read-only."""

    quotas: Mapping[str, int | None]

    def __post_init__(self) -> None:
        if not self.quotas:
            raise ValueError("a phase needs at least one module")
        for name, quota in self.quotas.items():
            if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool) or quota <= 0):
                raise ValueError(f"quota of module {name!r} must be a positive int or None, got {quota!r}")
        object.__setattr__(self, "quotas", MappingProxyType(dict(self.quotas)))

    @property
    def modules(self) -> list[str]:
        return list(self.quotas)

    def __hash__(self) -> int:
        return hash(tuple(self.quotas.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Phase, (dict(self.quotas),))


@dataclass(frozen=True)
class Plan:
    """How one training step runs its units; read-only (see the module docstring)."""

    phases: tuple[Phase, ...]
    micro_batches: int = 1
    device: str = "unknown"
    method: str = "temporal"
    predicted_step_s: float | None = None
    predicted_temporal_s: float | None = None
    predicted_peak_bytes: int | None = None
    notes: tuple[str, ...] = ()
    lookahead: tuple[str, ...] = ()  # frozen units computed one step ahead
    measured_step_s: float | None = None  # median step under the plan, timed by the guard
    measured_temporal_s: float | None = None  # median temporal step of the same run
    graphs: tuple[str, ...] = ()  # units that replay CUDA graphs in training steps

    def __post_init__(self) -> None:
        phases = tuple(p if isinstance(p, Phase) else Phase(p) for p in self.phases)
        object.__setattr__(self, "phases", phases)
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "lookahead", tuple(self.lookahead))
        object.__setattr__(self, "graphs", tuple(self.graphs))
        if (
            not isinstance(self.micro_batches, int)
            or isinstance(self.micro_batches, bool)
            or self.micro_batches < 1
        ):
            raise ValueError(f"micro_batches must be an int >= 1, got {self.micro_batches!r}")
        seen: dict[str, int] = {}
        for index, phase in enumerate(phases):
            for name in phase.quotas:
                if name in seen:
                    raise ValueError(f"module {name!r} appears in phase {seen[name]} and in phase {index}")
                seen[name] = index
        unknown = [name for name in self.lookahead if name not in seen]
        if unknown:
            raise ValueError(f"lookahead names {unknown}, which are in no phase of the plan")
        unknown = [name for name in self.graphs if name not in seen]
        if unknown:
            raise ValueError(f"graphs names {unknown}, which are in no phase of the plan")
        both = [name for name in self.graphs if name in self.lookahead]
        if both:
            raise ValueError(f"units {both} are both computed one step ahead and graphed; a unit may be one")
        if self.lookahead and self.micro_batches != 1:
            raise ValueError(
                f"lookahead {list(self.lookahead)} needs whole batches, not {self.micro_batches}"
                " micro-batches"
            )

    # ------------------------------------------------------------------ queries

    @property
    def modules(self) -> list[str]:
        """Every unit the plan places, in phase order."""
        return [name for phase in self.phases for name in phase.quotas]

    @property
    def is_temporal(self) -> bool:
        """True when every unit runs alone on the whole device and the batch is not split."""
        return self.micro_batches == 1 and self._one_at_a_time()

    @property
    def plain(self) -> bool:
        """True when the plan runs the units exactly as plain PyTorch: sequential, no graphs."""
        return self.sequential and not self.graphs

    @property
    def sequential(self) -> bool:
        """True for the temporal plan (split into micro-batches or not): units inline, one after another."""
        return self.method == "temporal" and self._one_at_a_time()

    def _one_at_a_time(self) -> bool:
        return all(len(p.quotas) == 1 and None in p.quotas.values() for p in self.phases)

    @property
    def speedup(self) -> float | None:
        """Predicted temporal step time over predicted step time, when both are known."""
        if self.predicted_step_s and self.predicted_temporal_s:
            return self.predicted_temporal_s / self.predicted_step_s
        return None

    def check_graph(self, graph: ModuleGraph) -> None:
        """Raise ``ValueError`` unless the plan places exactly the units of ``graph``."""
        missing = [n for n in graph.modules if n not in self.modules]
        extra = [n for n in self.modules if n not in graph.modules]
        if missing or extra:
            raise ValueError(
                f"plan does not match the module graph: modules missing from the plan {missing},"
                f" modules in the plan but not in the graph {extra}"
            )

    def check_units(self, units: Sequence[str]) -> None:
        """Raise ``ValueError`` unless the plan is for exactly these units (a model's selection)."""
        if set(self.modules) != set(units):
            raise ValueError(
                f"the plan is for modules {self.modules} but the strategy's units are {list(units)}; make"
                " the plan for this model (or pass modules= to match it)"
            )

    # ------------------------------------------------------------------ changed copies

    def with_notes(self, *notes: str) -> Plan:
        """This plan with ``notes`` added."""
        return replace(self, notes=(*self.notes, *notes))

    def with_micro_batches(self, k: int) -> Plan:
        """This plan run in ``k`` micro-batches (given by the user), saying so in its notes.

        Units computed one step ahead need whole batches, so ``k > 1`` drops the lookahead.
        """
        plan = self
        if plan.lookahead and k != 1:
            plan = replace(plan, lookahead=()).with_notes(
                f"micro_batches={k} given: {', '.join(self.lookahead)} not computed one step ahead"
            )
        if plan.micro_batches != k:
            plan = replace(plan, micro_batches=k).with_notes(
                f"micro_batches={k} given: {k} micro-batches instead of the plan's {self.micro_batches}"
            )
        return plan

    # ------------------------------------------------------------------ text and JSON

    def describe(self) -> str:
        """A readable multi-line summary."""
        kind = "temporal (every module alone on the whole device)" if self.is_temporal else self.method
        lines = [
            f"Plan for {self.device}: {kind}, {self.micro_batches} micro-batch"
            f"{'es' if self.micro_batches != 1 else ''} per step"
        ]
        for index, phase in enumerate(self.phases):
            quotas = ", ".join(
                f"{name} ({'whole device' if q is None else q})" for name, q in phase.quotas.items()
            )
            lines.append(f"  phase {index}: {quotas}")
        if self.predicted_step_s is not None:
            line = f"  predicted step {self.predicted_step_s * 1e3:.2f} ms"
            if self.predicted_temporal_s is not None:
                line += f" vs temporal {self.predicted_temporal_s * 1e3:.2f} ms"
            if self.speedup is not None:
                line += f" ({self.speedup:.2f}x)"
            lines.append(line)
        if self.predicted_peak_bytes is not None:
            lines.append(f"  predicted peak memory {self.predicted_peak_bytes / 2**30:.2f} GiB")
        measured, temporal = self.measured_step_s, self.measured_temporal_s
        if measured is not None and temporal is not None:
            lines.append(
                f"  measured step {measured * 1e3:.2f} ms vs temporal {temporal * 1e3:.2f} ms"
                f" ({temporal / measured:.2f}x)"
            )
        if self.lookahead:
            lines.append(
                f"  one step ahead (frozen, overlapping the previous step): {', '.join(self.lookahead)}"
            )
        if self.graphs:
            lines.append(f"  CUDA graphs (one replay per pass in training steps): {', '.join(self.graphs)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "phases": [dict(p.quotas) for p in self.phases],
            "micro_batches": self.micro_batches,
            "device": self.device,
            "method": self.method,
            "predicted_step_s": self.predicted_step_s,
            "predicted_temporal_s": self.predicted_temporal_s,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "notes": list(self.notes),
            "lookahead": list(self.lookahead),
            "measured_step_s": self.measured_step_s,
            "measured_temporal_s": self.measured_temporal_s,
            "graphs": list(self.graphs),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        """A plan from :meth:`to_dict` data, checked field by field: a ``FormatError`` (a
        ``ValueError``) names ``source`` and the field."""
        expect(data, dict, source)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FormatError(
                f"{source}: schema version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        try:
            check_schema(data, SCHEMA, "plan", OPTIONAL)
        except FormatError as err:
            raise FormatError(f"{source}: {err}" if source != "plan" else str(err)) from err
        phases = data["phases"]
        try:
            return cls(
                phases=tuple(Phase(quotas=dict(q)) for q in phases),
                micro_batches=data.get("micro_batches", 1),
                device=data.get("device", "unknown"),
                method=data.get("method", "temporal"),
                predicted_step_s=data.get("predicted_step_s"),
                predicted_temporal_s=data.get("predicted_temporal_s"),
                predicted_peak_bytes=data.get("predicted_peak_bytes"),
                notes=tuple(data.get("notes", ())),
                lookahead=tuple(data.get("lookahead", ())),
                measured_step_s=data.get("measured_step_s"),
                measured_temporal_s=data.get("measured_temporal_s"),
                graphs=tuple(data.get("graphs", ())),
            )
        except (TypeError, ValueError) as err:
            raise FormatError(f"{source}: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        return cls.from_dict(parse_json(text, source), source)

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan file; an unreadable, non-UTF-8, non-JSON or malformed one is a ``FormatError``
        (a ``ValueError``) naming it."""
        return cls.from_dict(read_json(path, "plan file"), f"plan file {os.fspath(path)}")


def temporal_plan(graph: ModuleGraph, device: str = "cpu", notes: Iterable[str] = ()) -> Plan:
    """The plan plain PyTorch follows: every unit alone on the whole device, in topological order.

    ``device`` is the device's name (:func:`lightning_mosaic.devices.device_name`).
    """
    return Plan(
        phases=tuple(Phase({name: None}) for name in graph.topological_order()),
        device=device,
        method="temporal",
        notes=tuple(notes),
    )


def concurrent_plan(
    graph: ModuleGraph,
    quotas: Mapping[str, int | None],
    device: str = "unknown",
    method: str = "user",
) -> Plan:
    """Units of each level of ``graph`` side by side, each under its quota (``None``: the whole device).

    This is what the engine does with concurrent streams and fixed quotas: a unit starts as soon as
    its inputs are ready, so units that do not depend on each other overlap.
    """
    return Plan(
        phases=tuple(Phase({name: quotas.get(name) for name in level}) for level in graph.levels()),
        device=device,
        method=method,
    )
