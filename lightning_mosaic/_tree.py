"""Walk the leaves (tensors above all) nested in call arguments, outputs and batches.

Module inputs and outputs are rarely a bare tensor: tuples, lists, dicts, named tuples, dataclasses
and Hugging Face ``ModelOutput`` / ``BatchEncoding`` objects all occur. Every container type that
``torch.utils._pytree`` knows (tuples, lists, dicts, named tuples, ``OrderedDict``, ``deque``,
``ModelOutput`` once transformers registered it, ...) is taken apart and rebuilt by pytree itself;
two kinds it does not know are added here, without registering anything globally: any other
``Mapping`` (copied with its type, so a ``BatchEncoding`` stays one) and dataclass instances.
Paths are pytree key paths (``MappingKey``, ``SequenceKey``, ``GetAttrKey``): :func:`keystr`
prints one (``['pixels'][0]``), :func:`key_get` follows one.

This is the one walker of the package: the engine, the tracer, the profiler, micro-batch splitting
and lookahead all use it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils._pytree import (
    GetAttrKey,
    KeyEntry,
    KeyPath,
    MappingKey,
    key_get,
    keystr,
    tree_flatten_with_path,
    tree_is_leaf,
    tree_unflatten,
)

__all__ = ["iter_tensors", "key_get", "keystr", "leaves_with_paths", "map_leaves", "map_tensors"]

Rebuild = Callable[[list[Any]], Any]


def _children(obj: Any) -> tuple[list[tuple[KeyEntry, Any]], Rebuild] | None:
    """The keyed children of a container and how to rebuild it from new children; None for a leaf."""
    if isinstance(obj, torch.Tensor):
        return None
    if not tree_is_leaf(obj):
        pairs, spec = tree_flatten_with_path(obj, is_leaf=lambda child: child is not obj)
        return [(path[0], child) for path, child in pairs], lambda values: tree_unflatten(values, spec)
    if isinstance(obj, Mapping):
        keys = list(obj)

        def rebuild_mapping(values: list[Any]) -> Any:
            new = copy.copy(obj)  # keeps the mapping's type and attributes
            for key, value in zip(keys, values, strict=True):
                new[key] = value
            return new

        return [(MappingKey(key), obj[key]) for key in keys], rebuild_mapping
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]

        def rebuild_dataclass(values: list[Any]) -> Any:
            new = copy.copy(obj)
            for name, value in zip(names, values, strict=True):
                object.__setattr__(new, name, value)
            return new

        return [(GetAttrKey(name), getattr(obj, name)) for name in names], rebuild_dataclass
    return None


def leaves_with_paths(
    obj: Any, is_leaf: Callable[[Any], bool] | None = None, path: KeyPath = ()
) -> Iterator[tuple[KeyPath, Any]]:
    """Every leaf nested in ``obj`` with its key path, depth first; ``is_leaf`` stops the descent."""
    node = None if is_leaf is not None and is_leaf(obj) else _children(obj)
    if node is None:
        yield path, obj
        return
    for key, child in node[0]:
        yield from leaves_with_paths(child, is_leaf, (*path, key))


def map_leaves(
    fn: Callable[[KeyPath, Any], Any],
    obj: Any,
    is_leaf: Callable[[Any], bool] | None = None,
    path: KeyPath = (),
) -> Any:
    """``obj`` with every leaf replaced by ``fn(path, leaf)``, keeping container types.

    A container none of whose leaves changed is returned as it is (the same object).
    """
    node = None if is_leaf is not None and is_leaf(obj) else _children(obj)
    if node is None:
        return fn(path, obj)
    children, rebuild = node
    values = [map_leaves(fn, child, is_leaf, (*path, key)) for key, child in children]
    if all(new is old for new, (_, old) in zip(values, children, strict=True)):
        return obj
    return rebuild(values)


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Yield every tensor nested in ``obj``."""
    for _, leaf in leaves_with_paths(obj):
        if isinstance(leaf, torch.Tensor):
            yield leaf


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with every nested tensor replaced by ``fn(tensor)``, keeping container types."""
    return map_leaves(lambda _, leaf: fn(leaf) if isinstance(leaf, torch.Tensor) else leaf, obj)
