"""Walk the tensors inside nested call arguments and outputs.

Module inputs and outputs are rarely a bare tensor: tuples, lists, dicts, dataclasses and
Hugging Face ``ModelOutput`` objects (an ``OrderedDict`` subclass) all occur. The graph tracer and
the engine both need every tensor inside such a structure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
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
