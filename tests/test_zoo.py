"""The model zoo: every model at tiny trains under mosaic exactly as under plain Lightning."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal, assert_trained, parameters, trainer

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.zoo import KINDS, MODELS, SIZES, ZooDataset, build, data, zoo_size

UNITS = {
    "vlm": ["vision", "projector", "llm"],
    "avlm": ["vision", "audio", "vision_proj", "audio_proj", "llm"],
    "bind": ["vision", "audio", "text", "vision_head", "audio_head", "text_head"],
}
EDGES = {
    "vlm": {"projector": ["vision"], "llm": ["projector"]},
    "avlm": {"vision_proj": ["vision"], "audio_proj": ["audio"], "llm": ["vision_proj", "audio_proj"]},
    "bind": {"vision_head": ["vision"], "audio_head": ["audio"], "text_head": ["text"]},
}


def _fit(kind, strategy, steps=3, **kwargs):
    torch.manual_seed(0)
    model = build(kind)
    t = trainer(strategy, max_steps=steps, **kwargs)
    t.fit(model, data(kind, batch_size=4, num_samples=16))
    return t, model


@pytest.mark.parametrize("kind", KINDS)
def test_each_tiny_model_trains_under_mosaic_bitwise_like_plain_lightning(kind):
    torch.manual_seed(0)
    before = parameters(build(kind))
    _, plain = _fit(kind, "auto")
    t, mosaic = _fit(kind, "mosaic")
    assert_trained(before, plain)
    assert_bitwise_equal(parameters(plain), parameters(mosaic))
    assert list(t.strategy.units) == UNITS[kind]
    graph = t.strategy.graph
    for consumer, producers in EDGES[kind].items():
        assert graph.inputs[consumer] == producers, (consumer, graph.inputs[consumer])


def test_the_data_has_the_shapes_the_models_expect():
    s = zoo_size("tiny")
    sample = ZooDataset("avlm", "tiny", 4)[1]
    assert sample["pixel_values"].shape == (3, s.image, s.image)
    assert sample["input_features"].shape == (s.mels, 2 * s.audio_positions)
    assert sample["input_ids"].shape == (s.text_tokens,)
    padding = sample["attention_mask"] == 0
    assert torch.all(sample["labels"][padding] == -100) and torch.all(sample["input_ids"][padding] == 0)
    assert torch.equal(ZooDataset("avlm", "tiny", 4)[1]["input_ids"], sample["input_ids"])  # deterministic
    assert "labels" not in ZooDataset("bind", "tiny", 4)[0] and "input_features" not in ZooDataset("vlm")[0]


def test_sizes_and_names_are_checked():
    assert set(MODELS) == set(KINDS) and SIZES == ("tiny", "edge", "base")
    with pytest.raises(ValueError, match="unknown zoo model 'clip'; choose one of vlm, avlm, bind"):
        build("clip")
    with pytest.raises(ValueError, match="unknown zoo size 'huge'; choose one of tiny, edge, base"):
        build("vlm", "huge")
    with pytest.raises(ValueError, match="unknown zoo model 'audio'"):
        data("audio")


def test_a_contrastive_model_refuses_micro_batches():
    with pytest.raises(ValueError, match=r"2 micro-batches .* BindModel sets mosaic_max_micro_batches = 1"):
        _fit("bind", MosaicStrategy(plan="temporal", micro_batches=2), steps=1)


def test_the_planner_keeps_a_contrastive_batch_whole(tmp_path):
    strategy = MosaicStrategy(backend="cpu", warmup_steps=1, profile_seconds=10, micro_batches="auto")
    t, _ = _fit("bind", strategy, steps=4, default_root_dir=tmp_path)
    assert strategy.planned and strategy.session.profile is not None
    assert strategy.plan.micro_batches == 1 and t.strategy.active_micro_batches == 1
