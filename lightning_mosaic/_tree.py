"""Walk the tensors inside nested call arguments and outputs.

Module inputs and outputs are rarely a bare tensor: tuples, lists, dicts, dataclasses and
Hugging Face ``ModelOutput`` objects (an ``OrderedDict`` subclass) all occur. The graph tracer and
the engine both need every tensor inside such a structure.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Yield every tensor nested in ``obj`` (tensors, lists, tuples, mappings, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from iter_tensors(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, field.name))


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Return ``obj`` with every nested tensor replaced by ``fn(tensor)``, keeping container types.

    Tuples (named tuples too), lists, mappings (``dict``, ``OrderedDict``, Hugging Face
    ``ModelOutput``) and dataclasses are rebuilt; a container without tensors is returned as is.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [map_tensors(fn, item) for item in obj]
    if isinstance(obj, tuple):
        items = [map_tensors(fn, item) for item in obj]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        if hasattr(obj, "_fields"):  # named tuple
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, Mapping):
        changed = {key: map_tensors(fn, value) for key, value in obj.items()}
        if all(changed[key] is value for key, value in obj.items()):
            return obj
        new = copy.copy(obj)  # keeps the mapping's type (and a ModelOutput's attributes)
        for key, value in changed.items():
            new[key] = value
        return new
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        new = copy.copy(obj)
        for field in dataclasses.fields(obj):
            object.__setattr__(new, field.name, map_tensors(fn, getattr(obj, field.name)))
        return new
    return obj
