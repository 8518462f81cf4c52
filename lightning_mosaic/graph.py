"""The module graph: which units a model has and which unit's outputs feed which unit.

A ``ModuleGraph`` is plain data (JSON round-trip, ``describe()``). It is either written by hand
with :meth:`ModuleGraph.from_edges` or traced from one real step
(:func:`lightning_mosaic.tracing.trace`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_mosaic._files import OTHERS, FormatError, MapOf, check_schema, expect, parse_json, read_json

SCHEMA_VERSION = 1
SCHEMA = {
    "schema_version": int,
    "inputs": MapOf([str]),  # unit -> the units whose outputs it consumes
    "frozen": [str],
    "calls": MapOf(int),
    "parameters": MapOf(int),
    "effects": MapOf(str),
    OTHERS: True,
}
"""A module graph's JSON layout, in the schema language of ``_files.schema_problems``."""
OPTIONAL = frozenset({"frozen", "calls", "parameters", "effects"})


@dataclass
class ModuleGraph:
    """A DAG of units.

    ``inputs`` maps every unit, in execution order, to the units whose outputs it consumes.
    ``frozen`` lists units without trainable parameters. ``calls`` and ``parameters`` hold, for a
    traced graph, how often each unit ran in the traced step and how many parameters it owns.
    ``effects`` maps each unit whose data flow bypasses the tensors it returns (it changes an input
    in place, writes tensors to attributes, or returns no tensor) to what it does: such a unit must
    run alone, after everything before it and before everything after it.
    """

    inputs: dict[str, list[str]]
    frozen: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    effects: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs = {name: list(deps) for name, deps in self.inputs.items()}
        self.frozen = list(self.frozen)
        for name, deps in self.inputs.items():
            for dep in deps:
                if dep not in self.inputs:
                    raise ValueError(
                        f"module {name!r} consumes unknown module {dep!r}; known modules: {list(self.inputs)}"
                    )
                if dep == name:
                    raise ValueError(f"module {name!r} consumes itself; a module graph has no self-loops")
            if len(set(deps)) != len(deps):
                raise ValueError(f"module {name!r} lists a producer twice: {deps}")
        for key, names in (
            ("frozen", self.frozen),
            ("calls", self.calls),
            ("parameters", self.parameters),
            ("effects", self.effects),
        ):
            unknown = [n for n in names if n not in self.inputs]
            if unknown:
                raise ValueError(
                    f"`{key}` names unknown modules {unknown}; known modules: {list(self.inputs)}"
                )
        cycle = _find_cycle(self.inputs)
        if cycle:
            raise ValueError(f"module graph has a cycle: {' -> '.join(reversed(cycle))}")

    @classmethod
    def from_edges(cls, edges: Mapping[str, Iterable[str]], frozen: Iterable[str] = ()) -> ModuleGraph:
        """Build a graph from ``{module: [modules it consumes]}``, e.g.
        ``{"vision": [], "audio": [], "llm": ["vision", "audio"]}``."""
        return cls(inputs=dict(edges), frozen=list(frozen))

    @property
    def modules(self) -> list[str]:
        """All units, in execution order."""
        return list(self.inputs)

    @property
    def sources(self) -> list[str]:
        """Units that consume no other unit's output."""
        return [name for name, deps in self.inputs.items() if not deps]

    @property
    def called(self) -> list[str]:
        """Units that ran in the traced step(s), in execution order (all of them when the graph has no
        call counts, e.g. written by hand). The others (used only in validation, or whose submodules
        the model calls directly) cost nothing in a training step."""
        return [name for name in self.inputs if self.calls.get(name, 1) > 0]

    def subgraph(self, names: Iterable[str]) -> ModuleGraph:
        """The units ``names`` and the edges between them."""
        keep = set(names)
        unknown = sorted(keep - set(self.inputs))
        if unknown:
            raise ValueError(f"subgraph names unknown modules {unknown}; known modules: {list(self.inputs)}")
        return ModuleGraph(
            inputs={n: [d for d in deps if d in keep] for n, deps in self.inputs.items() if n in keep},
            frozen=[n for n in self.frozen if n in keep],
            calls={n: c for n, c in self.calls.items() if n in keep},
            parameters={n: c for n, c in self.parameters.items() if n in keep},
            effects={n: e for n, e in self.effects.items() if n in keep},
        )

    def union(self, other: ModuleGraph) -> ModuleGraph:
        """The graph of steps that ran either graph's units (mixed-modality batches): every edge of
        both, a unit's calls the most of either, units ordered so that producers come first."""
        inputs = {n: list(deps) for n, deps in self.inputs.items()}
        for name, deps in other.inputs.items():
            inputs[name] = list(dict.fromkeys([*inputs.get(name, []), *deps]))
        merged = ModuleGraph(inputs=inputs)  # raises if the two steps disagree into a cycle
        order = merged.topological_order()
        calls = {
            n: max(self.calls.get(n, 0), other.calls.get(n, 0))
            for n in order
            if n in self.calls or n in other.calls
        }
        frozen = [n for n in order if n in (other.frozen if n in other.inputs else self.frozen)]
        return ModuleGraph(
            inputs={n: inputs[n] for n in order},
            frozen=frozen,
            calls=calls,
            parameters={**self.parameters, **other.parameters},
            effects={**self.effects, **other.effects},
        )

    @property
    def frozen_sources(self) -> list[str]:
        """Sources without trainable parameters, in execution order: the units a plan may compute one
        step ahead (``Plan.lookahead``), since their output for the next batch does not depend on this
        step's update. Decided by the modules' ``requires_grad`` (``frozen``), never by whether the
        traced step happened to run a backward pass through them (a trainable encoder called under
        ``torch.no_grad`` has none, yet its weights change every step)."""
        return [
            name
            for name in self.inputs
            if not self.inputs[name] and name in self.frozen and name not in self.effects
        ]

    @property
    def sinks(self) -> list[str]:
        """Units whose output no other unit consumes."""
        consumed = {dep for deps in self.inputs.values() for dep in deps}
        return [name for name in self.inputs if name not in consumed]

    @property
    def edges(self) -> list[tuple[str, str]]:
        """``(producer, consumer)`` pairs."""
        return [(dep, name) for name, deps in self.inputs.items() for dep in deps]

    def consumers(self, name: str) -> list[str]:
        """Units that consume ``name``'s output."""
        self._check(name)
        return [other for other, deps in self.inputs.items() if name in deps]

    def ancestors(self, name: str) -> set[str]:
        """Units that ``name`` depends on, directly or through others."""
        self._check(name)
        seen: set[str] = set()
        stack = list(self.inputs[name])
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(self.inputs[dep])
        return seen

    def independent(self, a: str, b: str) -> bool:
        """True when neither unit depends on the other: they may run side by side."""
        return a != b and a not in self.ancestors(b) and b not in self.ancestors(a)

    def levels(self) -> list[list[str]]:
        """Units grouped by the length of the longest path from a source.

        Units on the same level never depend on each other, so each level can run side by side. A unit
        with ``effects`` runs alone: it gets a level of its own, which cuts its depth's level in two
        where it runs (units called before it, then it, then units called after it).
        """
        depth: dict[str, int] = {}
        for name in self.topological_order():
            depth[name] = 1 + max((depth[d] for d in self.inputs[name]), default=-1)
        out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in self.inputs:
            out[depth[name]].append(name)
        split: list[list[str]] = []
        for level in out:
            run: list[str] = []
            for name in level:
                if name in self.effects:
                    split += ([run] if run else []) + [[name]]
                    run = []
                else:
                    run.append(name)
            if run:
                split.append(run)
        return split

    def critical_path(self, weights: Mapping[str, float]) -> list[str]:
        """The chain of dependent units with the largest total weight (``weights``: e.g. each unit's
        time alone), from a source to a sink: what no schedule can shorten by running units side by side."""
        total: dict[str, float] = {}
        before: dict[str, str | None] = {}
        for name in self.topological_order():
            best = max(self.inputs[name], key=lambda d: total[d], default=None)
            total[name] = weights.get(name, 0.0) + (total[best] if best is not None else 0.0)
            before[name] = best
        path: list[str] = []
        node = max(total, key=lambda n: total[n], default=None)
        while node is not None:
            path.append(node)
            node = before[node]
        return path[::-1]

    def topological_order(self) -> list[str]:
        """Units ordered so that every producer comes before its consumers (stable w.r.t. ``modules``)."""
        done: set[str] = set()
        order: list[str] = []
        remaining = list(self.inputs)
        while remaining:
            ready = [n for n in remaining if all(d in done for d in self.inputs[n])]
            if not ready:  # only reachable if ``inputs`` was edited into a cycle after construction
                raise ValueError(f"module graph has a cycle among {remaining}")
            for name in ready:
                done.add(name)
                order.append(name)
            remaining = [n for n in remaining if n not in done]
        return order

    def describe(self) -> str:
        """A readable multi-line summary."""
        n_edges = len(self.edges)
        lines = [f"ModuleGraph: {len(self.inputs)} modules, {n_edges} edge{'s' if n_edges != 1 else ''}"]
        width = max((len(n) for n in self.inputs), default=0)
        feeds = {n: f"<- {', '.join(deps)}" if deps else "" for n, deps in self.inputs.items()}
        feeds_width = max((len(f) for f in feeds.values()), default=0)
        sinks = set(self.sinks)
        for name, deps in self.inputs.items():
            notes = []
            if name in self.parameters:
                notes.append(f"{_human(self.parameters[name])} params")
            if name in self.frozen:
                notes.append("frozen")
            if name in self.effects:
                notes.append(f"runs alone: {self.effects[name]}")
            if name in self.calls:
                notes.append("not called" if self.calls[name] == 0 else f"called {self.calls[name]}x")
            if not deps:
                notes.append("source")
            if name in sinks:
                notes.append("sink")
            tail = f"  [{', '.join(notes)}]" if notes else ""
            lines.append(f"  {name:<{width}}  {feeds[name]:<{feeds_width}}{tail}".rstrip())
        side_by_side = [level for level in self.levels() if len(level) > 1]
        if side_by_side:
            groups = "; ".join(" | ".join(level) for level in side_by_side)
            lines.append(f"  can run side by side: {groups}")
        else:
            lines.append("  can run side by side: nothing (a chain)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "inputs": self.inputs,
            "frozen": self.frozen,
            "calls": self.calls,
            "parameters": self.parameters,
            "effects": self.effects,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "module graph") -> ModuleGraph:
        """A graph from :meth:`to_dict` data, checked: a ``FormatError`` (a ``ValueError``) names
        ``source`` and the field."""
        expect(data, dict, source)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FormatError(
                f"{source}: schema version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        try:
            check_schema(data, SCHEMA, "graph", OPTIONAL)
        except FormatError as err:
            raise FormatError(f"{source}: {err}") from err
        inputs = data["inputs"]
        try:
            return cls(
                inputs=dict(inputs),
                frozen=list(data.get("frozen", [])),
                calls=dict(data.get("calls", {})),
                parameters=dict(data.get("parameters", {})),
                effects=dict(data.get("effects", {})),
            )
        except (TypeError, ValueError) as err:
            raise FormatError(f"{source}: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "module graph") -> ModuleGraph:
        return cls.from_dict(parse_json(text, source), source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModuleGraph:
        """Read a graph file; an unreadable or malformed one is a ``FormatError`` naming it."""
        return cls.from_dict(read_json(path, "module graph file"), f"module graph file {os.fspath(path)}")

    def _check(self, name: str) -> None:
        if name not in self.inputs:
            raise KeyError(f"unknown module {name!r}; known modules: {list(self.inputs)}")


def _find_cycle(inputs: Mapping[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in inputs[name]:
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in inputs:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
