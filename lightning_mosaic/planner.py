"""Deployment plans: which units run side by side, under which quota, in how many micro-batches.

A ``Plan`` is plain data (JSON round-trip, ``describe()``). A step runs its phases in order; the
units of one phase run side by side, each under its quota (SMs on a GPU, intra-op threads on a
CPU; ``None`` is the whole device). The temporal plan runs every unit alone on the whole device,
one after another, which is what plain PyTorch does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_mosaic._files import write_text
from lightning_mosaic.graph import ModuleGraph

SCHEMA_VERSION = 1


@dataclass
class Phase:
    """Units that run side by side, each with its quota (``None``: the whole device)."""

    quotas: dict[str, int | None]

    def __post_init__(self) -> None:
        if not self.quotas:
            raise ValueError("a phase needs at least one module")
        for name, quota in self.quotas.items():
            if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool) or quota <= 0):
                raise ValueError(f"quota of module {name!r} must be a positive int or None, got {quota!r}")

    @property
    def modules(self) -> list[str]:
        return list(self.quotas)


@dataclass
class Plan:
    """How one training step runs its units."""

    phases: list[Phase]
    micro_batches: int = 1
    device: str = "unknown"
    method: str = "temporal"
    predicted_step_s: float | None = None
    predicted_temporal_s: float | None = None
    predicted_peak_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.micro_batches, int)
            or isinstance(self.micro_batches, bool)
            or self.micro_batches < 1
        ):
            raise ValueError(f"micro_batches must be an int >= 1, got {self.micro_batches!r}")
        seen: dict[str, int] = {}
        for index, phase in enumerate(self.phases):
            for name in phase.quotas:
                if name in seen:
                    raise ValueError(f"module {name!r} appears in phase {seen[name]} and in phase {index}")
                seen[name] = index

    @property
    def modules(self) -> list[str]:
        """Every unit the plan places, in phase order."""
        return [name for phase in self.phases for name in phase.quotas]

    @property
    def is_temporal(self) -> bool:
        """True when every unit runs alone on the whole device and the batch is not split."""
        return self.micro_batches == 1 and all(
            len(p.quotas) == 1 and None in p.quotas.values() for p in self.phases
        )

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"plan schema version {version!r} is not supported (expected {SCHEMA_VERSION})")
        return cls(
            phases=[Phase(quotas=dict(q)) for q in data["phases"]],
            micro_batches=data.get("micro_batches", 1),
            device=data.get("device", "unknown"),
            method=data.get("method", "temporal"),
            predicted_step_s=data.get("predicted_step_s"),
            predicted_temporal_s=data.get("predicted_temporal_s"),
            predicted_peak_bytes=data.get("predicted_peak_bytes"),
            notes=list(data.get("notes", [])),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        try:
            with open(path) as f:
                return cls.from_json(f.read())
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read plan file {os.fspath(path)!r}: {err}") from err


def temporal_plan(graph: ModuleGraph, device: str | torch.device = "cpu") -> Plan:
    """The plan plain PyTorch follows: every unit alone on the whole device, in topological order."""
    return Plan(
        phases=[Phase(quotas={name: None}) for name in graph.topological_order()],
        device=device_name(device),
        method="temporal",
    )


def device_name(device: str | torch.device) -> str:
    """A readable name for ``device`` (the GPU's product name on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def concurrent_plan(
    graph: ModuleGraph,
    quotas: Mapping[str, int | None],
    device: str | torch.device = "cpu",
    method: str = "user",
) -> Plan:
    """Units of each level of ``graph`` side by side, each under its quota (``None``: the whole device).

    This is what the engine does with concurrent streams and fixed quotas: a unit starts as soon as
    its inputs are ready, so units that do not depend on each other overlap.
    """
    return Plan(
        phases=[Phase(quotas={name: quotas.get(name) for name in level}) for level in graph.levels()],
        device=device_name(device),
        method=method,
    )
