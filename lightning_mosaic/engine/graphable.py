"""Can a unit's call be captured as a CUDA graph? What a graph needs to stay true when replayed.

A CUDA graph replays the kernels it recorded, on the memory it recorded them on; the host takes no
part. So a unit can be captured only when nothing in its forward or backward needs the host in
the middle of the work, and a captured graph only serves a call that looks like the one captured:

- :class:`Scan` watches every operation of one eager forward and backward (a
  ``TorchDispatchMode``, so it works on a CPU too) and names what breaks a graph: reading a value
  on the host (``.item()``, a Python branch on a tensor, ``aten._local_scalar_dense``), operations
  whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``), moving
  tensors between devices, and random numbers drawn from a ``torch.Generator`` of the unit's own.
  Random numbers from the default generator are fine: PyTorch's graph-safe RNG gives each replay
  fresh numbers, as the eager calls would get.
- :func:`hooked_parts` names submodules with hooks: a graph replays none of them.
- :func:`signature` is what must match between the captured call and a replayed one: the shapes,
  dtypes, devices and ``requires_grad`` of the input tensors, every other argument (compared by
  value), grad mode, train/eval mode and autocast. (Which parameters are trainable, and where
  parameters and buffers live, a graph checks itself: ``GraphedCall.valid``.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_mosaic._tree import iter_tensors, leaves_with_paths, map_tensors

_aten = torch.ops.aten
_HOST_READS = {_aten._local_scalar_dense.default}
_COPIES = {_aten._to_copy.default, _aten.copy_.default, _aten.copy.default}


class Scan(TorchDispatchMode):
    """Collect, for one eager run of a unit, every reason it cannot be captured (``reasons``),
    whether it draws random numbers (``rng``) and the state of each generator of its own before
    its first use (``generators``, to put back)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, None] = {}  # in the order seen, each once
        self.rng = False
        self.generators: dict[int, tuple[torch.Generator, torch.Tensor]] = {}  # state before first use

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and id(generator) not in self.generators:
            self.generators[id(generator)] = (generator, generator.get_state())
        for reason in _reasons(func, args, kwargs):
            self.reasons[reason] = None
        if torch.Tag.nondeterministic_seeded in func.tags:
            self.rng = True
        return func(*args, **kwargs)


def _reasons(func: Any, args: tuple, kwargs: dict) -> Iterable[str]:
    name = func.name()
    if func in _HOST_READS:
        yield (
            f"reads a tensor's value on the host ({name}: .item(), float(t), or a Python if/while on a"
            " tensor), which a replay cannot do"
        )
    elif torch.Tag.data_dependent_output in func.tags:
        yield f"calls {name}, whose result the host must read"
    elif torch.Tag.dynamic_output_shape in func.tags:
        yield f"calls {name}, whose output shape depends on the data"
    if kwargs.get("generator") is not None:
        yield (
            f"draws random numbers from a torch.Generator of its own ({name}); only the default one is"
            " graph-safe"
        )
    if func in _COPIES:
        devices = {t.device for t in iter_tensors((args, kwargs)) if t.dim() > 0}
        target = kwargs.get("device")
        if target is not None:
            devices.add(torch.device(target))
        if len(devices) > 1:
            listed = " and ".join(sorted(str(d) for d in devices))
            yield f"copies tensors between {listed} ({name}), which a replay would not repeat"


def put_back(scan: Scan) -> None:
    """Give every generator the scan saw its state from before the scanned run."""
    for generator, state in scan.generators.values():
        generator.set_state(state)


def sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds DTensor parameters (FSDP2): gathered into new memory at every call,
    which a graph, bound to the memory it captured, cannot follow."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed
        return False
    return any(isinstance(p, DTensor) for p in module.parameters())


def hooked_parts(module: nn.Module) -> list[str]:
    """Submodules of ``module`` (not itself) with forward or backward hooks: a replay runs none."""
    found = []
    for name, part in module.named_modules():
        if not name:
            continue
        hooks = (
            part._forward_hooks,
            part._forward_pre_hooks,
            part._backward_hooks,
            part._backward_pre_hooks,
        )
        if any(hooks):
            found.append(name)
    return found


class _Hole:
    """Where a tensor sits in the arguments, for comparing everything else by value."""

    def __repr__(self) -> str:
        return "<tensor>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Hole)

    def __hash__(self) -> int:
        return 0


_HOLE = _Hole()


def autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for ``device_type`` now, and its dtype."""
    if torch.is_autocast_enabled(device_type):
        return True, torch.get_autocast_dtype(device_type)
    return False, None


def signature(module: nn.Module, args: tuple, kwargs: dict, device_type: str) -> tuple | None:
    """What a replayed call must share with the captured one (hashable); None when the arguments
    other than tensors cannot be compared by value (objects without a value equality).

    Called at every graphed call, so plain tensor arguments (the common case) take a short path.
    """
    if not kwargs and all(type(a) is torch.Tensor for a in args):
        metas = tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args)
        rest: Any = len(args)
    else:
        metas = tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in iter_tensors((args, kwargs)))
        skeleton = map_tensors(lambda _: _HOLE, (args, kwargs))
        if _has_identity_only(skeleton):
            return None
        rest = _frozen(skeleton)
        try:
            hash(rest)
        except TypeError:
            return None
    return (metas, rest, torch.is_grad_enabled(), module.training, autocast_state(device_type))


def _frozen(obj: Any) -> Any:
    """A hashable stand-in of nested tuples, lists and dicts (other leaves as they are)."""
    if isinstance(obj, dict):
        return ("dict", tuple((k, _frozen(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_frozen(v) for v in obj))
    return obj


_VALUES = (bool, int, float, complex, str, bytes, torch.dtype, torch.device, _Hole)


def _has_identity_only(obj: Any) -> bool:
    """True when a leaf compares by identity alone (a plain object): equal-looking calls never match."""
    if isinstance(obj, dict):
        return any(_has_identity_only(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_identity_only(v) for v in obj)
    if obj is None or isinstance(obj, _VALUES):
        return False
    return type(obj).__eq__ is object.__eq__


def opaque_leaf(obj: Any) -> str | None:
    """The type name of the first leaf of ``obj`` (tensors aside) compared by identity alone (a
    cache object in a model's output), which a replay would hand out as it was captured; else None."""
    for _, leaf in leaves_with_paths(obj):
        if not isinstance(leaf, torch.Tensor) and _has_identity_only(leaf):
            return type(leaf).__name__
    return None


def describe_inputs(args: tuple, kwargs: dict) -> str:
    """The input tensors' shapes, for a log line."""
    shapes = [f"{tuple(t.shape)}" for t in iter_tensors((args, kwargs))]
    return ", ".join(shapes) or "no tensors"


def first(items: Iterable[str], most: int = 3) -> str:
    """``most`` items joined with '; ', with a count of the rest."""
    items = list(items)
    text = "; ".join(items[:most])
    return text + (f" (and {len(items) - most} more)" if len(items) > most else "")
