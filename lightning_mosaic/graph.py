"""The module graph: which units a model has and which unit's outputs feed which unit.

A ``ModuleGraph`` is plain data (JSON round-trip, ``describe()``). It is either written by hand
with :meth:`ModuleGraph.from_edges` or traced from one real step with :func:`trace`, which follows
every tensor a unit returns through whatever user code sits in between (``torch.cat``, slicing,
arithmetic) until it reaches another unit's inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from lightning_mosaic._logging import get_logger
from lightning_mosaic._tree import iter_tensors

log = get_logger(__name__)
T = TypeVar("T")
SCHEMA_VERSION = 1


@dataclass
class ModuleGraph:
    """A DAG of units.

    ``inputs`` maps every unit, in execution order, to the units whose outputs it consumes.
    ``frozen`` lists units without trainable parameters. ``calls`` and ``parameters`` hold, for a
    traced graph, how often each unit ran in the traced step and how many parameters it owns.
    """

    inputs: dict[str, list[str]]
    frozen: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)

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
        for key, names in (("frozen", self.frozen), ("calls", self.calls), ("parameters", self.parameters)):
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

        Units on the same level never depend on each other, so each level can run side by side.
        """
        depth: dict[str, int] = {}
        for name in self.topological_order():
            depth[name] = 1 + max((depth[d] for d in self.inputs[name]), default=-1)
        out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in self.inputs:
            out[depth[name]].append(name)
        return out

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModuleGraph:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"module graph schema version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        return cls(
            inputs=dict(data["inputs"]),
            frozen=list(data.get("frozen", [])),
            calls=dict(data.get("calls", {})),
            parameters=dict(data.get("parameters", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModuleGraph:
        return cls.from_dict(json.loads(text))

    def _check(self, name: str) -> None:
        if name not in self.inputs:
            raise KeyError(f"unknown module {name!r}; known modules: {list(self.inputs)}")


def trace(modules: Mapping[str, nn.Module], step: Callable[[], T]) -> tuple[ModuleGraph, T]:
    """Run ``step()`` once and record which unit's outputs reach which unit's inputs.

    Every tensor a unit returns is tagged with the unit's name; every ATen operation passes the
    union of its inputs' tags on to its outputs, so the tags survive user code between units. When
    a unit is called, the tags on its inputs are its producers. The step runs unchanged (same ops,
    same numbers); its result is returned with the graph.
    """
    tracer = Tracer(modules)
    with tracer:
        result = step()
    return tracer.graph(), result


class _Taint(TorchDispatchMode):
    """Propagates producer tags through every ATen operation.

    A dispatch mode sits below autograd and autocast and leaves ``has_torch_function`` false, so
    the traced step takes exactly the kernels (fast paths included) that an untraced step takes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def tags_of(self, obj: Any) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for tensor in iter_tensors(obj):
            tag = self.tags.get(tensor)
            if tag:
                found = found | tag
        return found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        found = self.tags_of(args) | self.tags_of(kwargs) if self.tags else frozenset()
        if found:
            for tensor in iter_tensors(out):
                self.tags[tensor] = self.tags.get(tensor, frozenset()) | found
        return out


class Tracer:
    """The tracing of :func:`trace` as a context manager: enter before a step, exit after it, then
    :meth:`graph`. For callers that cannot wrap the step in one call (a callback's start and end hooks)."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.taint = _Taint()
        self.inputs: dict[str, list[str]] = {name: [] for name in self.modules}
        self.first_call: dict[str, int] = {}
        self.calls: dict[str, int] = dict.fromkeys(self.modules, 0)
        self.handles: list[Any] = []

    def __enter__(self) -> Tracer:
        for name, module in self.modules.items():
            # The pre-hook runs after hooks registered before it (the engine's, which replaces
            # pending inputs with the real tensors the unit computes on); the forward hook runs
            # first (it tags the real outputs, before the engine hands them out as pending shells,
            # whose every use runs on those real outputs).
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self.handles.append(
                module.register_forward_hook(self._post_hook(name), with_kwargs=True, prepend=True)
            )
        self.taint.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.taint.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.calls[name] += 1
            self.first_call.setdefault(name, len(self.first_call))
            producers = self.taint.tags_of(args) | self.taint.tags_of(kwargs)
            for producer in sorted(producers, key=lambda n: self.first_call.get(n, len(self.first_call))):
                if producer != name and producer not in self.inputs[name]:
                    self.inputs[name].append(producer)

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            tag = frozenset((name,))
            for tensor in iter_tensors(output):
                self.taint.tags[tensor] = tag

        return hook

    def graph(self) -> ModuleGraph:
        order = list(self.first_call) + [n for n in self.modules if n not in self.first_call]
        not_called = [n for n in self.modules if self.calls[n] == 0]
        if not_called:
            log.warning(
                f"modules {not_called} were selected but not called in the traced step; they run as plain"
                " code and have no producers or consumers in the module graph"
            )
        inputs: dict[str, list[str]] = {}
        for name in order:
            deps = []
            for dep in self.inputs[name]:
                if dep in inputs:
                    deps.append(dep)
                else:
                    # ``dep`` first ran after ``name``: ``name`` ran again on ``dep``'s output.
                    log.warning(
                        f"module {name!r} consumes {dep!r} although it first ran before it (it is called"
                        f" several times per step); the edge {dep!r} -> {name!r} is left out of the module"
                        " graph to keep it acyclic"
                    )
            inputs[name] = deps
        frozen = [n for n in order if not any(p.requires_grad for p in self.modules[n].parameters())]
        parameters = {n: sum(p.numel() for p in self.modules[n].parameters()) for n in order}
        return ModuleGraph(
            inputs=inputs, frozen=frozen, calls={n: self.calls[n] for n in order}, parameters=parameters
        )


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
