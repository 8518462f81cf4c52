"""Per-unit layouts: FSDP2-sharded units beside replicated ones (``sharding.py`` and ``shard=``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_bitwise_equal, demo_data, demo_model, parameters, trainer
from torch import nn

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.sharding import (
    REPLICATED,
    SHARDED,
    Layout,
    blocks_of,
    check_shard,
    choose,
    training_bytes,
)


class Tower(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.small = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_check_shard_names_what_is_wrong():
    assert check_shard(None) is None and check_shard("auto") == "auto" and check_shard(["llm"]) == ("llm",)
    with pytest.raises(ValueError, match="shard='all' is not 'auto' nor a list of unit names"):
        check_shard("all")
    with pytest.raises(TypeError, match=r"shard=\[3\] must be None, 'auto' or a list of unit names"):
        check_shard([3])
    with pytest.raises(ValueError, match="names a unit twice"):
        check_shard(["llm", "llm"])


def test_choose_named_auto_and_one_process():
    units = {"vision": Tower(8, 2), "llm": Tower(64, 4)}
    assert choose(units, ["llm"], 2) == {"vision": REPLICATED, "llm": SHARDED}
    assert choose(units, ["llm"], 1) == {"vision": REPLICATED, "llm": REPLICATED}  # nothing to shard over
    with pytest.raises(
        ValueError, match=r"shard names unknown units \['text'\]; the units are \['vision', 'llm'\]"
    ):
        choose(units, ["text"], 2)
    big, small = training_bytes(units["llm"]), training_bytes(units["vision"])
    assert big == 4 * 4 * sum(p.numel() for p in units["llm"].parameters())  # fp32, weights+grad+2 moments
    assert choose(units, "auto", 2, memory_bytes=4 * (big + small)) == dict.fromkeys(units, REPLICATED)
    # the backbone alone does not fit half the memory replicated; sharded over 2 it does
    assert choose(units, "auto", 2, memory_bytes=int(1.2 * big)) == {"vision": REPLICATED, "llm": SHARDED}
    with pytest.raises(ValueError, match="shard='auto' needs the device's memory"):
        choose(units, "auto", 2)


def test_resident_bytes_per_rank_follow_the_layout():
    units = {"vision": Tower(8, 2), "llm": Tower(64, 4)}
    whole = {n: training_bytes(m) for n, m in units.items()}
    from lightning_mosaic.sharding import resident_bytes

    assert resident_bytes(units, dict.fromkeys(units, REPLICATED), 4) == sum(whole.values())
    assert resident_bytes(units, {"vision": REPLICATED, "llm": SHARDED}, 4) == round(
        whole["vision"] + whole["llm"] / 4
    )


def test_blocks_are_the_largest_module_list():
    tower = Tower(8, 3)
    assert blocks_of(tower) == list(tower.blocks)
    assert blocks_of(nn.Linear(2, 2)) == []


def test_layout_round_trips_and_describes_itself():
    layout = Layout(
        2, {"vision": REPLICATED, "llm": SHARDED}, {"llm": 4}, {"vision": 2**20, "llm": 3 * 2**20}
    )
    assert Layout.from_dict(layout.to_dict()) == layout and layout.sharded == ["llm"]
    assert layout.describe() == (
        "layout: vision replicated, 1.0 MiB per rank;"
        " llm sharded over 2 ranks (FSDP2, 4 blocks apart, 3.0 MiB per rank)"
    )


def test_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match="shard=\\['llm'\\] needs start_method='popen'"):
        MosaicStrategy(shard=["llm"], start_method="spawn")
    with pytest.raises(
        TypeError, match=r"mp_policy='bf16' must be a torch\.distributed\.fsdp\.MixedPrecisionPolicy"
    ):
        MosaicStrategy(shard=["llm"], mp_policy="bf16")
    with pytest.raises(TypeError, match="save_distributed_checkpoint='yes' must be True or False"):
        MosaicStrategy(shard=["llm"], save_distributed_checkpoint="yes")


def test_one_process_shards_nothing_and_trains_as_plain_lightning(caplog):
    import logging

    plain, ours = demo_model(), demo_model()
    trainer("auto", max_steps=3).fit(plain, demo_data())
    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        t = trainer(MosaicStrategy(shard=["llm"]), max_steps=3)
        t.fit(ours, demo_data())
    assert t.strategy.layout is None and "one process holds every unit whole" in caplog.text
    # what the planner budgets next to activations: every unit's training state, whole
    assert (
        t.strategy.session.config.resident_bytes
        == sum(training_bytes(m) for m in t.strategy.units.values())
        > 0
    )
    assert_bitwise_equal(parameters(plain), parameters(ours))


SCRIPT = Path(__file__).parent / "shard_script.py"


def _union_of_rank_batches(devices: int, batch_size: int = 4, epochs: int = 2):
    """What the script's ranks see together at each step: Lightning's shuffled DistributedSampler
    (seed 0) per rank and epoch, as one batch per step for one process."""
    from torch.utils.data import DataLoader, DistributedSampler

    from lightning_mosaic.demo import SyntheticMultimodal

    dataset = SyntheticMultimodal("tiny", batch_size * 2 * devices, 0)  # demo_data(4, 2 * devices)
    steps = []
    for epoch in range(epochs):
        per_rank = []
        for r in range(devices):
            sampler = DistributedSampler(dataset, num_replicas=devices, rank=r, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            order = list(sampler)
            per_rank.append([order[i : i + batch_size] for i in range(0, len(order), batch_size)])
        steps += [[i for rank in per_rank for i in rank[step]] for step in range(len(per_rank[0]))]
    return DataLoader(dataset, batch_sampler=steps)


@pytest.mark.parametrize("devices", [2, 4])
def test_sharded_backbone_trains_checkpoints_and_interoperates_with_lightning_fsdp2(tmp_path, devices):
    """CPU processes over gloo (tests/shard_script.py): the backbone sharded, the rest replicated."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(devices)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    def rank(name, r=0):
        return torch.load(tmp_path / name / f"rank{r}.pt", weights_only=False)

    def same(a, b):
        # Two ranks sum gradients in one order whatever the collective: bitwise. Four ranks reduce in
        # another order under DDP's all-reduce than under FSDP2's reduce-scatter: float rounding only.
        if devices == 2:
            assert_bitwise_equal(a, b)
        else:
            for name in a:
                torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=5e-4, msg=name)

    ddp = rank("ddp")["params"]
    # plain single-process training on the union of the ranks' batches, step by step
    single = demo_model()
    trainer("auto", max_steps=4).fit(single, _union_of_rank_batches(devices))
    for name, value in parameters(single).items():
        torch.testing.assert_close(value, ddp[name], rtol=1e-3, atol=5e-4, msg=name)
    # the same numbers as DDP and as Lightning's own FSDP2 path, on every rank
    for name in ("mosaic", "lightning"):
        for r in range(devices):
            same(ddp, rank(name, r)["params"])
    # resuming from step 2 (from different initial weights), from our sharded checkpoint or from
    # Lightning's, in either strategy, ends where the uninterrupted run does
    for name in (
        "ddp_resumed",
        "mosaic_resumed",
        "lightning_resumed",
        "lightning_from_mosaic",
        "mosaic_from_lightning",
    ):
        same(ddp, rank(name)["params"])
    # the engine running units on their own streams beside FSDP2's hooks: the same numbers
    same(ddp, rank("recorded")["params"])
    for r in range(devices):
        recorded = json.loads((tmp_path / "recorded" / f"streams{r}.json").read_text())
        launches = recorded["launches"]
        assert launches.get("llm", 0) > 0 and launches.get("vision", 0) > 0, launches
        assert recorded["races"] == [], "\n".join(recorded["races"][:5])  # FSDP2's collectives included
    # FSDP2's bf16 mixed precision: computed in bf16 (not the fp32 numbers), kept and reduced in fp32
    bf16 = rank("bf16")["params"]
    assert all(p.dtype == torch.float32 for p in bf16.values())
    gap = max((bf16[k] - ddp[k]).abs().max().item() for k in ddp)
    assert 0 < gap < 2e-2, gap
    assert (tmp_path / "mosaic" / "ckpt" / "epoch=0-step=2.ckpt" / "meta.pt").is_file()  # a sharded directory
    # each rank holds about 1/world of the backbone and the whole of every other unit
    records = [rank("mosaic", r) for r in range(devices)]
    full = {
        n: sum(p.numel() * 4 for k, p in ddp.items() if k.startswith(n + "."))
        for n in records[0]["local_bytes"]
    }
    assert sum(rec["local_bytes"]["llm"] for rec in records) == full["llm"]
    assert max(rec["local_bytes"]["llm"] for rec in records) <= full["llm"] / devices * 1.5
    assert all(rec["local_bytes"]["vision"] == full["vision"] for rec in records)
    layout = Layout.from_dict(records[0]["layout"])
    assert layout.world == devices and layout.sharded == ["llm"]
    notes = records[0]["plan"]["notes"]
    assert any(n.startswith("units ['llm'] are sharded: the profiler replays units") for n in notes)
    assert layout.describe() in notes


def test_a_hugging_face_backbone_is_sharded_per_decoder_layer():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)  # fmt: skip
    llm = Qwen2ForCausalLM(config)
    assert blocks_of(llm) == list(llm.model.layers)
