"""Micro-batches inside one step: split a batch along its first dimension, combine what the steps return.

A plan may run a training step as ``k`` micro-batches, so that the encoders of micro-batch ``i + 1``
overlap the backbone of micro-batch ``i``. The loss of the full batch is the mean over its samples;
the combined loss ``sum(n_i / n * loss_i)`` has the same value and the same gradients (up to float
rounding) when each ``loss_i`` is the mean over its ``n_i`` samples. Losses averaged over something
else (tokens with uneven padding, for instance) are weighted by samples all the same.

:func:`split_batch` knows tensors, mappings (``dict``, ``BatchEncoding``, ``ModelOutput``), lists,
tuples, named tuples and dataclasses. A tensor is split when its first dimension is the batch size,
and kept whole when it is a scalar. A list as long as the batch holds one item per sample (captions,
per-sample lists of boxes or tokens, tensors of varying length, dicts), unless every item is a
tensor whose first dimension is the batch size (a list of batched tensors, split one by one): it is
split per sample, its items untouched. Strings, numbers and ``None`` are kept whole. A tensor packed
along its first dimension, its rows counted by a lengths tensor of the batch (Qwen-VL's
``pixel_values``, one row per patch, beside ``image_grid_thw``; see ``packing.py``), is cut by those
counts. Anything else is a :class:`BatchSplitError` naming the type, where it sits in the batch and
the hook to implement.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_mosaic._tree import iter_tensors, keystr, map_leaves
from lightning_mosaic.packing import Packing, find_packing

HOOK = "mosaic_split_batch"
_PLAIN = (str, bytes, int, float, bool, type(None))


class BatchSplitError(TypeError):
    """A batch (or a part of it) that cannot be split into micro-batches."""


def batch_size(batch: Any) -> int:
    """The first dimension of the first non-scalar tensor in ``batch``; an error when there is none."""
    found = next((t for t in iter_tensors(batch) if t.dim() > 0), None)
    if found is None:
        raise BatchSplitError(
            f"a batch of type {type(batch).__name__} holds no tensor with a batch dimension, so its size is"
            f" unknown; define `{HOOK}(self, batch, k)` on your LightningModule to split it"
        )
    return int(found.shape[0])


def sizes(total: int, k: int) -> list[int]:
    """``total`` samples in ``min(k, total)`` micro-batches; the first ones take the remainder."""
    k = max(1, min(k, total))
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def split_batch(batch: Any, k: int) -> list[Any]:
    """``batch`` as ``min(k, size)`` micro-batches along the first dimension (see the module docstring)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} must be a whole number of micro-batches, 1 or more")
    total = batch_size(batch)
    tensors = list(iter_tensors(batch))
    packed = {}
    if any(t.dim() > 0 and t.shape[0] != total for t in tensors):  # packed along the first dimension?
        found = find_packing(tensors, total, dims=[0])
        packed = {id(t): p for t, p in zip(tensors, found, strict=True) if p is not None}
    out, start = [], 0
    for n in sizes(total, k):
        out.append(_take(batch, start, start + n, total, packed))
        start += n
    return out


def check_split(parts: Any, k: int) -> list[Any]:
    """What a user's ``mosaic_split_batch`` returned, checked: a list of 1 to ``k`` micro-batches."""
    if not isinstance(parts, Sequence) or isinstance(parts, (str, bytes)) or not 1 <= len(parts) <= k:
        got = f"{len(parts)} items" if isinstance(parts, Sequence) else type(parts).__name__
        raise BatchSplitError(f"`{HOOK}(batch, {k})` must return a list of 1 to {k} micro-batches, got {got}")
    return list(parts)


def combine_outputs(outputs: Sequence[Any], counts: Sequence[int]) -> Any:
    """One step output from the micro-batches' ``training_step`` outputs (see :func:`combine`).

    All ``None`` gives ``None`` (Lightning skips the step); a mix of ``None`` and losses is an error,
    since the unsplit step would either have skipped or not.
    """
    if all(out is None for out in outputs):
        return None
    if any(out is None for out in outputs):
        skipped = [i for i, out in enumerate(outputs) if out is None]
        raise ValueError(
            f"training_step returned None for micro-batches {skipped} of {len(outputs)} but a loss for the"
            " others; a step is either skipped for the whole batch or not, so return None for all or none"
        )
    return combine(list(outputs), counts)


def combine(values: list[Any], counts: Sequence[int]) -> Any:
    """The full-batch value from the values of micro-batches of ``counts`` samples each.

    Scalars (0-dim tensors, numbers) are averaged with weights ``n_i / n``; tensors with a row per
    sample are concatenated; mappings are combined key by key; anything else (strings, objects such
    as metrics, tensors of other shapes) takes the last micro-batch's value.
    """
    first, total = values[0], sum(counts)
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return sum(value * (n / total) for value, n in zip(values, counts, strict=True))
        rows = all(
            isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n
            for v, n in zip(values, counts, strict=True)
        )
        return torch.cat(values) if rows else values[-1]
    if isinstance(first, (float, int)) and not isinstance(first, bool):
        return float(sum(float(value) * n / total for value, n in zip(values, counts, strict=True)))
    if isinstance(first, Mapping):
        merged = copy.copy(first)
        for key in first:
            merged[key] = combine([value[key] for value in values], counts)
        return merged
    return values[-1]


# ---------------------------------------------------------------------- internals


def _take(batch: Any, start: int, stop: int, total: int, packed: dict[int, Packing]) -> Any:
    """Rows ``start:stop`` of every per-sample part of ``batch`` (``packed``: tensors by id, cut by
    their counts)."""

    def per_sample_values(obj: Any) -> bool:  # one item per sample (captions, box lists, ragged tensors)
        if not isinstance(obj, list) or len(obj) != total:
            return False
        batched = all(isinstance(i, torch.Tensor) and i.dim() > 0 and i.shape[0] == total for i in obj)
        return not batched

    def take(path: Any, leaf: Any) -> Any:
        where = f"batch{keystr(path)}"
        if isinstance(leaf, torch.Tensor):
            if leaf.dim() == 0:
                return leaf
            if id(leaf) in packed:
                return packed[id(leaf)].take(leaf, start, stop)
            if leaf.shape[0] != total:
                raise BatchSplitError(
                    f"{where} has shape {tuple(leaf.shape)}, whose first dimension is not the batch size"
                    f" {total}, so it cannot be split into micro-batches; define `{HOOK}(self, batch, k)`"
                    " on your LightningModule to split this batch"
                )
            return leaf[start:stop]
        if per_sample_values(leaf):
            return leaf[start:stop]
        if isinstance(leaf, _PLAIN):
            return leaf
        raise BatchSplitError(
            f"cannot split {where} of type {type(leaf).__module__}.{type(leaf).__qualname__} into"
            f" micro-batches; define `{HOOK}(self, batch, k)` on your LightningModule returning a list of k"
            " micro-batches, or train with micro_batches=1"
        )

    return map_leaves(take, batch, is_leaf=per_sample_values)
