"""The profile: what each unit costs alone under a grid of (batch, quota), as a versioned JSON file.

A profile is plain data: :class:`Profile` holds the model's fingerprint, the device it was measured
on, the grid, one :class:`Sample` per (unit, pass, batch, quota) and one :class:`MemorySample` per
(unit, batch), and, where the units were captured as CUDA graphs, one ``graphed`` sample per unit
and pass at the full batch on the whole device (the replay's device and host time). ``profiler.py``
measures it, ``perfmodel.py`` fits a model to it, the
``MosaicProfiler`` callback reuses a saved one whose fingerprint and device match.

Quotas are SMs on a GPU (``quota_unit == "sm"``) and intra-op threads on a CPU
(``quota_unit == "thread"``); ``capacity`` is the device's total (all SMs, all threads).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lightning_mosaic._files import OTHERS, FormatError, read_json, schema_problems, summary, write_text
from lightning_mosaic.devices import QUOTA_UNITS, unit_label
from lightning_mosaic.graph import ModuleGraph

if TYPE_CHECKING:
    from torch import nn

SCHEMA_VERSION = 1
PASSES = ("forward", "backward")


class ProfileError(FormatError):
    """A profile file that cannot be read, or data that does not follow the profile schema."""


@dataclass
class Sample:
    """The median time of one pass of one unit at one grid point; ``seconds`` is None when infeasible.

    ``seconds`` is the device's time (CUDA events; the wall clock on a CPU), ``host_seconds`` the
    time the calling thread took to issue the pass (the wall clock around the call, which on a CPU
    runs it); None in profiles that did not measure it.
    """

    module: str
    pass_: str  # "forward" or "backward" (``"pass"`` in JSON)
    batch: int  # samples of the step's batch
    quota: int  # SMs or threads
    seconds: float | None
    feasible: bool = True
    repeats: int = 0  # timed runs behind the median
    spread: float = 0.0  # (slowest - fastest) / median of the timed runs
    error: str = ""  # why the point is infeasible
    host_seconds: float | None = None


@dataclass
class MemorySample:
    """Memory of one forward + backward of one unit at one batch size."""

    module: str
    batch: int
    activation_bytes: int | None  # bytes autograd saved for backward (not parameters, not inputs)
    peak_bytes: int | None = None  # GPU: peak allocated above what was allocated before the call
    feasible: bool = True


@dataclass
class ModuleInfo:
    """What the profiler learned about a unit before timing it."""

    name: str
    parameters: int  # number of parameter elements
    trainable: bool  # owns parameters that require grad
    backward: bool  # has a backward pass (trainable parameters or grad-requiring inputs)
    batch_rows: int | None  # rows of its batched inputs at the full batch; None: inputs not sliceable
    calls: int = 1  # calls per step


@dataclass
class Profile:
    """Everything measured about a model's units on one device; see the module docstring."""

    fingerprint: dict[str, Any]
    device: str
    device_type: str  # "cuda" or "cpu"
    quota_unit: str
    capacity: int
    granularity: list[int]  # [minimum, multiple] of a quota
    torch_version: str
    batch_size: int
    batch_fractions: list[float]
    quotas: list[int]
    modules: list[ModuleInfo]
    samples: list[Sample] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    green_context: str | None = None  # the green-context API used, when quotas were SM partitions
    grants: list[dict[str, int]] = field(default_factory=list)  # [{"requested": n, "granted": m}]
    seconds: float = 0.0  # wall-clock time the profile took
    complete: bool = True  # False when ``max_seconds`` stopped it before the whole grid
    notes: list[str] = field(default_factory=list)
    created: str = ""
    graph: ModuleGraph | None = None  # the module graph of the profiled step
    graphed: list[Sample] = field(default_factory=list)  # replays of CUDA graphs: full batch, whole device
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ queries

    @property
    def module_names(self) -> list[str]:
        return [m.name for m in self.modules]

    @property
    def batches(self) -> list[int]:
        return batch_grid(self.batch_size, self.batch_fractions)

    def module(self, name: str) -> ModuleInfo:
        for info in self.modules:
            if info.name == name:
                return info
        raise KeyError(f"module {name!r} is not in the profile; it has {self.module_names}")

    def has_host_times(self) -> bool:
        """Whether the profile measured host (issue) times (older profiles did not)."""
        return any(s.host_seconds is not None for s in self.samples if s.feasible)

    def samples_of(self, module: str, pass_: str, feasible_only: bool = True) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.module == module and s.pass_ == pass_ and (s.feasible or not feasible_only)
        ]

    def mismatch(
        self, fingerprint: Mapping[str, Any], device: str, capacity: int | None = None
    ) -> str | None:
        """Why this profile does not describe a model with ``fingerprint`` on ``device`` with
        ``capacity`` SMs or threads (None: it does)."""
        if self.device != device:
            return f"it was measured on {self.device!r}, this run is on {device!r}"
        if capacity is not None and capacity != self.capacity:
            unit = unit_label(self.quota_unit)
            return f"it was measured with {self.capacity} {unit}, this run has {capacity}"
        ours, theirs = self.fingerprint.get("precision"), fingerprint.get("precision")
        if ours != theirs:
            return f"it was measured in {ours or 'an unrecorded precision'}, this run trains in {theirs}"
        if self.fingerprint.get("digest") != fingerprint.get("digest"):
            ours, theirs = self.fingerprint.get("modules", {}), fingerprint.get("modules", {})
            changed = sorted(n for n in set(ours) | set(theirs) if ours.get(n) != theirs.get(n))
            return f"the model changed (modules with other parameters: {changed})"
        return None

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, graph=None))
        data["graph"] = self.graph.to_dict() if self.graph is not None else None
        for sample in [*data["samples"], *data["graphed"]]:
            sample["pass"] = sample.pop("pass_")
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        """A profile from JSON data, checked against the schema (a ``ProfileError`` names the field)."""
        problems = validate(data)
        if problems:
            raise ProfileError(f"not a valid profile: {summary(problems)}")
        data = {"graph": None} | dict(data)
        if data["graph"] is not None:
            try:
                data["graph"] = ModuleGraph.from_dict(data["graph"], "profile: 'graph'")
            except FormatError as err:
                raise ProfileError(f"not a valid profile: {err}") from err
        data["modules"] = [ModuleInfo(**m) for m in data["modules"]]
        for key in ("samples", "graphed"):
            data[key] = [
                Sample(pass_=s["pass"], **{k: v for k, v in s.items() if k != "pass"})
                for s in data.get(key, [])
            ]
        data["memory"] = [MemorySample(**m) for m in data["memory"]]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as JSON (the parent directory is created, the file never half-written)."""
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        """Read a profile file; an unreadable, non-JSON or invalid file is a ``ProfileError`` naming it."""
        path = os.fspath(path)
        try:
            data = read_json(path, "profile")
        except FormatError as err:
            raise ProfileError(str(err)) from err
        try:
            return cls.from_dict(data)
        except ProfileError as err:
            raise ProfileError(f"profile {path} is {err}") from err

    # ------------------------------------------------------------------ text

    def describe(self) -> str:
        unit = unit_label(self.quota_unit)
        precision = self.fingerprint.get("precision") or "precision not recorded"
        lines = [
            f"profile of {len(self.modules)} modules on {self.device} ({self.capacity} {unit}), torch "
            f"{self.torch_version}, batch {self.batch_size}, {precision}",
            f"  grid: batches {self.batches} x quotas {self.quotas} {unit}"
            + (f"; green contexts: {self.green_context}" if self.green_context else ""),
            f"  measured in {self.seconds:.1f} s"
            + ("" if self.complete else " (stopped early: grid incomplete)"),
        ]
        for info in self.modules:
            full = [
                s
                for s in self.samples
                if s.module == info.name
                and s.batch == self.batch_size
                and s.quota == self.capacity
                and s.feasible
            ]
            times = ", ".join(f"{s.pass_} {s.seconds * 1e3:.3g} ms" for s in full) or "not measured"
            infeasible = sum(1 for s in self.samples if s.module == info.name and not s.feasible)
            kind = "trainable" if info.trainable else "frozen"
            lines.append(
                f"  {info.name}: {info.parameters:,} parameters ({kind}); full batch on the whole device:"
                f" {times}" + (f"; {infeasible} infeasible points" if infeasible else "")
            )
        if self.graphed:
            units = list(dict.fromkeys(s.module for s in self.graphed))
            lines.append(f"  timed as CUDA graphs too (full batch, whole device): {', '.join(units)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def batch_grid(batch_size: int, fractions: list[float] | tuple[float, ...]) -> list[int]:
    """The distinct batch sizes of ``fractions`` of ``batch_size`` (at least 1 sample each), ascending."""
    return sorted({max(1, round(f * batch_size)) for f in fractions})


def fingerprint(units: Mapping[str, nn.Module], precision: str | None = None) -> dict[str, Any]:
    """What identifies a model for profile reuse: unit names, their parameters' names, shapes and
    dtypes, and the precision it trains in (``"bf16-mixed, float32 matmul high"``; see
    :func:`precision_of`)."""
    modules = {
        name: [
            [pname, list(p.shape), str(p.dtype).removeprefix("torch."), bool(p.requires_grad)]
            for pname, p in module.named_parameters()
        ]
        for name, module in units.items()
    }
    digest = hashlib.sha256(json.dumps([modules, precision], sort_keys=True).encode()).hexdigest()[:16]
    return {"digest": digest, "modules": modules, "precision": precision}


def precision_of(precision: str) -> str:
    """``precision`` (the training framework's: ``"32-true"``, ``"bf16-mixed"``, ...) with the float32
    matmul precision in force (``"highest"``, or ``"high"`` with TF32), which changes fp32 kernels."""
    import torch

    return f"{precision}, float32 matmul {torch.get_float32_matmul_precision()}"


# ---------------------------------------------------------------------- schema

_NUM = (int, float)
_SAMPLE = {
    "module": str,
    "pass": str,
    "batch": int,
    "quota": int,
    "seconds": (float, int, type(None)),
    "feasible": bool,
    "repeats": int,
    "spread": _NUM,
    "error": str,
    "host_seconds": (float, int, type(None)),
}
_MEMORY = {
    "module": str,
    "batch": int,
    "activation_bytes": (int, type(None)),
    "peak_bytes": (int, type(None)),
    "feasible": bool,
}
_MODULE = {
    "name": str,
    "parameters": int,
    "trainable": bool,
    "backward": bool,
    "batch_rows": (int, type(None)),
    "calls": int,
}
SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "fingerprint": {"digest": str, "modules": dict, "precision": (str, type(None)), OTHERS: True},
    "device": str,
    "device_type": str,
    "quota_unit": str,
    "capacity": int,
    "granularity": [int],
    "torch_version": str,
    "batch_size": int,
    "batch_fractions": [_NUM],
    "quotas": [int],
    "modules": [_MODULE],
    "samples": [_SAMPLE],
    "memory": [_MEMORY],
    "green_context": (str, type(None)),
    "grants": [dict],
    "seconds": _NUM,
    "complete": bool,
    "notes": [str],
    "created": str,
    "graph": (dict, type(None)),
    "graphed": [_SAMPLE],
}
"""The profile's JSON layout: a type, a tuple of allowed types, ``[item]`` for lists, a dict for objects."""
OPTIONAL = frozenset({"graph", "graphed", "host_seconds", "precision"})  # fields a profile may lack


def validate(data: Any) -> list[str]:
    """Every way ``data`` departs from :data:`SCHEMA` and the profile's invariants (empty: valid)."""
    problems: list[str] = []
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        return [
            f"schema_version {data.get('schema_version')!r} is not supported"
            f" (this version reads {SCHEMA_VERSION})"
        ]
    problems += schema_problems(data, SCHEMA, "profile", OPTIONAL)
    if problems:
        return problems
    names = {m["name"] for m in data["modules"]}
    if data["quota_unit"] not in QUOTA_UNITS:
        problems.append(f"quota_unit {data['quota_unit']!r} is not one of {QUOTA_UNITS}")
    if data["batch_size"] < 1 or data["capacity"] < 1:
        problems.append(
            f"batch_size ({data['batch_size']}) and capacity ({data['capacity']}) must be positive"
        )
    listed = [(f"samples[{i}]", s) for i, s in enumerate(data["samples"])]
    listed += [(f"graphed[{i}]", s) for i, s in enumerate(data.get("graphed", []))]
    for where, s in listed:
        if s["module"] not in names:
            problems.append(
                f"{where}.module {s['module']!r} is not one of the profile's modules {sorted(names)}"
            )
        if s["pass"] not in PASSES:
            problems.append(f"{where}.pass {s['pass']!r} is not one of {PASSES}")
        if s["feasible"] and (s["seconds"] is None or not math.isfinite(s["seconds"]) or s["seconds"] <= 0):
            problems.append(f"{where}: a feasible sample needs positive seconds, got {s['seconds']!r}")
        host = s.get("host_seconds")
        if host is not None and (not math.isfinite(host) or host < 0):
            problems.append(f"{where}: host_seconds must be a finite number >= 0, got {host!r}")
        if not 1 <= s["quota"] <= data["capacity"] or s["batch"] < 1:
            problems.append(
                f"{where}: quota {s['quota']} must be in 1..{data['capacity']}"
                f" and batch {s['batch']} positive"
            )
    for i, m in enumerate(data["memory"]):
        if m["module"] not in names:
            problems.append(f"memory[{i}].module {m['module']!r} is not one of the profile's modules")
    return problems
