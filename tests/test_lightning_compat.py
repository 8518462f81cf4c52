"""Lightning's own behaviour with the strategy swapped: each scenario runs under plain Lightning and
under mosaic, and everything a user's code can observe must match — every hook called (module,
callback, data hooks), in order, with the global step; the keys of the checkpoint the
``on_save_checkpoint`` hooks see; logged metrics; predictions; parameters, bitwise.

A CI-sized selection of the areas Lightning's test suite covers: hooks, loops (validation inside an
epoch, several epochs, gradient accumulation and clipping, manual optimization, ``fast_dev_run``,
``overfit_batches``), checkpointing and restore, logging, callbacks, the evaluation entry points,
mixed precision and exceptions. Mosaic runs both as the default strategy and with the engine
routing units side by side (the recording backend).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import assert_bitwise_equal, parameters
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, WeightAveraging
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.engine import RecordingBackend

CALLBACK_HOOKS = sorted(
    name for name in dir(L.Callback) if name.startswith("on_") or name in ("setup", "teardown", "state_dict")
)
MODULE_HOOKS = sorted(
    {name for name in dir(L.LightningModule) if name.startswith("on_")}
    | {"setup", "teardown", "configure_optimizers", "configure_model", "configure_gradient_clipping"}
    | {"training_step", "validation_step", "test_step", "predict_step", "backward", "optimizer_step"}
    | {"optimizer_zero_grad", "lr_scheduler_step", "transfer_batch_to_device", "prepare_data"}
    | {"train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"}
)


def _describe(prefix: str, name: str, args: tuple, trainer: Any) -> tuple:
    """What a test of hooks sees of a call: its name, the step, and the checkpoint's keys."""
    step = trainer.global_step if trainer is not None else None
    if name in ("on_save_checkpoint", "on_load_checkpoint"):
        checkpoint = next(a for a in args if isinstance(a, dict))
        return (prefix + name, step, tuple(checkpoint))
    return (prefix + name, step)


def _recording(cls: type, hooks: list[str], prefix: str) -> type:
    """``cls`` with every hook in ``hooks`` appending ``(prefix + name, step, ...)`` to ``self.calls``."""

    def wrap(name: str) -> Any:
        original = getattr(cls, name)

        @functools.wraps(original)
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            trainer = args[0] if prefix == "callback." and args else getattr(self, "_trainer", None)
            self.calls.append(_describe(prefix, name, args, trainer))
            return original(self, *args, **kwargs)

        return hook

    return type(f"Recording{cls.__name__}", (cls,), {name: wrap(name) for name in hooks})


class TwoTowers(BoringModel):
    """BoringModel with two encoders read by its head, logging what it trains on."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.left = nn.Linear(32, 8)
        self.right = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 8))
        self.layer = nn.Linear(16, 2)
        self.calls: list[tuple] = []
        self.automatic_optimization = not manual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.cat([self.left(x), self.right(x)], dim=-1))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.automatic_optimization:
            loss = self.step(batch)
            self.log("train_loss", loss)
            return loss
        first, second = self.optimizers()
        for optimizer in (first, second):
            loss = self.step(batch)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self.log("train_loss", loss)
        return None

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("test_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        if self.automatic_optimization:
            return super().configure_optimizers()
        return torch.optim.SGD(self.left.parameters(), lr=0.1), torch.optim.Adam(self.parameters(), lr=0.01)

    def _loader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 32), batch_size=4)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


RecordingTwoTowers = _recording(TwoTowers, MODULE_HOOKS, "module.")


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []


RecordingRecorder = _recording(Recorder, CALLBACK_HOOKS, "callback.")


class FailAt(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            raise RuntimeError("failed at step 3")


class CopyModule(L.Callback):
    """Copies and pickles the module mid-fit (as weight averaging and model snapshots do)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            torch.save(copy.deepcopy(pl_module), Path(trainer.default_root_dir) / "module.pt")


SCENARIOS: dict[str, dict[str, Any]] = {
    "fit with validation, checkpoints and early stopping": dict(
        trainer=dict(max_epochs=2, val_check_interval=4, limit_val_batches=2, log_every_n_steps=2),
        callbacks=lambda d: [
            ModelCheckpoint(dirpath=d / "ckpt", every_n_train_steps=3, save_top_k=-1),
            EarlyStopping(monitor="val_loss", patience=5),
            LearningRateMonitor(),
        ],
    ),
    "gradient accumulation and clipping": dict(
        trainer=dict(max_steps=4, accumulate_grad_batches=2, gradient_clip_val=0.05, limit_val_batches=0)
    ),
    "manual optimization with two optimizers": dict(
        model=dict(manual=True), trainer=dict(max_steps=6, limit_val_batches=1)
    ),
    "fast_dev_run": dict(trainer=dict(fast_dev_run=2)),
    "overfit_batches": dict(trainer=dict(overfit_batches=2, max_epochs=3, limit_val_batches=0)),
    "bf16-mixed precision": dict(trainer=dict(max_steps=4, precision="bf16-mixed", limit_val_batches=1)),
    "then validate, test and predict": dict(trainer=dict(max_steps=3, limit_val_batches=1), after=True),
    "weight averaging and a module copied mid-fit": dict(
        trainer=dict(max_steps=6, limit_val_batches=1), callbacks=lambda d: [WeightAveraging(), CopyModule()]
    ),
    "an exception in a callback": dict(
        trainer=dict(max_steps=6, limit_val_batches=0), callbacks=lambda d: [FailAt()], raises=True
    ),
}

STRATEGIES = {
    "mosaic": lambda: "mosaic",
    "mosaic side by side": lambda: MosaicStrategy(backend=RecordingBackend(), plan="concurrent"),
}


def _run(strategy: Any, scenario: dict[str, Any], directory: Path, ckpt_path: Path | None = None) -> dict:
    L.seed_everything(0, verbose=False)
    model = RecordingTwoTowers(**scenario.get("model", {}))
    recorder = RecordingRecorder()
    callbacks = [recorder, *scenario.get("callbacks", lambda d: [])(directory)]
    options = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=directory,
        logger=CSVLogger(directory, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t = L.Trainer(strategy=strategy, callbacks=callbacks, **{**options, **scenario.get("trainer", {})})
    if scenario.get("raises"):
        with pytest.raises(RuntimeError, match="failed at step 3"):
            t.fit(model, ckpt_path=ckpt_path)
    else:
        t.fit(model, ckpt_path=ckpt_path)
    out: dict[str, Any] = {}
    if scenario.get("after"):
        out["validate"] = t.validate(model, verbose=False)
        out["test"] = t.test(model, verbose=False)
        out["predict"] = t.predict(model)
    metrics = sorted(Path(directory).rglob("metrics.csv"))
    return dict(
        out,
        calls=model.calls + recorder.calls,
        module_calls=model.calls,
        callback_calls=recorder.calls,
        parameters=parameters(model),
        logged={k: v.item() for k, v in t.logged_metrics.items()},
        metrics=[m.read_text() for m in metrics],
        checkpoints={
            p.name: list(torch.load(p, weights_only=False)) for p in sorted(Path(directory).rglob("*.ckpt"))
        },
        hooked=[name for name, m in model.named_modules() if m._forward_pre_hooks or m._forward_hooks],
        step=t.global_step,
    )


def _assert_same(plain: dict, ours: dict) -> None:
    assert ours["module_calls"] == plain["module_calls"]
    assert ours["callback_calls"] == plain["callback_calls"]
    assert ours["step"] == plain["step"] and ours["checkpoints"] == plain["checkpoints"]
    assert ours["logged"] == plain["logged"] and ours["metrics"] == plain["metrics"]
    assert_bitwise_equal(plain["parameters"], ours["parameters"])
    assert ours["hooked"] == [], "the engine's hooks outlive fit"
    for key in ("validate", "test"):
        assert ours.get(key) == plain.get(key)
    for a, b in zip(plain.get("predict") or [], ours.get("predict") or [], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_lightning_behaviour_is_unchanged(tmp_path, scenario, strategy):
    plain = _run("auto", SCENARIOS[scenario], tmp_path / "plain")
    ours = _run(STRATEGIES[strategy](), SCENARIOS[scenario], tmp_path / "mosaic")
    assert plain["step"] > 0 and plain["calls"]
    _assert_same(plain, ours)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_restored_run_calls_the_same_hooks_and_ends_equal(tmp_path, strategy):
    first = dict(
        trainer=dict(max_steps=3, limit_val_batches=0),
        callbacks=lambda d: [ModelCheckpoint(dirpath=d / "ckpt", every_n_train_steps=3)],
    )
    _run("auto", first, tmp_path / "first")
    [checkpoint] = (tmp_path / "first" / "ckpt").glob("*.ckpt")
    again = dict(trainer=dict(max_steps=7, limit_val_batches=0))
    plain = _run("auto", again, tmp_path / "plain", ckpt_path=checkpoint)
    ours = _run(STRATEGIES[strategy](), again, tmp_path / "mosaic", ckpt_path=checkpoint)
    assert plain["step"] == 7 and any(call[0] == "module.on_load_checkpoint" for call in plain["calls"])
    _assert_same(plain, ours)


# ---------------------------------------------------------------- one device is one device


class _Tunable(BoringModel):
    """A BoringModel whose loaders read ``batch_size`` (what the batch-size tuner scales) and ``lr``."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size, self.lr = 2, 0.1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64), batch_size=self.batch_size)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _one_device(strategy: Any, root: Path, **options: Any) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
    )  # fmt: skip
    return L.Trainer(strategy=strategy, **(defaults | options))


@pytest.mark.parametrize("strategy", ["mosaic", "mosaic_spawn", MosaicStrategy(backend="cpu")])
def test_on_one_device_lightning_sees_single_device_training(strategy, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    t = _one_device(strategy, tmp_path)
    assert isinstance(t.strategy, MosaicStrategy) and isinstance(t.strategy, SingleDeviceStrategy)
    assert not isinstance(t.strategy, DDPStrategy) and not t._accelerator_connector.is_distributed
    assert type(t.strategy).__name__ == "MosaicStrategy", "Lightning's messages name the user's class"
    t.strategy.world_size = 2  # settable, as on SingleDeviceStrategy (tests mock a world this way)
    assert t.strategy.world_size == 2


def test_the_batch_size_and_learning_rate_tuners_work_on_one_device(tmp_path):
    from lightning.pytorch.tuner import Tuner

    results = {}
    for strategy in ("auto", "mosaic"):
        model = _Tunable()
        tuner = Tuner(_one_device(strategy, tmp_path / str(strategy)))
        found = tuner.scale_batch_size(model, mode="power", max_trials=3, steps_per_trial=2)
        finder = tuner.lr_find(model, num_training=8, min_lr=1e-4, max_lr=1.0)
        results[strategy] = (found, len(finder.results["lr"]))
    assert results["mosaic"] == results["auto"] and results["auto"][0] > 2


def test_prediction_writers_and_batch_samplers_behave_as_on_one_device(tmp_path):
    from lightning.pytorch.callbacks import BasePredictionWriter

    class Writer(BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(write_interval="batch_and_epoch")
            self.batches, self.epochs = [], 0

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, *args: Any) -> None:
            self.batches.append(list(batch_indices))

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
            self.epochs += 1

    class Sampler(torch.utils.data.SequentialSampler):
        epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    seen = {}
    for strategy in ("auto", "mosaic"):
        writer, Sampler.epochs = Writer(), []
        dataset = RandomDataset(32, 8)
        loader = DataLoader(dataset, sampler=Sampler(dataset), batch_size=4)
        t = _one_device(strategy, tmp_path, callbacks=[writer])
        t.fit_loop.epoch_progress.current.processed = 2
        out = t.predict(BoringModel(), loader)
        seen[strategy] = (writer.batches, writer.epochs, list(Sampler.epochs), [o.shape for o in out])
        assert type(t.predict_dataloaders.batch_sampler.sampler) is Sampler, "not a distributed sampler"
    assert seen["mosaic"] == seen["auto"] and seen["auto"][0] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert seen["auto"][2] == [2], "the sampler's set_epoch is called with the epoch"


def test_deep_copies_of_the_callbacks_during_fit_work(tmp_path):
    class Copies(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.copies = copy.deepcopy(trainer.callbacks)  # reaches the trainer, its strategy and engine

    copies = Copies()
    t = _one_device(MosaicStrategy(backend="cpu", plan="temporal"), tmp_path, callbacks=[copies])
    t.fit(_Tunable())
    assert len(copies.copies) == len(t.callbacks) and t.strategy.engine.calls["layer"] > 0


class Mine(MosaicStrategy):
    """A user's subclass (module level, so that it pickles)."""


def test_a_subclass_of_the_strategy_keeps_its_class_and_pickles(tmp_path):
    import pickle

    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    strategy = Mine(backend="cpu")
    assert isinstance(strategy, DDPStrategy), "made as a DDP strategy until the devices are known"
    t = _one_device(strategy, tmp_path)
    assert isinstance(t.strategy, Mine) and isinstance(t.strategy, SingleDeviceStrategy)
    copied = pickle.loads(pickle.dumps(t.strategy))
    assert type(copied) is type(t.strategy) and copied.config == t.strategy.config
