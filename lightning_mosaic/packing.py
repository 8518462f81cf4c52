"""Packed tensors: the rows of several items concatenated along one dimension, counted by a lengths tensor.

Qwen-VL passes the patches of every image of a batch as one ``(patches, features)`` tensor, beside
``image_grid_thw``, one ``(t, h, w)`` row per image: image ``i`` owns ``t * h * w`` rows. Qwen2.5-Omni's
audio tower takes features packed along time with one length per sample. Such a tensor has no batch
dimension, so it cannot be sliced like the others; it is cut to its first ``n`` items by the counts of
the lengths tensor beside it: an integer tensor with one row per item, 1-D (a length each) or 2-D
(sizes whose product is the count), whose counts sum to one of the packed tensor's dimensions.

Reading the counts copies the lengths tensor to the host (a synchronisation on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """How one tensor is packed: along ``dim``, ``counts[i]`` rows for item ``i``."""

    dim: int
    counts: tuple[int, ...]

    def rows(self, items: int) -> int:
        """The rows the first ``items`` items own."""
        return sum(self.counts[:items])

    def take(self, tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The rows of items ``start:stop``."""
        first = self.rows(start)
        return tensor.narrow(self.dim, first, self.rows(stop) - first)


def counts(tensor: torch.Tensor, items: int) -> tuple[int, ...] | None:
    """The rows per item that ``tensor`` tells, if it is a lengths tensor of ``items`` rows."""
    if (
        items < 1
        or tensor.dim() not in (1, 2)
        or tensor.shape[0] != items
        or tensor.dtype.is_floating_point
        or tensor.dtype.is_complex
        or tensor.dtype == torch.bool
    ):
        return None
    values = tensor.prod(-1) if tensor.dim() == 2 else tensor
    found = tuple(int(v) for v in values.tolist())
    return found if all(v >= 0 for v in found) and sum(found) > 0 else None


def find_packing(
    tensors: Sequence[torch.Tensor], items: int, dims: Sequence[int] | None = None
) -> list[Packing | None]:
    """For each of ``tensors`` without a dimension of ``items``, how it is packed (or None): its first
    dimension (among ``dims``, when given) whose size is the sum of the counts of a lengths tensor
    among ``tensors``."""
    options = [found for t in tensors if (found := counts(t, items)) is not None]
    out: list[Packing | None] = []
    for tensor in tensors:
        packing = None
        if items not in tensor.shape:
            for found in options:
                total = sum(found)
                allowed = range(tensor.dim()) if dims is None else [d for d in dims if d < tensor.dim()]
                dim = next((d for d in allowed if tensor.shape[d] == total), None)
                if dim is not None:
                    packing = Packing(dim, found)
                    break
        out.append(packing)
    return out
