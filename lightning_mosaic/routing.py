"""Find the units that only route between towers, from one traced step, and open them up.

A Hugging Face ``LlavaForConditionalGeneration`` keeps its vision tower, projector and language model
inside one ``LlavaModel`` whose forward only routes: it embeds the text, runs the tower and the
projector, scatters the image features into the text and runs the language model. Taken as one unit,
nothing in it could ever overlap. Its parts can: with micro-batches the tower of one runs beside the
language model of another.

What tells a router from a tower is what its children do in a real step, not their names:

- a *stack* is a ``ModuleList`` or ``Sequential`` of two or more blocks of one class that have parts
  of their own (transformer layers, residual blocks); a module *holds a stack* when one sits in it;
- a child of a module is an *entry* when data from outside the module (the step's batch, or another
  unit's outputs) reaches its inputs through no sibling that holds a stack: a vision tower reads the
  pixels, the language model reads the text embeddings (through the embedding, which holds no stack);
  the second stage of a ResNet reads only the first stage's output;
- a module *routes between towers* when two or more of its children that ran are entries that hold
  a stack. Its children that own parameters become units in its place, and each of them is checked
  the same way. A language model (one stack of layers between an embedding and a norm), a ResNet (a
  chain of stages) or a projector stays one unit.

:class:`RouteProbe` records the entries during the traced step: a dispatch mode tags every tensor
with the probed module that produced it (or ``step``: a tensor that was neither computed in the
step nor a parameter or buffer of the model; the tracer's :class:`~lightning_mosaic.tracing.Taint`);
:func:`open_routers` then decides. The step runs
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_mosaic._hooks import LiveHook
from lightning_mosaic._tree import iter_tensors
from lightning_mosaic.selection import owns_parameters
from lightning_mosaic.tracing import STEP, Taint

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def is_stack(module: nn.Module) -> bool:
    """A ``ModuleList`` / ``Sequential`` of two or more composite blocks of one class."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    kinds: dict[type, int] = {}
    for child in module.children():
        if next(child.children(), None) is not None and owns_parameters(child):
            kinds[type(child)] = kinds.get(type(child), 0) + 1
    return any(n >= 2 for n in kinds.values())


def stacks(module: nn.Module) -> list[str]:
    """The dotted names (relative to ``module``) of the outermost stacks inside it."""
    found: list[str] = []

    def walk(prefix: str, m: nn.Module) -> None:
        if is_stack(m):
            found.append(prefix)
            return
        for name, child in m.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", module)
    return found


def parts(module: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """The children of ``module`` that own parameters, by dotted name; a container child (no forward
    of its own) is replaced by its elements."""
    out: dict[str, nn.Module] = {}
    for name, child in module.named_children():
        if not owns_parameters(child):
            continue
        dotted = f"{prefix}.{name}"
        if isinstance(child, _CONTAINERS) and not is_stack(child):
            out.update(parts(child, dotted))
        else:
            out[dotted] = child
    return out


def may_route(module: nn.Module) -> bool:
    """Whether ``module`` could route between towers: two or more stacks in different children."""
    return len({s.split(".")[0] for s in stacks(module)}) >= 2


@dataclass
class Probed:
    """What the traced step showed of one probed module: whether it ran, and what its inputs carried
    (the names of probed modules whose outputs reached them, and :data:`STEP`)."""

    ran: bool = False
    sources: set[str] = field(default_factory=set)


class RouteProbe:
    """While entered, records for every module that may be opened up (a unit that may route, and
    recursively its children that may) which of its parts ran and what reached their inputs."""

    def __init__(self, root: nn.Module, units: Mapping[str, nn.Module]) -> None:
        self.children: dict[str, dict[str, nn.Module]] = {}  # router candidate -> its parts
        self.probed: dict[str, Probed] = {}
        self._modules: dict[str, nn.Module] = {}
        for name, module in units.items():
            self._collect(name, module)
        known = {id(t) for t in root.parameters()} | {id(t) for t in root.buffers()}
        self.tags = Taint(known)
        self.handles: list[Any] = []

    def _collect(self, name: str, module: nn.Module) -> None:
        if not may_route(module):
            return
        self.children[name] = parts(module, name)
        for child_name, child in self.children[name].items():
            self._modules[child_name] = child
            self.probed[child_name] = Probed()
            self._collect(child_name, child)

    def __bool__(self) -> bool:
        return bool(self.children)

    def __enter__(self) -> RouteProbe:
        for name, module in self._modules.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))
        self.tags.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tags.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen = self.probed[name]
            seen.ran = True
            seen.sources |= self.tags.tags_of((args, kwargs)) - {name}

        return LiveHook(hook)

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            tag = frozenset((name,))
            for tensor in iter_tensors(output):
                self.tags.tags[tensor] = tag

        return LiveHook(hook)


@dataclass
class Opened:
    """The units after :func:`open_routers`: the names in order, and why each one is a unit."""

    units: dict[str, nn.Module]
    reasons: dict[str, str]
    opened: list[str]  # the units that were routers, replaced by their parts


def open_routers(units: Mapping[str, nn.Module], probe: RouteProbe, reasons: Mapping[str, str]) -> Opened:
    """``units`` with each router replaced by its parts, recursively (see the module docstring)."""
    out: dict[str, nn.Module] = {}
    why: dict[str, str] = {}
    opened: list[str] = []

    def visit(name: str, module: nn.Module, reason: str) -> None:
        towers = _entry_towers(name, probe)
        if len(towers) < 2:
            out[name], why[name] = module, reason
            return
        opened.append(name)
        shown = ", ".join(repr(t) for t in towers)
        for child_name, child in probe.children[name].items():
            visit(child_name, child, f"a part of {name!r}, which routes between the towers {shown}")

    for name, module in units.items():
        visit(name, module, reasons.get(name, "a unit"))
    return Opened(out, why, opened)


def stack_note(name: str, module: nn.Module) -> str:
    """What a unit holds, for the log: its stack of blocks, if it has one."""
    found = stacks(module)
    if not found:
        return ""
    if len(found) == 1:
        return f"; one stack of blocks ({'.'.join(filter(None, (name, found[0])))})"
    return f"; its {len(found)} stacks of blocks form one tower"


def _entry_towers(name: str, probe: RouteProbe) -> list[str]:
    """The parts of router candidate ``name`` that ran, hold a stack and are entries."""
    children = probe.children.get(name)
    if not children:
        return []
    heavy = {c for c, m in children.items() if stacks(m)}  # a stack itself counts: stacks(m) == [""]

    def sibling(tag: str) -> str | None:  # the part of ``name`` that holds the probed module ``tag``
        for c in children:
            if tag == c or tag.startswith(f"{c}."):
                return c
        return None

    def entry(child: str) -> bool:
        frontier, seen = [child], {child}
        while frontier:
            current = frontier.pop()
            for tag in probe.probed[current].sources if current in probe.probed else ():
                owner = sibling(tag) if tag != STEP else None
                if owner is None:
                    return True  # from outside ``name``: the step's data or another unit's output
                if owner in heavy and owner != child:
                    continue  # through another tower: not an entry by this path
                node = tag if tag in probe.probed else owner
                if node not in seen:
                    seen.add(node)
                    frontier.append(node)
        return False

    return [c for c in children if c in heavy and probe.probed[c].ran and entry(c)]
