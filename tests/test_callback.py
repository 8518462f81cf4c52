"""The MosaicProfiler callback through real Trainers: profile, save, reuse, mismatch, corrupt file, resume."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import assert_bitwise_equal, hf_loader, hf_model, parameters, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_mosaic.session.profiling as profiling_module
from lightning_mosaic.lightning.callback import MosaicProfiler
from lightning_mosaic.lightning.strategy import MosaicStrategy
from lightning_mosaic.profile import Profile, validate

FAST = dict(warmup_steps=2, warmup=1, repeats=2, max_seconds=30, progress=False)
UNITS = ["vision", "audio", "vision_proj", "audio_proj", "llm"]


def fit(callbacks, tmp_path, strategy="auto", model=None, **kwargs):
    model = model or hf_model()
    t = trainer(strategy, callbacks=callbacks, max_steps=4, default_root_dir=tmp_path, **kwargs)
    t.fit(model, hf_loader())
    return t, model


def test_profile_of_the_tiny_hf_model_through_a_trainer(tmp_path):
    profiler = MosaicProfiler(**FAST)
    _, model = fit([profiler], tmp_path)
    path = tmp_path / "mosaic_profile.json"
    data = json.loads(path.read_text())
    assert validate(data) == []
    profile = Profile.load(path)
    assert Profile.from_json(profile.to_json()) == profile == profiler.profile
    assert profile.module_names == UNITS
    assert profile.batch_size == 4 and profile.batches == [1, 2, 4]
    assert profile.device == "cpu" and profile.quota_unit == "thread"
    frozen = profile.module("vision")
    assert not frozen.trainable and not frozen.backward and profile.module("llm").backward
    assert {s.module for s in profile.samples} == set(UNITS)
    assert not profiler.reused
    assert set(profiler.perf_model.held_out_mape_) == set(UNITS)
    graph = profile.graph  # traced in the captured step
    assert graph.inputs["llm"] == ["vision_proj", "audio_proj"] and graph.inputs["vision_proj"] == ["vision"]
    # profiling between steps changed nothing: same parameters as training without the callback
    plain = hf_model()
    trainer(max_steps=4).fit(plain, hf_loader())
    assert_bitwise_equal(parameters(model), parameters(plain))


def test_a_matching_profile_is_reused_not_measured_again(tmp_path, monkeypatch):
    fit([MosaicProfiler(**FAST)], tmp_path)
    path = tmp_path / "mosaic_profile.json"
    before = path.read_text()

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiled again")

    monkeypatch.setattr(profiling_module, "profile_units", no_profiling)
    again = MosaicProfiler(**FAST)
    fit([again], tmp_path)
    assert again.reused
    assert again.profile == Profile.from_json(before)
    assert path.read_text() == before
    assert again.perf_model is not None


def test_a_profile_of_another_model_warns_and_profiles_again(tmp_path, caplog):
    fit([MosaicProfiler(**FAST)], tmp_path, model=hf_model(freeze_vision=False))
    path = tmp_path / "mosaic_profile.json"
    old = Profile.load(path)
    assert old.module("vision").trainable
    fresh = MosaicProfiler(**FAST)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        fit([fresh], tmp_path)  # vision frozen now: other fingerprint
    assert f"the profile in {path} does not match this run: the model changed" in caplog.text
    assert "['vision']" in caplog.text
    assert not fresh.reused
    assert not Profile.load(path).module("vision").trainable  # replaced by the new profile


def test_a_profile_of_another_precision_is_not_reused(tmp_path, caplog):
    first = MosaicProfiler(**FAST)
    fit([first], tmp_path)
    assert first.profile.fingerprint["precision"].startswith("32-true, float32 matmul ")
    again = MosaicProfiler(**FAST)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        fit([again], tmp_path, precision="bf16-mixed")
    assert "does not match this run: it was measured in 32-true" in caplog.text
    assert "this run trains in bf16-mixed" in caplog.text
    assert not again.reused and again.profile.fingerprint["precision"].startswith("bf16-mixed")


def test_a_corrupt_profile_file_is_named_and_replaced_by_a_new_profile(tmp_path, caplog):
    path = tmp_path / "mosaic_profile.json"
    for text, message in [
        ('{"schema_version": 1, "samples": [', f"profile {path} is not valid JSON"),
        (json.dumps({"schema_version": 1, "device": "cpu"}), f"profile {path} is not a valid profile"),
        (b"\xff\xfe{}", f"profile {path} is not UTF-8 text (byte 0 is b'\\xff')"),
        ("[1, 2]", f"profile {path} is not a valid profile: profile must be an object"),
    ]:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
            fit([MosaicProfiler(**FAST)], tmp_path)
        assert message in caplog.text and "it is not reused, and a new profile replaces it" in caplog.text
        assert Profile.load(path).module_names, "a new profile was measured and written"


@pytest.mark.parametrize("strategy", ["auto", "mosaic"])
def test_explicit_path_and_modules(tmp_path, strategy):
    path = tmp_path / "nested" / "p.json"
    profiler = MosaicProfiler(modules=["audio", "llm"], path=path, **FAST)
    fit([profiler], tmp_path, strategy=strategy)
    profile = Profile.load(path)
    assert profile.module_names == ["audio", "llm"]
    # the graph is over the profiled modules, even when the strategy traced one over all its units
    assert profile.graph.inputs == {"audio": [], "llm": ["audio"]}


def test_the_profile_travels_in_checkpoints(tmp_path, monkeypatch):
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4)
    first = MosaicProfiler(**FAST)
    fit([first, saver], tmp_path, enable_checkpointing=True)
    (tmp_path / "mosaic_profile.json").unlink()
    monkeypatch.setattr(profiling_module, "profile_units", lambda *a, **k: pytest.fail("profiled again"))
    resumed = MosaicProfiler(**FAST)
    t = trainer(callbacks=[resumed], max_steps=6, default_root_dir=tmp_path)
    t.fit(hf_model(), hf_loader(), ckpt_path=saver.best_model_path or saver.last_model_path)
    assert resumed.reused and resumed.profile == first.profile


def test_under_the_mosaic_strategy_the_replay_bypasses_the_engine(tmp_path):
    profiler = MosaicProfiler(**FAST)
    t, model = fit([profiler], tmp_path, strategy="mosaic")
    assert profiler.profile is not None and profiler.profile.module_names == UNITS
    assert profiler.profile.graph == t.strategy.graph  # the strategy's traced graph
    assert t.strategy.engine.calls["llm"] == 4  # the training steps only, not the replays
    plain = hf_model()
    trainer(max_steps=4).fit(plain, hf_loader())
    assert_bitwise_equal(parameters(model), parameters(plain))


def test_training_shorter_than_the_warmup_says_so(tmp_path, caplog):
    profiler = MosaicProfiler(**(FAST | {"warmup_steps": 10}))
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        fit([profiler], tmp_path)
    assert profiler.profile is None
    assert "training ended at step 4, before the profile (warmup_steps=10)" in caplog.text


def test_bad_arguments():
    with pytest.raises(ValueError, match="warmup_steps=-1 must be a whole number of steps"):
        MosaicProfiler(warmup_steps=-1)
    with pytest.raises(TypeError, match="did you mean \\['llm'\\]"):
        MosaicProfiler(modules="llm")


@pytest.mark.parametrize("shared", [False, True], ids=["own session", "the strategy's session"])
def test_a_copy_of_the_callback_during_fit_keeps_the_profile_not_the_session(tmp_path, shared):
    import copy
    import pickle

    from lightning.pytorch import Callback

    profiler = MosaicProfiler(**FAST)
    copies = []

    class CopyCallbacks(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if profiler.profile is not None and not copies:
                copies.extend([copy.deepcopy(profiler), pickle.loads(pickle.dumps(profiler))])

    strategy = MosaicStrategy(backend="cpu") if shared else "auto"
    fit([profiler, CopyCallbacks()], tmp_path, strategy=strategy)
    assert (profiler.session.engine is not None) == shared
    assert len(copies) == 2
    for twin in copies:
        assert twin.session is None and twin.profile == profiler.profile
        assert twin.state_dict() == profiler.state_dict()
    again = copies[0]
    fit([again], tmp_path / "again")
    assert again.reused and again.profile == profiler.profile  # given to a new fit, it is reused
