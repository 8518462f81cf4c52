"""Splitting batches into micro-batches and combining what the micro-batch steps return."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import pytest
import torch

from lightning_mosaic.microbatch import (
    BatchSplitError,
    batch_size,
    check_split,
    combine,
    combine_outputs,
    sizes,
    split_batch,
)


@dataclasses.dataclass(frozen=True)
class Frozen:
    pixels: torch.Tensor
    name: str


Pair = namedtuple("Pair", ["x", "y"])


def test_sizes_cover_the_batch_and_put_the_remainder_first():
    assert sizes(8, 2) == [4, 4]
    assert sizes(7, 2) == [4, 3]
    assert sizes(10, 4) == [3, 3, 2, 2]
    assert sizes(2, 4) == [1, 1]  # never an empty micro-batch


def test_split_every_supported_container_along_the_first_dimension():
    batch = {
        "pixels": torch.arange(12.0).reshape(6, 2),
        "pair": Pair(torch.arange(6), [torch.ones(6, 1), torch.tensor(3.0)]),
        "frozen": Frozen(torch.zeros(6, 3), "cam"),
        "captions": [f"c{i}" for i in range(6)],
        "scale": 0.5,
        "ordered": OrderedDict(ids=torch.arange(6)),
        "none": None,
    }
    parts = split_batch(batch, 3)
    assert len(parts) == 3 and batch_size(batch) == 6
    for index, part in enumerate(parts):
        rows = slice(2 * index, 2 * index + 2)
        assert torch.equal(part["pixels"], batch["pixels"][rows])
        assert isinstance(part["pair"], Pair) and torch.equal(part["pair"].x, torch.arange(6)[rows])
        assert part["pair"].y[0].shape == (2, 1) and part["pair"].y[1] is batch["pair"].y[1]  # scalar kept
        assert isinstance(part["frozen"], Frozen) and part["frozen"].name == "cam"
        assert part["frozen"].pixels.shape == (2, 3)
        assert part["captions"] == [f"c{i}" for i in range(2 * index, 2 * index + 2)]
        assert part["scale"] == 0.5 and part["none"] is None
        assert type(part["ordered"]) is OrderedDict
    assert batch["pixels"].shape == (6, 2)  # the batch itself is untouched


def test_split_a_hugging_face_batch_encoding_keeps_its_type():
    from transformers import BatchEncoding

    batch = BatchEncoding({"input_ids": torch.arange(8).reshape(4, 2), "attention_mask": torch.ones(4, 2)})
    parts = split_batch(batch, 2)
    assert all(type(p) is BatchEncoding for p in parts)
    assert torch.equal(parts[1]["input_ids"], batch["input_ids"][2:])


def test_a_batch_that_cannot_be_split_names_the_type_the_place_and_the_hook():
    class Opaque:
        pass

    with pytest.raises(BatchSplitError, match=r"batch\['meta'\] of type .*Opaque.*mosaic_split_batch"):
        split_batch({"x": torch.ones(4, 2), "meta": Opaque()}, 2)
    with pytest.raises(
        BatchSplitError, match=r"batch\[1\] has shape \(3, 2\).*batch size 4.*mosaic_split_batch"
    ):
        split_batch([torch.ones(4), torch.ones(3, 2)], 2)
    with pytest.raises(BatchSplitError, match=r"no tensor with a batch dimension.*mosaic_split_batch"):
        split_batch({"text": "hello"}, 2)
    with pytest.raises(ValueError, match="k=0"):
        split_batch(torch.ones(4), 0)


def test_check_split_accepts_lists_of_1_to_k_micro_batches_only():
    assert check_split((1, 2), 2) == [1, 2]
    with pytest.raises(BatchSplitError, match="list of 1 to 2 micro-batches, got 3 items"):
        check_split([1, 2, 3], 2)
    with pytest.raises(BatchSplitError, match="got dict"):
        check_split({"a": 1}, 2)


def test_combined_mean_losses_have_the_full_batch_value_and_gradients():
    torch.manual_seed(0)
    weight = torch.randn(3, requires_grad=True)
    x = torch.randn(7, 3)
    full = (x @ weight).pow(2).mean()
    (g_full,) = torch.autograd.grad(full, weight)
    parts = split_batch(x, 3)
    losses = [(p @ weight).pow(2).mean() for p in parts]
    combined = combine_outputs(losses, [len(p) for p in parts])
    (g_split,) = torch.autograd.grad(combined, weight)
    assert torch.allclose(combined, full, rtol=1e-6) and torch.allclose(g_split, g_full, rtol=1e-5)


def test_combine_dicts_rows_scalars_and_objects():
    counts = [3, 1]
    out = combine(
        [
            {"loss": torch.tensor(1.0), "logits": torch.zeros(3, 2), "tag": "a", "n": 2},
            {"loss": torch.tensor(5.0), "logits": torch.ones(1, 2), "tag": "b", "n": 6},
        ],
        counts,
    )
    assert out["loss"].item() == pytest.approx(2.0)  # 3/4 * 1 + 1/4 * 5
    assert out["logits"].shape == (4, 2) and out["tag"] == "b" and out["n"] == pytest.approx(3.0)


def test_skipped_micro_batches_must_all_be_skipped():
    assert combine_outputs([None, None], [2, 2]) is None
    with pytest.raises(ValueError, match=r"returned None for micro-batches \[1\] of 2"):
        combine_outputs([torch.tensor(1.0), None], [2, 2])


def test_per_sample_lists_of_lists_and_ragged_tensors_are_split_per_sample():
    batch = {
        "x": torch.zeros(4, 2),
        "boxes": [[1, 2], [3], [4, 5, 6], []],
        "ragged": [torch.zeros(n, 4) for n in (2, 1, 3, 0)],
        "meta": [{"id": i} for i in range(4)],
        "batched": [torch.zeros(4, 1), torch.ones(4, 2)],  # a list of batched tensors: each split
    }
    first, second = split_batch(batch, 2)
    assert first["boxes"] == [[1, 2], [3]] and second["boxes"] == [[4, 5, 6], []]
    assert [t.shape[0] for t in second["ragged"]] == [3, 0] and first["meta"] == [{"id": 0}, {"id": 1}]
    assert [t.shape for t in first["batched"]] == [(2, 1), (2, 2)]
    with pytest.raises(BatchSplitError, match=r"batch\['boxes'\]\[0\] has shape \(2, 4\)"):
        split_batch({"x": torch.zeros(4, 2), "boxes": [torch.zeros(2, 4), torch.zeros(1, 4)]}, 2)


def test_packed_patches_are_split_by_their_grid_rows():
    """Qwen-VL's batch: pixel_values packs every image's patches, image_grid_thw counts them per image."""
    grid = torch.tensor([[1, 2, 2], [1, 2, 3], [1, 1, 2]])  # 4, 6 and 2 patches
    batch = {
        "input_ids": torch.arange(9).view(3, 3),
        "pixel_values": torch.arange(12.0),
        "image_grid_thw": grid,
    }
    first, second = split_batch(batch, 2)
    assert torch.equal(first["pixel_values"], torch.arange(10.0)) and first["image_grid_thw"].shape == (2, 3)
    assert torch.equal(second["pixel_values"], torch.arange(10.0, 12.0)) and second["input_ids"].shape == (
        1,
        3,
    )
    with pytest.raises(BatchSplitError, match=r"batch\['pixel_values'\] has shape \(13,\)"):
        split_batch({**batch, "pixel_values": torch.arange(13.0)}, 2)  # counts that do not add up
