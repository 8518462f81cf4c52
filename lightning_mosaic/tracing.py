"""Trace the module graph from one real step: which unit's outputs reach which unit's inputs.

Every tensor a unit returns is tagged with the unit's name; a ``TorchDispatchMode`` passes the tags
of every ATen operation's inputs on to its outputs, so the tags follow the tensors through whatever
user code sits between units (``torch.cat``, slicing, arithmetic). When a unit is called, the tags
on its inputs are its producers. The step runs unchanged: same operations, same numbers.

Data flow that bypasses the returned tensors is detected too, per call: an input tensor whose
version counter moved (changed in place), a tensor attribute of the unit or of one of its
submodules that was set or changed in place and that another unit or the code between units reads
later in the step, or a call that returns no tensor. Such a unit is listed in ``ModuleGraph.effects``
and runs alone. An attribute nothing else reads during the step (a cache such as Qwen-VL's
``rope_deltas``, read only when generating) is harmless: :attr:`Tracer.harmless` lists it, and the
unit runs side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from lightning_mosaic._compile import eager_while_watched
from lightning_mosaic._hooks import LiveHook
from lightning_mosaic._logging import get_logger
from lightning_mosaic._tree import iter_tensors
from lightning_mosaic.graph import ModuleGraph

if TYPE_CHECKING:
    from lightning_mosaic.routing import RouteProbe

log = get_logger(__name__)
T = TypeVar("T")


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


STEP = "<step>"  # the tag of data from outside the step: the batch, state kept from earlier steps


class Taint(TorchDispatchMode):
    """Propagates producer tags through every ATen operation.

    A dispatch mode sits below autograd and autocast and leaves ``has_torch_function`` false, so
    the traced step takes exactly the kernels (fast paths included) that an untraced step takes.
    With ``known`` (ids of the model's parameters and buffers), a tensor an operation takes that was
    neither made in the step nor known is tagged :data:`STEP`: data from outside the step.
    """

    def __init__(self, known: set[int] | None = None) -> None:
        super().__init__()
        self.known = known
        self.tags: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.on_inputs: Callable[[Any], None] | None = None  # sees every operation's inputs when set

    def tags_of(self, obj: Any) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for tensor in iter_tensors(obj):
            tag = self.tags.get(tensor)
            if tag is None and self.known is not None:
                tag = frozenset() if id(tensor) in self.known else frozenset((STEP,))
                self.tags[tensor] = tag
            if tag:
                found = found | tag
        return found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.on_inputs is not None:
            self.on_inputs((args, kwargs))
        every = self.known is not None  # every output is marked as made in the step
        found = self.tags_of(args) | self.tags_of(kwargs) if self.tags or every else frozenset()
        out = func(*args, **kwargs)
        if found or every:
            for tensor in iter_tensors(out):
                self.tags[tensor] = self.tags.get(tensor, frozenset()) | found
        return out


class Tracer:
    """The tracing of :func:`trace` as a context manager: enter before a step, exit after it, then
    :meth:`graph`. For callers that cannot wrap the step in one call (a callback's start and end hooks)."""

    def __init__(
        self, modules: Mapping[str, nn.Module], record_calls: bool = False, probe: RouteProbe | None = None
    ) -> None:
        self.modules = dict(modules)
        self.probe = probe  # which units route between towers (entered with the tracer)
        self._eager: Any = None
        self.taint = Taint()
        self.inputs: dict[str, list[str]] = {name: [] for name in self.modules}
        self.first_call: dict[str, int] = {}
        self.calls: dict[str, int] = dict.fromkeys(self.modules, 0)
        self.handles: list[Any] = []
        self.record_calls = record_calls
        self.ran: set[int] = set()  # ids of every module whose forward ran (with ``record_calls``)
        self.effects: dict[str, str] = {}
        self.harmless: dict[str, list[str]] = {}  # unit -> attributes it keeps that nothing else read
        self._kept: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> (unit, attribute)
        self._kept_by: dict[str, list[str]] = {}  # unit -> attributes it keeps
        self._readers: dict[tuple[str, str], str] = {}  # (unit, attribute) -> who read it first
        self._active: list[str] = []  # the units whose forward is running
        self._silent: set[str] = set()  # units that kept attributes and returned no tensor
        self._before: dict[
            str, list[tuple[list[tuple[torch.Tensor, int]], dict[Any, list[tuple[int, int]]]]]
        ] = {}

    def __enter__(self) -> Tracer:
        if self.record_calls:  # every module of the process, while tracing: which forwards run
            self.handles.append(
                register_module_forward_pre_hook(lambda module, args: self.ran.add(id(module)))
            )
        for name, module in self.modules.items():
            # The pre-hook runs after hooks registered before it (the engine's, which replaces
            # pending inputs with the real tensors the unit computes on); the forward hook runs
            # first (it tags the real outputs, before the engine hands them out as pending shells,
            # whose every use runs on those real outputs).
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self.handles.append(
                module.register_forward_hook(self._post_hook(name), with_kwargs=True, prepend=True)
            )
        self._eager = eager_while_watched()  # compiled code stays compiled after this step
        self._eager.__enter__()
        self.taint.__enter__()
        if self.probe is not None:
            self.probe.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.probe is not None:
            self.probe.__exit__(*exc)
        self.taint.__exit__(*exc)
        if self._eager is not None:
            self._eager.__exit__(None, None, None)
            self._eager = None
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _read(self, inputs: Any, reader: str | None = None) -> None:
        """``inputs`` are used (by ``reader``, else by whatever runs now): note the kept attributes
        read by anyone but the unit that keeps them."""
        if not self._kept:
            return
        reader = reader or (self._active[-1] if self._active else None)
        for tensor in iter_tensors(inputs):
            owner = self._kept.get(tensor)
            if owner is not None and owner[0] != reader and owner not in self._readers:
                self._readers[owner] = f"unit {reader}" if reader else "the code between units"

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._read((args, kwargs), name)
            self._active.append(name)
            self.calls[name] += 1
            self.first_call.setdefault(name, len(self.first_call))
            producers = self.taint.tags_of(args) | self.taint.tags_of(kwargs)
            for producer in sorted(producers, key=lambda n: self.first_call.get(n, len(self.first_call))):
                if producer != name and producer not in self.inputs[name]:
                    self.inputs[name].append(producer)
            versions = [(t, t._version) for t in iter_tensors((args, kwargs)) if not t.is_inference()]
            self._before.setdefault(name, []).append((versions, _state(module)))

        return LiveHook(hook)

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            tag = frozenset((name,))
            returned = False
            for tensor in iter_tensors(output):
                self.taint.tags[tensor] = tag
                returned = True
            if self._active and self._active[-1] == name:
                self._active.pop()
            stack = self._before.get(name)
            if not stack:
                return
            versions, state = stack.pop()
            if name in self.effects:
                return
            changed = [t for t, v in versions if t._version != v]
            after = _state(module)
            keys = {key for key in set(state) | set(after) if state.get(key) != after.get(key)}
            if changed:
                shapes = ", ".join(str(tuple(t.shape)) for t in changed[:3])
                self.effects[name] = f"changes its input of shape {shapes} in place"
            elif keys:
                self._keep(name, module, keys, returned)
            elif not returned:
                self.effects[name] = "returns no tensor"

        return LiveHook(hook)

    def _keep(self, name: str, module: nn.Module, keys: set[tuple[int, str]], returned: bool) -> None:
        """``name`` set or changed the attributes ``keys``: watch who reads their tensors."""
        if not returned:
            self._silent.add(name)
        subs = {id(sub): sub for sub in module.modules()}
        for sub_id, attr in keys:
            if attr not in self._kept_by.setdefault(name, []):
                self._kept_by[name].append(attr)
            sub = subs.get(sub_id)
            value = vars(sub).get(attr) if sub is not None else None
            for tensor in iter_tensors(value) if _may_hold(value) else ():
                self._kept[tensor] = (name, attr)
        self.taint.on_inputs = self._read

    def _kept_effects(self) -> None:
        """Kept attributes another unit or the code between units read are effects; the rest harmless."""
        for name, attrs in self._kept_by.items():
            if name in self.effects:
                continue
            read = [(a, self._readers[(name, a)]) for a in sorted(attrs) if (name, a) in self._readers]
            if read:
                shown = ", ".join(f"{a} (read by {who})" for a, who in read[:3])
                self.effects[name] = f"keeps tensors in its attribute {shown}"
            elif name in self._silent:
                self.effects[name] = "returns no tensor"
            else:
                self.harmless[name] = sorted(attrs)

    def graph(self) -> ModuleGraph:
        self._kept_effects()
        order = list(self.first_call) + [n for n in self.modules if n not in self.first_call]
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
            inputs=inputs,
            frozen=frozen,
            calls={n: self.calls[n] for n in order},
            parameters=parameters,
            effects={n: self.effects[n] for n in order if n in self.effects},
        )


_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules"})


def _state(module: nn.Module) -> dict[Any, list[tuple[int, int]]]:
    """``(submodule id, attribute) -> [(tensor id, version), ...]`` of every attribute holding tensors
    (parameters, buffers and submodules excepted) of ``module`` and its submodules."""
    out: dict[Any, list[tuple[int, int]]] = {}
    for sub in module.modules():
        for key, value in vars(sub).items():
            if key in _MODULE_STATE or key.startswith("_forward") or key.startswith("_backward"):
                continue
            tensors = [(id(t), _version(t)) for t in iter_tensors(value)] if _may_hold(value) else []
            if tensors:
                out[(id(sub), key)] = tensors
    return out


def _version(tensor: torch.Tensor) -> int:
    return -1 if tensor.is_inference() else tensor._version  # inference tensors count no versions


def _may_hold(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, dict, list, tuple))
