"""Packed tensors found by the lengths tensor beside them."""

from __future__ import annotations

import torch

from lightning_mosaic.packing import Packing, counts, find_packing


def test_lengths_tensors_tell_rows_per_item():
    assert counts(torch.tensor([[1, 2, 2], [2, 1, 3]]), 2) == (4, 6)  # (t, h, w) grids: products
    assert counts(torch.tensor([100, 60]), 2) == (100, 60)  # one length per sample
    assert counts(torch.tensor([[1.0, 2.0]]), 1) is None  # floats are data, not lengths
    assert counts(torch.tensor([3, 4]), 3) is None  # not one row per item
    assert counts(torch.tensor([0, 0]), 2) is None and counts(torch.tensor([-1, 5]), 2) is None


def test_a_packed_tensor_is_found_along_the_dimension_its_counts_fill():
    lengths = torch.tensor([100, 60])
    features = torch.randn(16, 160)  # audio features packed along time
    batched = torch.randn(2, 7)
    found = find_packing([features, lengths, batched], 2)
    assert found == [Packing(1, (100, 60)), None, None]
    assert find_packing([features, lengths], 2, dims=[0]) == [None, None]  # only the first dimension
    packing = found[0]
    assert packing.rows(1) == 100 and packing.take(features, 1, 2).shape == (16, 60)
