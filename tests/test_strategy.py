"""MosaicStrategy under real Lightning Trainers: registration, numerics, Lightning features, checkpoints."""

from __future__ import annotations

import importlib
import logging
import pickle

import lightning as L
import pytest
import torch
from helpers import (
    TinyHFMultimodal,
    assert_bitwise_equal,
    assert_trained,
    demo_data,
    demo_model,
    hf_loader,
    hf_model,
    parameters,
    trainer,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry

import lightning_mosaic
from lightning_mosaic import MosaicStrategy, planner
from lightning_mosaic.demo import DemoMultimodalModel
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.engine import RecordingBackend
from lightning_mosaic.perfmodel import PerfModel, too_wrong
from lightning_mosaic.plan import Plan
from lightning_mosaic.session import Stage

# ---------------------------------------------------------------- registration and construction


def test_import_registers_mosaic_and_is_idempotent():
    assert {"mosaic", "mosaic_spawn", "mosaic_fork"} <= set(StrategyRegistry.available_strategies())
    importlib.reload(lightning_mosaic)
    importlib.import_module("lightning_mosaic")
    MosaicStrategy.register_strategies(StrategyRegistry)
    assert StrategyRegistry["mosaic"]["strategy"] is MosaicStrategy
    assert StrategyRegistry["mosaic_spawn"]["init_params"] == {"start_method": "spawn"}


@pytest.mark.parametrize("strategy", ["mosaic", MosaicStrategy()])
def test_trainer_accepts_name_and_instance(strategy):
    t = trainer(strategy)
    assert isinstance(t.strategy, MosaicStrategy)
    assert t.strategy.launcher is None, "one device runs in place, like SingleDeviceStrategy"
    assert not t.strategy.is_distributed, "one process"
    assert t.strategy.root_device == torch.device("cpu")
    t.fit(demo_model(), demo_data())
    assert t.strategy.model is t.lightning_module, "no DistributedDataParallel wrapper with one device"
    assert type(t.train_dataloader.sampler).__name__ == "SequentialSampler", "no distributed sampler"
    assert not torch.distributed.is_initialized(), "no process group"


def test_two_cpu_devices_are_distributed():
    t = trainer("mosaic_spawn", devices=2)
    assert t.strategy.is_distributed and t.strategy.world_size == 2
    assert t.strategy.launcher is not None
    assert t.strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}


def test_constructor_rejects_bad_arguments():
    with pytest.raises(
        ValueError, match=r"start_method='threads' is not one of popen, spawn, fork, forkserver"
    ):
        MosaicStrategy(start_method="threads")
    with pytest.raises(ValueError, match=r"module 'vision' is listed twice"):
        MosaicStrategy(modules=["vision", "llm", "vision"])
    with pytest.raises(TypeError, match=r"did you mean \['vision'\]"):
        MosaicStrategy(modules="vision")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"profile_seconds": 0}, ValueError, "max_seconds=0 must be a positive number of seconds"),
        ({"profile_seconds": "60"}, ValueError, "max_seconds='60' must be a positive number"),
        ({"warmup_steps": 1.5}, ValueError, "warmup_steps=1.5 must be a whole number of steps"),
        ({"modules": [1]}, TypeError, "`modules` must hold module names \\(str\\), got int: 1"),
        ({"profile": 123}, TypeError, "the profile path must be a file path .* got int: 123"),
        ({"profile": ""}, ValueError, "the profile path '' must name a file"),
        ({"timeout": 5}, TypeError, "timeout=5 must be a datetime.timedelta"),
        ({"process_group_backend": 1}, TypeError, "process_group_backend=1 must be a backend name"),
        ({"micro_batches": 0}, ValueError, "micro_batches=0 must be 'auto'"),
        ({"quotas": [1]}, TypeError, "`quotas` must map module names to SM counts"),
    ],
)
def test_every_argument_is_checked_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        MosaicStrategy(**kwargs)


def test_strategy_pickles_before_setup():
    strategy = pickle.loads(pickle.dumps(MosaicStrategy(modules=["vision", "llm"])))
    assert strategy.module_names == ["vision", "llm"]


# ---------------------------------------------------------------- numerics: bitwise equal to plain Lightning


def _fit_params(model, strategy, data, **kwargs):
    t = trainer(strategy, **kwargs)
    t.fit(model, data)
    return t, parameters(model)


def test_two_encoder_model_bitwise_equal_after_10_steps():
    before, model = parameters(demo_model()), demo_model()
    _, plain = _fit_params(model, "auto", demo_data())
    t, mosaic = _fit_params(demo_model(), "mosaic", demo_data())
    assert_trained(before, model)
    assert_bitwise_equal(plain, mosaic)
    assert t.global_step == 10
    assert dict(t.strategy.engine.calls) == {"vision": 10, "audio": 10, "projector": 10, "llm": 10}
    assert t.strategy.graph.inputs == {
        "vision": [],
        "audio": [],
        "projector": ["vision", "audio"],
        "llm": ["projector"],
    }
    assert t.strategy.plan.is_temporal and t.strategy.plan.modules == ["vision", "audio", "projector", "llm"]


def test_hugging_face_model_bitwise_equal_after_10_steps():
    before, model = parameters(hf_model()), hf_model()
    _, plain = _fit_params(model, "auto", hf_loader())
    t, mosaic = _fit_params(hf_model(), "mosaic", hf_loader())
    assert_trained(before, model)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert_bitwise_equal(plain, mosaic)
    graph = t.strategy.graph
    assert graph.modules == ["vision", "audio", "vision_proj", "audio_proj", "llm"]
    assert graph.inputs["llm"] == ["vision_proj", "audio_proj"]
    assert graph.inputs["vision_proj"] == ["vision"] and graph.inputs["audio_proj"] == ["audio"]
    assert graph.frozen == ["vision"]


def test_shuffled_data_follows_plain_lightning_order():
    """With one device there is no distributed sampler: a shuffled loader draws the same batches."""

    def data():
        loader = demo_data().train_dataloader()
        return torch.utils.data.DataLoader(loader.dataset, batch_size=4, shuffle=True)

    L.seed_everything(3)
    _, plain = _fit_params(demo_model(), "auto", data())
    L.seed_everything(3)
    _, mosaic = _fit_params(demo_model(), "mosaic", data())
    assert_bitwise_equal(plain, mosaic)


@pytest.mark.parametrize(
    "options",
    [
        {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5},
        {"gradient_clip_val": 0.1, "gradient_clip_algorithm": "value"},
        {"precision": "bf16-mixed"},
    ],
    ids=["accumulate+clip-norm", "clip-value", "bf16-mixed"],
)
def test_lightning_training_features_bitwise_equal(options):
    plain_t, plain = _fit_params(demo_model(), "auto", demo_data(), **options)
    mosaic_t, mosaic = _fit_params(demo_model(), "mosaic", demo_data(), **options)
    assert_bitwise_equal(plain, mosaic)
    assert plain_t.global_step == mosaic_t.global_step
    assert torch.equal(plain_t.callback_metrics["train_loss"], mosaic_t.callback_metrics["train_loss"])


def test_fp16_mixed_on_cpu_falls_back_like_plain_lightning():
    with pytest.warns(UserWarning, match="bf16-mixed"):
        _, plain = _fit_params(demo_model(), "auto", demo_data(), precision="16-mixed", max_steps=3)
    with pytest.warns(UserWarning, match="bf16-mixed"):
        _, mosaic = _fit_params(demo_model(), "mosaic", demo_data(), precision="16-mixed", max_steps=3)
    assert_bitwise_equal(plain, mosaic)


def test_fit_validate_test_predict_and_logging_match():
    results = {}
    for name in ("auto", "mosaic"):
        model, data = demo_model(), demo_data()
        t = trainer(name, limit_val_batches=2, val_check_interval=5, num_sanity_val_steps=2)
        t.fit(model, data)
        logged = {k: v.clone() for k, v in t.logged_metrics.items()}
        validated = t.validate(model, data, verbose=False)
        tested = t.test(model, data, verbose=False)
        predicted = t.predict(model, data)
        results[name] = (parameters(model), logged, validated, tested, predicted, t)
    plain, mosaic = results["auto"], results["mosaic"]
    assert_bitwise_equal(plain[0], mosaic[0])
    assert plain[1].keys() == mosaic[1].keys() == {"train_loss", "val_loss"}
    for key in plain[1]:
        assert torch.equal(plain[1][key], mosaic[1][key]), key
    assert plain[2] == mosaic[2] and plain[3] == mosaic[3]
    assert len(plain[4]) == len(mosaic[4]) == 10
    assert all(torch.equal(a, b) for a, b in zip(plain[4], mosaic[4], strict=True))
    strategy = mosaic[5].strategy
    assert not strategy.engine.attached, "teardown removes the hooks"
    assert strategy.graph is not None and strategy.graph.calls == {
        "vision": 1,
        "audio": 1,
        "projector": 1,
        "llm": 1,
    }


def test_validate_only_run_traces_a_validation_step():
    model = demo_model()
    t = trainer("mosaic", limit_val_batches=2)
    t.validate(model, demo_data(), verbose=False)
    assert t.strategy.graph is not None and t.strategy.graph.sinks == ["llm"]


def test_sanity_check_does_not_trace_while_fitting():
    t = trainer("mosaic", limit_val_batches=1, num_sanity_val_steps=1, max_steps=1)
    seen = []

    class Spy(L.Callback):
        def on_validation_batch_end(self, trainer, *args):
            seen.append(trainer.strategy.graph)

    t.callbacks.append(Spy())
    t.fit(demo_model(), demo_data())
    assert seen[0] is None, "the sanity check's validation step ran before the first training step"
    assert t.strategy.graph is not None


# ---------------------------------------------------------------- module selection through the Trainer


def test_explicit_modules_are_the_units():
    t = trainer(MosaicStrategy(modules=["vision", "llm"]), max_steps=2)
    t.fit(demo_model(), demo_data())
    assert t.strategy.graph.modules == ["vision", "llm"]
    # The projector is plain code between them: the tags cross it.
    assert t.strategy.graph.inputs["llm"] == ["vision"]


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (
            ["vision", "visoin"],
            r"unknown module 'visoin'.*Did you mean 'vision'\?.*'vision', 'audio', 'projector', 'llm'",
        ),
        (["vision", "llm.blocks.layerz"], r"unknown module 'llm.blocks.layerz'.*'llm.blocks.layers'"),
        (["llm", "llm.head"], r"lists 'llm' together with its own submodule 'llm.head'"),
    ],
)
def test_bad_module_names_fail_at_fit_with_candidates(modules, message):
    t = trainer(MosaicStrategy(modules=modules))
    with pytest.raises(ValueError, match=message):
        t.fit(demo_model(), demo_data())


def test_model_without_units_trains_as_plain_lightning(caplog):
    class Flat(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))

        def training_step(self, batch, batch_idx):
            return (self.weight * batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 3)), batch_size=2)
    with caplog.at_level("WARNING", logger="lightning_mosaic"):
        t = trainer("mosaic", max_steps=2)
        model = Flat()
        t.fit(model, data)
    assert torch.equal(model.weight.detach(), torch.full((3,), 0.6))
    assert t.strategy.graph is None and t.strategy.units == {}


# ---------------------------------------------------------------- checkpoints and resume


def test_state_dict_keys_and_checkpoint_match_plain_lightning(tmp_path):
    plain_model, mosaic_model = demo_model(), demo_model()
    trainer("auto", max_steps=2, default_root_dir=tmp_path / "plain", enable_checkpointing=True).fit(
        plain_model, demo_data()
    )
    [plain_checkpoint] = list((tmp_path / "plain").rglob("*.ckpt"))
    tmp_path = tmp_path / "mosaic"
    t = trainer("mosaic", max_steps=2, default_root_dir=tmp_path, enable_checkpointing=True)
    t.fit(mosaic_model, demo_data())
    assert list(plain_model.state_dict()) == list(mosaic_model.state_dict())
    assert not mosaic_model.vision._forward_pre_hooks, "the engine's hooks are removed after fit"
    [checkpoint] = list(tmp_path.rglob("*.ckpt"))
    loaded = DemoMultimodalModel.load_from_checkpoint(checkpoint)
    assert_bitwise_equal(parameters(loaded), parameters(mosaic_model))
    raw = torch.load(checkpoint, weights_only=False)
    assert list(raw["state_dict"]) == list(plain_model.state_dict())
    # nothing was profiled: the checkpoint is plain Lightning's, key for key (hook tests see no difference)
    plain_raw = torch.load(plain_checkpoint, weights_only=False)
    assert list(raw) == list(plain_raw) and "mosaic" not in raw
    assert list(raw["callbacks"]) == list(plain_raw["callbacks"])


@pytest.mark.parametrize(("first", "second"), [("mosaic", "mosaic"), ("mosaic", "auto"), ("auto", "mosaic")])
def test_resume_after_5_steps_equals_10_uninterrupted(tmp_path, first, second):
    """Checkpoints move freely between mosaic and plain Lightning, and resuming is exact."""
    data = lambda: demo_data(steps_per_epoch=5)  # noqa: E731
    _, straight = _fit_params(demo_model(), "auto", data(), max_steps=10)

    model = demo_model()
    saver = lambda: ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5)  # noqa: E731
    t = trainer(first, max_steps=5, callbacks=[saver()], enable_checkpointing=True)
    t.fit(model, data())
    path = tmp_path / "epoch=0-step=5.ckpt"

    resumed_model = demo_model(seed=123)  # different init: everything must come from the checkpoint
    t2 = trainer(second, max_steps=10, callbacks=[saver()], enable_checkpointing=True)
    t2.fit(resumed_model, data(), ckpt_path=path)
    assert t2.global_step == 10
    assert_bitwise_equal(straight, parameters(resumed_model))


def test_model_checkpoint_callback_under_mosaic(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, every_n_train_steps=3)
    t = trainer(
        "mosaic", callbacks=[callback], enable_checkpointing=True, limit_val_batches=1, val_check_interval=3
    )
    t.fit(demo_model(), demo_data())
    assert callback.best_model_path and len(list(tmp_path.glob("*.ckpt"))) == 2
    assert callback.best_model_score is not None


def test_plain_single_device_strategy_is_the_reference():
    """The comparisons above really compare against Lightning's single-device path."""
    assert isinstance(trainer("auto").strategy, SingleDeviceStrategy)


# ---------------------------------------------------------------- several processes (DDP underneath)


def _ranks(directory):
    return [torch.load(directory / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_cpu_processes_bitwise_equal_to_ddp(tmp_path):
    from helpers import RecordRank
    from lightning.pytorch.strategies import DDPStrategy

    (tmp_path / "ddp").mkdir()
    (tmp_path / "mosaic").mkdir()
    ddp_model, mosaic_model = demo_model(), demo_model()
    before = parameters(ddp_model)
    trainer(DDPStrategy(start_method="spawn"), devices=2, callbacks=[RecordRank(tmp_path / "ddp")]).fit(
        ddp_model, demo_data()
    )
    trainer(MosaicStrategy(start_method="spawn"), devices=2, callbacks=[RecordRank(tmp_path / "mosaic")]).fit(
        mosaic_model, demo_data()
    )
    assert_trained(before, ddp_model)
    assert_bitwise_equal(parameters(ddp_model), parameters(mosaic_model))
    ddp, mosaic = _ranks(tmp_path / "ddp"), _ranks(tmp_path / "mosaic")
    for rank in range(2):
        assert_bitwise_equal(ddp[rank]["params"], mosaic[rank]["params"])
    assert_bitwise_equal(mosaic[0]["params"], mosaic[1]["params"])
    assert mosaic[0]["graph"] == mosaic[1]["graph"] and mosaic[0]["graph"]["inputs"]["llm"] == ["projector"]


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from helpers import RecordRank, demo_data, demo_model, trainer
import lightning_mosaic

strategy, out = sys.argv[1], sys.argv[2]
trainer(strategy, devices=2, max_steps=4, callbacks=[RecordRank(out)]).fit(demo_model(), demo_data())
"""


def _script_runs(tmp_path, text):
    """Run ``text`` as a script with "ddp" then "mosaic" (two processes each): the ranks' records,
    each rank's parameters bitwise equal between the two."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "train.py"
    script.write_text(text.format(tests=str(Path(__file__).parent)))
    for name in ("ddp", "mosaic"):
        (tmp_path / name).mkdir()
        done = subprocess.run(
            [sys.executable, str(script), name, str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    ddp, mosaic = _ranks(tmp_path / "ddp"), _ranks(tmp_path / "mosaic")
    for rank in range(2):
        assert_bitwise_equal(ddp[rank]["params"], mosaic[rank]["params"])
    return ddp, mosaic


def test_mosaic_by_name_launches_processes_like_ddp(tmp_path):
    """``strategy="mosaic"`` with two devices re-runs the script per process, like ``strategy="ddp"``."""
    _, mosaic = _script_runs(tmp_path, SCRIPT)
    assert mosaic[0]["graph"] is not None and mosaic[0]["graph"] == mosaic[1]["graph"]


# ---------------------------------------------------------------- LightningCLI


@pytest.mark.parametrize(
    "strategy_args",
    [
        ["--trainer.strategy=mosaic"],
        [
            "--trainer.strategy=lightning_mosaic.MosaicStrategy",
            "--trainer.strategy.modules=[vision, audio, llm]",
        ],
    ],
    ids=["by-name", "by-class"],
)
def test_lightning_cli(tmp_path, strategy_args):
    from lightning.pytorch.cli import LightningCLI

    from lightning_mosaic.demo import DemoDataModule

    args = [
        "fit",
        "--model.size=tiny",
        "--data.size=tiny",
        "--data.batch_size=4",
        "--data.num_samples=16",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.max_steps=2",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}",
        *strategy_args,
    ]
    cli = LightningCLI(DemoMultimodalModel, DemoDataModule, args=args, save_config_kwargs={"overwrite": True})
    strategy = cli.trainer.strategy
    assert isinstance(strategy, MosaicStrategy)
    assert cli.trainer.global_step == 2
    expected = (
        ["vision", "audio", "projector", "llm"] if len(strategy_args) == 1 else ["vision", "audio", "llm"]
    )
    assert strategy.graph.modules == expected


def test_another_model_is_traced_again():
    t = trainer("mosaic", max_steps=1, limit_val_batches=1)
    t.fit(demo_model(), demo_data())
    first_graph = t.strategy.graph
    assert first_graph.modules == ["vision", "audio", "projector", "llm"]
    t.validate(demo_model(freeze_vision=True), demo_data(), verbose=False)
    assert t.strategy.graph.frozen == ["vision"], "a new model object: traced again"
    assert t.strategy.graph.inputs == first_graph.inputs and first_graph.frozen == []


# ---------------------------------------------------------------- engine backends and quotas


@pytest.mark.parametrize(
    "make", [(demo_model, demo_data), (hf_model, hf_loader)], ids=["two-encoder", "hugging-face"]
)
def test_recording_backend_trains_bitwise_equal_and_race_free(make):
    from helpers import long_lived

    from lightning_mosaic.engine import RecordingBackend, find_races

    model_fn, data_fn = make
    _, plain = _fit_params(model_fn(), "auto", data_fn())
    backend = RecordingBackend()
    model = model_fn()
    t = trainer(MosaicStrategy(backend=backend, plan="concurrent"), limit_val_batches=2, val_check_interval=5)
    with backend.recording():
        t.fit(model, data_fn())
    assert_bitwise_equal(plain, parameters(model))
    races = find_races(backend.log, long_lived(model))
    assert not races, "\n".join(r.describe(backend.log) for r in races[:5])
    assert all(type(v) is torch.Tensor for v in t.logged_metrics.values()), (
        "no pending tensor in logged values"
    )
    assert all(type(v) is torch.Tensor for v in model.state_dict().values())
    inline = trainer("mosaic", max_steps=1)
    inline.fit(model_fn(), data_fn())
    assert t.strategy.graph.inputs == inline.strategy.graph.inputs, "traced through pending outputs alike"
    plan = t.strategy.plan
    assert plan.method == "recording backend" and not plan.is_temporal
    assert plan.phases[0].modules == t.strategy.graph.levels()[0]


def test_a_unit_returning_the_loss_hands_lightning_a_plain_tensor():
    from lightning_mosaic.engine import RecordingBackend

    class LossFromUnit(TinyHFMultimodal):
        def training_step(self, batch, batch_idx):
            out = self(**batch)  # the llm unit returns a ModelOutput whose loss is pending
            self.returned_type = type(out.loss)
            return out.loss

    L.seed_everything(0)
    model = LossFromUnit()
    t = trainer(MosaicStrategy(backend=RecordingBackend(), plan="concurrent"), max_steps=2)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(type(outputs["loss"]))

    t.callbacks.append(Spy())
    t.fit(model, hf_loader())
    assert model.returned_type.__name__ == "PendingTensor", "inside the step the unit's output is pending"
    assert seen == [torch.Tensor, torch.Tensor], "what Lightning keeps after the step is plain"


def test_backend_and_quota_arguments_are_checked():
    with pytest.raises(
        ValueError, match=r"backend='fast' is not one of auto, green_context, streams, cpu, none"
    ):
        MosaicStrategy(backend="fast")
    with pytest.raises(ValueError, match=r"quota of 'vision' is 0 SMs"):
        MosaicStrategy(quotas={"vision": 0})
    with pytest.raises(TypeError, match=r"quota of 'llm' must be a whole number of SMs, got str: '84'"):
        MosaicStrategy(quotas={"llm": "84"})
    t = trainer(MosaicStrategy(quotas={"vision": 32, "text": 16}))
    with pytest.raises(
        ValueError, match=r"`quotas` names unknown modules \['text'\]; the modules are \['vision'"
    ):
        t.fit(demo_model(), demo_data())


def test_quotas_on_cpu_are_ignored_with_a_warning(caplog):
    from lightning_mosaic._logging import _said

    _said.discard("quotas-inline-none")
    with caplog.at_level("WARNING", logger="lightning_mosaic"):
        t = trainer(MosaicStrategy(quotas={"vision": 32}), max_steps=1)
        t.fit(demo_model(), demo_data())
    assert "SM quotas {'vision': 32} are ignored: backend 'none' runs the units inline on cpu" in caplog.text
    assert t.strategy.engine.backend.name == "none"


def test_the_plan_shows_the_quotas_granted():
    from lightning_mosaic.engine import RecordingBackend

    t = trainer(MosaicStrategy(backend=RecordingBackend(), quotas={"vision": 32, "audio": 16}), max_steps=1)
    t.fit(demo_model(), demo_data())
    assert t.strategy.plan.phases[0].quotas == {"vision": 32, "audio": 16}
    assert t.strategy.plan.phases[1].quotas == {"projector": None}
    assert "phase 0: vision (32), audio (16)" in t.strategy.plan.describe()


# ---------------------------------------------------------------- the closed loop: profile, plan, apply

AUTO = dict(backend="cpu", warmup_steps=2, profile_seconds=20)


def _auto_fit(tmp_path, max_steps=6, ckpt_path=None, callbacks=(), **options):
    from lightning.pytorch.loggers import CSVLogger

    strategy = MosaicStrategy(**{**AUTO, **options})
    t = trainer(
        strategy,
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path),
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks),
    )
    model = hf_model()
    t.fit(model, hf_loader(), ckpt_path=ckpt_path)
    return t, strategy, model


def test_auto_pipeline_profiles_plans_applies_and_saves(tmp_path, caplog):
    import logging
    from pathlib import Path

    from lightning_mosaic.plan import Plan
    from lightning_mosaic.profile import Profile

    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        t, strategy, _ = _auto_fit(tmp_path)
    session = strategy.session
    assert strategy.planned and session.profile is not None and not session.reused
    plan = strategy.plan
    # Exactly what the planner makes of the profile this run measured, on this device, unless the
    # model fitted to it is too wrong on the critical path (tiny CPU timings can be that noisy).
    model, device = PerfModel(held_out=True).fit(session.profile), DeviceSpec.from_current("cpu")
    if too_wrong(model, session.graph, session.profile.batch_size):
        assert plan.sequential and plan.notes[0].startswith("the performance model is too wrong")
    else:
        expected = planner.plan(session.graph, model, device, session.profile.batch_size)
        assert plan == expected and plan.predicted_step_s is not None
    assert set(plan.modules) == set(strategy.units)
    directory = Path(t.log_dir)
    assert Plan.load(directory / "mosaic_plan.json") == plan
    assert Profile.load(directory / "mosaic_profile.json") == session.profile
    assert (directory / "mosaic_plan.png").stat().st_size > 0
    described = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Plan for ")]
    assert len(described) == 1, "logged once"
    assert described[0].startswith(plan.describe() + "\n" + strategy.engine.backend.describe())
    # 2 plain steps, the profiled one, then the plan runs the other 3 (the profiler's replays uncounted).
    assert strategy.engine.calls["llm"] == 3 * strategy.active_micro_batches


def test_a_resumed_run_applies_the_checkpointed_plan_without_profiling(tmp_path, monkeypatch):
    import lightning_mosaic.session.profiling as profiling_module

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4)
    _, first, _ = _auto_fit(tmp_path, callbacks=[saver])
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    state = torch.load(checkpoint, weights_only=False)["mosaic"]
    assert state["plan"] == first.plan.to_dict() and state["profile"] == first.session.profile.to_dict()

    def never(*args, **kwargs):
        raise AssertionError("profiled again")

    monkeypatch.setattr(profiling_module, "profile_units", never)
    (tmp_path / "mosaic_profile.json").unlink()  # nothing to reuse but the checkpoint
    t, resumed, _ = _auto_fit(tmp_path / "again", max_steps=8, ckpt_path=checkpoint)
    assert t.global_step == 8 and resumed.planned and resumed.plan == first.plan
    assert resumed.session.stage is Stage.OFF, "nothing left to profile"
    from pathlib import Path

    from lightning_mosaic.plan import Plan
    from lightning_mosaic.profile import Profile

    # the resumed run's own log directory holds the plan it applies and the profile it came from
    assert Plan.load(Path(t.log_dir) / "mosaic_plan.json") == resumed.plan
    assert Profile.load(Path(t.log_dir) / "mosaic_profile.json") == first.session.profile


def test_a_matching_profile_is_reused_and_planned_after_the_timed_warmup(tmp_path, monkeypatch):
    import lightning_mosaic.session.profiling as profiling_module

    _, first, _ = _auto_fit(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("profiled again")

    monkeypatch.setattr(profiling_module, "profile_units", never)
    _, second, _ = _auto_fit(tmp_path, max_steps=3)
    assert second.session.reused and second.planned
    assert second.plan.phases == first.plan.phases
    # The 2 warmup steps run plain (the guard's temporal times), the plan runs the third.
    assert second.engine.calls["llm"] == 1 * second.active_micro_batches


def test_a_plan_file_or_object_is_applied_from_the_first_step(tmp_path):
    from lightning_mosaic.plan import Phase, Plan

    units = ["vision", "audio", "vision_proj", "audio_proj", "llm"]
    plan = Plan([Phase({u: None}) for u in units], micro_batches=2, method="user", device="cpu")
    plan.save(tmp_path / "plan.json")
    t = trainer(MosaicStrategy(plan=str(tmp_path / "plan.json")), max_steps=2)
    t.fit(hf_model(), hf_loader())
    assert t.strategy.plan == plan and t.strategy.engine.calls["llm"] == 4
    wrong = Plan([Phase({"vision": None})], device="cpu")
    with pytest.raises(ValueError, match=r"plan is for modules \['vision'\] but the strategy's units are"):
        trainer(MosaicStrategy(plan=wrong), max_steps=1).fit(hf_model(), hf_loader())


def test_auto_on_an_inline_backend_does_not_profile_and_says_why(tmp_path):
    t = trainer(MosaicStrategy(), max_steps=2, default_root_dir=tmp_path)
    t.fit(hf_model(), hf_loader())
    assert t.strategy.session.stage is Stage.OFF and t.strategy.plan.is_temporal
    assert "units run inline on cpu" in t.strategy.plan.notes[0]
    assert not (tmp_path / "mosaic_profile.json").exists()


def test_two_cpu_processes_share_rank_zeros_plan(tmp_path):
    from helpers import RecordRank

    (tmp_path / "ranks").mkdir()
    strategy = MosaicStrategy(start_method="spawn", micro_batches=2, **AUTO)
    model = hf_model()
    t = trainer(
        strategy,
        devices=2,
        max_steps=5,
        default_root_dir=tmp_path,
        callbacks=[RecordRank(tmp_path / "ranks")],
    )
    t.fit(model, hf_loader())
    ranks = _ranks(tmp_path / "ranks")
    assert ranks[0]["plan"] is not None and ranks[0]["plan"] == ranks[1]["plan"]
    assert ranks[0]["plan"]["micro_batches"] == 2
    assert_bitwise_equal(ranks[0]["params"], ranks[1]["params"])
    assert (tmp_path / "mosaic_profile.json").exists()  # rank 0 profiled and saved


def test_units_with_side_effects_run_alone_race_free_and_said(caplog):
    import logging

    from helpers import long_lived
    from test_engine import SideEffects

    from lightning_mosaic.engine import RecordingBackend, find_races

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = SideEffects()

        def training_step(self, batch, batch_idx):
            return self.net(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def data():
        g = torch.Generator().manual_seed(0)
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.randn(16, 8, generator=g)), batch_size=4
        )

    plain = Module()
    trainer("auto", max_steps=3).fit(plain, data())
    backend, model = RecordingBackend(), Module()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"), backend.recording():
        t = trainer(MosaicStrategy(plan="concurrent", backend=backend), max_steps=3)
        t.fit(model, data())
    assert_bitwise_equal(parameters(plain), parameters(model))
    assert find_races(backend.log, long_lived(model)) == []
    assert set(t.strategy.graph.effects) == {"net.scale", "net.cache"}
    assert [p.modules for p in t.strategy.plan.phases] == [["net.scale"], ["net.cache"], ["net.head"]]
    assert "unit net.scale changes its input of shape (4, 8) in place" in caplog.text


# ---------------------------------------------------------------- copies of the module during fit


def test_copies_of_the_module_during_fit_are_plain_modules():
    """Weight averaging deep-copies the module and ``torch.save(module)`` pickles it while the engine
    is attached: the copies work and run plainly, outside this run's engine."""
    import copy
    import io

    from lightning_mosaic.engine import RecordingBackend
    from lightning_mosaic.engine.pending import PendingTensor

    seen = {}

    class CopyDuringFit(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step != 2:
                return
            engine = trainer.strategy.engine
            assert engine.attached and engine.backend.concurrent
            calls = dict(engine.calls)
            twin = copy.deepcopy(pl_module)
            buffer = io.BytesIO()
            torch.save(pl_module, buffer)
            buffer.seek(0)
            loaded = torch.load(buffer, weights_only=False)
            callbacks = copy.deepcopy(trainer.callbacks)
            x = batch["pixels"]
            with torch.no_grad(), engine.paused():
                expected = pl_module.vision(x)
            with torch.no_grad():
                seen["outputs"] = [twin.vision(x), loaded.vision(x)]
            seen["expected"], seen["callbacks"] = expected, callbacks
            seen["calls"] = (calls, dict(engine.calls))

    t = trainer(
        MosaicStrategy(backend=RecordingBackend(), quotas={"vision": 32, "audio": 16}),
        max_steps=3,
        callbacks=[CopyDuringFit()],
    )
    t.fit(demo_model(), demo_data())
    assert t.global_step == 3
    for output in seen["outputs"]:
        assert type(output) is torch.Tensor and type(output) is not PendingTensor
        assert torch.equal(output, seen["expected"])
    before, after = seen["calls"]
    assert before == after, "the copies' calls went through this run's engine"
    assert len(seen["callbacks"]) == len(t.callbacks)


def test_weight_averaging_trains_bitwise_equal_to_plain_lightning(tmp_path):
    from lightning.pytorch.callbacks import WeightAveraging

    def averaged(strategy):
        averaging = WeightAveraging()
        model = hf_model()
        t = trainer(strategy, max_steps=6, callbacks=[averaging], default_root_dir=tmp_path)
        t.fit(model, hf_loader())
        return parameters(model)

    plain = averaged("auto")
    ours = averaged(MosaicStrategy(backend="cpu", warmup_steps=2, profile_seconds=20))
    assert_bitwise_equal(plain, ours)


def test_one_device_under_a_cluster_environment_is_rank_0_of_1(monkeypatch, tmp_path):
    """Task 1 of a 2-task SLURM job that trains on one device: plain Lightning trains as rank 0 of 1."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for name, value in dict(
        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_PROCID="1", SLURM_LOCALID="1", SLURM_NODEID="0",
        SLURM_JOB_NAME="train", SLURM_JOB_ID="7", SLURM_NODELIST="node1",
    ).items():  # fmt: skip
        monkeypatch.setenv(name, value)
    from lightning.pytorch.utilities import rank_zero_only

    plain = demo_model()
    trainer("auto", max_steps=2).fit(plain, demo_data())
    plain_rank = rank_zero_only.rank
    model = demo_model()
    t = trainer("mosaic", max_steps=2, default_root_dir=tmp_path, enable_checkpointing=True)
    assert rank_zero_only.rank == plain_rank, "the ranks of rank_zero_only are plain Lightning's"
    assert isinstance(t.strategy.cluster_environment, SLURMEnvironment)
    t.fit(model, demo_data())
    assert (t.global_rank, t.local_rank, t.node_rank, t.world_size) == (0, 0, 0, 1) and t.is_global_zero
    assert t.global_step == 2 and list(tmp_path.rglob("*.ckpt"))
    assert_bitwise_equal(parameters(plain), parameters(model))


def test_the_log_says_why_a_chosen_backend_is_not_used(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        trainer(MosaicStrategy(backend="cpu", plan="temporal"), max_steps=1).fit(demo_model(), demo_data())
    assert "engine backend: none (inline" in caplog.text
    assert "the plan runs each unit alone: backend='cpu' has nothing to run side by side" in caplog.text
    assert "are ignored" not in caplog.text


# ---------------------------------------------------------------- CUDA graphs (emulated on the CPU)


@pytest.fixture
def emulated_graphs(monkeypatch):
    """Sessions capture with EmulatedCapture: static memory as a GPU's, replays run eagerly."""
    from lightning_mosaic import session as session_module
    from lightning_mosaic.engine.graphs import EmulatedCapture

    capture = EmulatedCapture()
    monkeypatch.setattr(session_module, "capture_for", lambda device: capture)
    return capture


@pytest.mark.parametrize(
    ("make", "data", "options"),
    [
        (demo_model, demo_data, dict(plan="temporal")),
        (demo_model, demo_data, dict(plan="temporal", micro_batches=2)),
        (hf_model, hf_loader, dict(plan="temporal")),
        (demo_model, demo_data, dict(plan="concurrent", backend=RecordingBackend)),
        (demo_model, demo_data, dict(plan="concurrent", backend=RecordingBackend, micro_batches=2)),
    ],
    ids=["demo", "demo-micro-batches", "hugging-face", "demo-concurrent", "demo-concurrent-micro-batches"],
)
def test_graphed_units_train_bitwise_like_plain_lightning(emulated_graphs, make, data, options):
    from contextlib import nullcontext

    from helpers import long_lived

    from lightning_mosaic.engine import find_races

    options = dict(options)
    recording = options.get("backend") is RecordingBackend
    if recording:
        options["backend"] = RecordingBackend(keep_alive=True)
    micro = options.get("micro_batches")
    plain = make()
    reference = MosaicStrategy(plan="temporal", graphs=False, micro_batches=micro) if micro else "auto"
    trainer(reference, accumulate_grad_batches=2).fit(plain, data())
    graphed = make()
    t = trainer(MosaicStrategy(graphs=True, **options), accumulate_grad_batches=2)
    with options["backend"].recording() if recording else nullcontext():
        t.fit(graphed, data())
    assert_bitwise_equal(parameters(plain), parameters(graphed))
    if recording:  # the replays' copies in and out, on the units' streams, are ordered like their work
        log = options["backend"].log
        assert any(e.kind == "launch" and e.stream == "audio" for e in log), "the units' work was recorded"
        races = find_races(log, long_lived(graphed))
        assert not races, races[:3]
    assert set(t.strategy.plan.graphs) == set(t.strategy.units) - set(t.strategy.graph.effects)
    replays = sum(g.replays for g in emulated_graphs.graphs)
    assert replays >= 10 * len(t.strategy.plan.graphs), "every training step replayed the graphs"


def test_graphs_false_or_no_cuda_leave_every_unit_eager(emulated_graphs, monkeypatch, caplog):
    from lightning_mosaic import session as session_module

    given = Plan(
        phases=({"vision": None}, {"audio": None}, {"projector": None}, {"llm": None}), graphs=("audio",)
    )
    t = trainer(MosaicStrategy(plan=given, graphs=False), max_steps=2)
    t.fit(demo_model(), demo_data())
    assert t.strategy.plan.graphs == () and "graphs=False: ['audio'] run eagerly" in t.strategy.plan.notes
    assert not emulated_graphs.graphs
    monkeypatch.setattr(session_module, "capture_for", lambda device: None)
    t = trainer(MosaicStrategy(plan="temporal", graphs=True), max_steps=2)
    t.fit(demo_model(), demo_data())
    assert t.strategy.plan.graphs == ()
    assert (
        "graphs=True: CUDA graphs need a CUDA device; the units run eagerly on cpu" in t.strategy.plan.notes
    )
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        t = trainer(MosaicStrategy(plan=given), max_steps=2)
        t.fit(demo_model(), demo_data())
    assert (
        "the plan graphs ['audio'], but CUDA graphs need a CUDA device: they run eagerly on cpu"
        in caplog.text
    )
    with pytest.raises(ValueError, match=r"graphs='on' is not one of 'auto'"):
        MosaicStrategy(graphs="on")


GRAPHS_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from helpers import RecordRank, demo_data, demo_model, trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning_mosaic import MosaicStrategy, session
from lightning_mosaic.engine.graphs import EmulatedCapture

session.capture_for = lambda device: EmulatedCapture()
name, out = sys.argv[1], sys.argv[2]
strategy = DDPStrategy() if name == "ddp" else MosaicStrategy(plan="temporal", graphs=True)
trainer(strategy, devices=2, max_steps=4, accumulate_grad_batches=2, callbacks=[RecordRank(out)]).fit(
    demo_model(), demo_data()
)
"""


def test_graphed_units_under_ddp_bitwise_equal_to_ddp(tmp_path):
    """DDP's reducer hooks the graphed parameters: every gradient arrives once, all-reduced."""
    _, mosaic = _script_runs(tmp_path, GRAPHS_SCRIPT)
    assert mosaic[0]["plan"]["graphs"] == ["vision", "audio", "projector", "llm"]
