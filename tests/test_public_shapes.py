"""Public multimodal training code through the whole pipeline (profile -> plan -> apply on the cpu
backend): every run trains exactly as plain Lightning does, and the plan is made for what the
model really runs. The models are in ``public_shapes.py``."""

from __future__ import annotations

import logging

import lightning as L
import pytest
from helpers import assert_bitwise_equal, parameters, trainer
from public_shapes import ClipStyle, FlavaStyle, PairData, ViltStyle, VqaData, loader, mixed_loader

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.plan import Plan

AUTO = dict(backend="cpu", warmup_steps=2, profile_seconds=10)


def fit(make, data, strategy, tmp_path=None, steps=8):
    L.seed_everything(0, verbose=False)
    model = make()
    options = {"default_root_dir": tmp_path} if tmp_path is not None else {}
    t = trainer(strategy, max_steps=steps, **options)
    t.fit(model, data())
    return t, parameters(model)


def test_clip_with_a_gradient_cache_and_sequence_first_text(tmp_path, caplog):
    data = lambda: loader(PairData())  # noqa: E731
    _, plain = fit(ClipStyle, data, "auto")
    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        t, mosaic = fit(ClipStyle, data, MosaicStrategy(**AUTO), tmp_path)
    assert_bitwise_equal(plain, mosaic)
    session = t.strategy.session
    assert session.profile is not None and t.strategy.planned
    text = session.profile.module("model.text")
    assert text.backward, "profiled on its call with grad, not the no-grad pass of the gradient cache"
    assert all(
        not any(p.requires_grad for p in session.units[n].parameters()) for n in t.strategy.plan.lookahead
    )
    assert Plan.load(tmp_path / "mosaic_plan.json") == t.strategy.plan


def test_vilt_calling_its_transformer_blocks_itself(tmp_path):
    data = lambda: loader(VqaData())  # noqa: E731
    _, plain = fit(ViltStyle, data, "auto")
    t, mosaic = fit(ViltStyle, data, MosaicStrategy(**AUTO), tmp_path)
    assert_bitwise_equal(plain, mosaic)
    units = list(t.strategy.units)
    assert units == [
        "text_embeddings",
        "transformer.patch_embed",
        "transformer.blocks.0",
        "transformer.blocks.1",
        "transformer.norm",
        "vqa_classifier",
        "val_head",
    ]
    graph = t.strategy.graph
    assert graph.inputs["transformer.blocks.0"] == ["transformer.patch_embed", "text_embeddings"]
    assert graph.calls["val_head"] == 0 and "val_head" not in t.strategy.session.profile.module_names
    plan = t.strategy.plan
    assert set(plan.modules) == set(units)
    if not plan.is_temporal or plan.predicted_step_s is not None:  # planned from the profile
        assert plan.phases[-1].quotas == {"val_head": None}


def test_flava_with_image_text_and_pair_batches(tmp_path):
    _, plain = fit(FlavaStyle, mixed_loader, "auto")
    t, mosaic = fit(FlavaStyle, mixed_loader, MosaicStrategy(**AUTO), tmp_path)
    assert_bitwise_equal(plain, mosaic)
    graph = t.strategy.graph
    assert graph.called == graph.modules, "the graph is the union of the image, text and pair steps"
    assert graph.inputs["multimodal_encoder"] == ["image_encoder", "text_encoder"]
    assert set(t.strategy.session.profile.module_names) == set(graph.modules)


@pytest.mark.parametrize("make", [ClipStyle, ViltStyle])
def test_a_resumed_run_reuses_the_profile_of_the_refined_units(tmp_path, make, monkeypatch):
    import lightning_mosaic.session.profiling as profiling_module

    data = (lambda: loader(PairData())) if make is ClipStyle else (lambda: loader(VqaData()))
    fit(make, data, MosaicStrategy(**AUTO), tmp_path)
    monkeypatch.setattr(profiling_module, "profile_units", lambda *a, **k: pytest.fail("profiled again"))
    t, _ = fit(make, data, MosaicStrategy(**AUTO), tmp_path, steps=4)
    assert t.strategy.session.reused and t.strategy.planned


@pytest.mark.parametrize(
    ("make", "data"),
    [
        (ClipStyle, lambda: loader(PairData())),
        (ViltStyle, lambda: loader(VqaData())),
        (FlavaStyle, mixed_loader),
    ],
    ids=["clip", "vilt", "flava"],
)
@pytest.mark.parametrize("options", [dict(plan="temporal", graphs=True), dict(AUTO, graphs="auto")],
                         ids=["graphs-on", "auto"])  # fmt: skip
def test_graphed_public_shapes_train_like_plain_lightning(tmp_path, monkeypatch, make, data, options):
    """CUDA graphs (emulated on the CPU) on encoders under no_grad, blocks called directly, mixed
    modalities, BatchNorm, sequence-first text: the same numbers, whatever is captured or refused."""
    from lightning_mosaic import session as session_module
    from lightning_mosaic.engine.graphs import EmulatedCapture

    capture = EmulatedCapture()
    monkeypatch.setattr(session_module, "capture_for", lambda device: capture)
    _, plain = fit(make, data, "auto")
    t, graphed = fit(make, data, MosaicStrategy(**options), tmp_path)
    assert_bitwise_equal(plain, graphed)
    if options["graphs"] is True:
        assert t.strategy.plan.graphs, t.strategy.plan.describe()
        assert sum(g.replays for g in capture.graphs) > 0, "some unit replayed its graphs"
    else:  # the profile timed the graphs; emulated replays run the unit again, slower than eager
        assert t.strategy.session.profile.graphed
        assert t.strategy.plan.graphs == (), "no unit whose graphs were measured slower is graphed"
