"""Frozen units one step ahead: same numbers as plain Lightning, served from the prefetch, refused loudly."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from helpers import TinyHFMultimodal, assert_bitwise_equal, hf_loader, hf_model, parameters, trainer
from torch import nn

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.plan import Phase, Plan

UNITS = ["vision", "audio", "vision_proj", "audio_proj", "llm"]


def lookahead_plan(**kwargs) -> Plan:
    phases = [Phase({"vision": None, "audio": None}), Phase({"vision_proj": None, "audio_proj": None})]
    return Plan([*phases, Phase({"llm": None})], method="user", device="cpu", lookahead=["vision"], **kwargs)


def test_a_frozen_encoder_one_step_ahead_trains_bitwise_like_plain_lightning():
    _, plain = _fit("auto", hf_model())
    t, ahead = _fit(MosaicStrategy(plan=lookahead_plan()), hf_model())
    assert_bitwise_equal(plain, ahead)
    lookahead = t.strategy.lookahead
    # Step 0 learns where the inputs come from, step 1 prefetches for step 2, ..., step 8 for step 9.
    assert lookahead.prefetched == 8 and lookahead.hits == 8
    assert t.strategy.engine.calls["vision"] == 10  # every call still goes through the engine


def test_epochs_end_where_they_did_and_validation_is_untouched():
    def run(strategy):
        model = hf_model()
        t = trainer(strategy, max_steps=-1, max_epochs=2, limit_val_batches=2, val_check_interval=4)
        t.fit(model, hf_loader(num_samples=28), hf_loader(num_samples=8))
        return t, parameters(model)

    plain_t, plain = run("auto")
    t, ahead = run(MosaicStrategy(plan=lookahead_plan()))
    assert t.global_step == plain_t.global_step == 14 and t.current_epoch == plain_t.current_epoch
    assert_bitwise_equal(plain, ahead)
    assert t.callback_metrics["val_loss"] == plain_t.callback_metrics["val_loss"]
    # 7 batches an epoch: steps 2..6 of the first (step 0 learns the inputs), 1..6 of the second.
    assert t.strategy.lookahead.hits == 5 + 6


def test_with_the_recording_backend_the_prefetch_runs_on_the_units_stream_race_free():
    from helpers import long_lived

    from lightning_mosaic.engine import RecordingBackend, find_races

    backend = RecordingBackend()
    model = hf_model()
    t = trainer(MosaicStrategy(plan=lookahead_plan(), backend=backend), max_steps=4)
    with backend.recording():
        t.fit(model, hf_loader())
    assert t.strategy.lookahead.hits == 2
    assert find_races(backend.log, long_lived(model)) == []
    _, plain = _fit("auto", hf_model(), max_steps=4)
    assert_bitwise_equal(plain, parameters(model))


def test_inputs_that_are_not_batch_tensors_are_refused_with_the_reason(caplog):
    class Scaled(TinyHFMultimodal):
        def training_step(self, batch, batch_idx):
            batch = {**batch, "pixel_values": batch["pixel_values"] * 1.0}
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        t, _ = _fit(MosaicStrategy(plan=lookahead_plan()), Scaled(), max_steps=3)
    assert t.strategy.lookahead.hits == 0
    assert any("vision is not computed one step ahead: its input" in r.getMessage() for r in caplog.records)


def test_a_transfer_hook_turns_lookahead_off(caplog):
    class Hooked(TinyHFMultimodal):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch

    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        t, _ = _fit(MosaicStrategy(plan=lookahead_plan()), Hooked(), max_steps=3)
    assert t.strategy.lookahead.prefetched == 0
    assert any("Hooked.on_after_batch_transfer is overridden" in r.getMessage() for r in caplog.records)


def test_a_datamodule_transfer_hook_turns_lookahead_off_too(caplog):
    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return hf_loader()

        def on_before_batch_transfer(self, batch, dataloader_idx):
            return {**batch, "pixel_values": batch["pixel_values"].flip(0)}

    def run(strategy):
        torch.manual_seed(0)
        model = hf_model()
        t = trainer(strategy, max_steps=4)
        t.fit(model, datamodule=Data())
        return t, parameters(model)

    _, plain = run("auto")
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        t, ahead = run(MosaicStrategy(plan=lookahead_plan()))
    assert_bitwise_equal(plain, ahead)
    assert t.strategy.lookahead.prefetched == 0
    assert any("Data.on_before_batch_transfer is overridden" in r.getMessage() for r in caplog.records)


def test_plan_checks_its_lookahead():
    with pytest.raises(ValueError, match=r"lookahead names \['text'\], which are in no phase"):
        Plan([Phase({"vision": None})], lookahead=["text"])
    with pytest.raises(ValueError, match="needs whole batches, not 2 micro-batches"):
        Plan([Phase({"vision": None})], lookahead=["vision"], micro_batches=2)
    plan = lookahead_plan()
    assert Plan.from_json(plan.to_json()) == plan and "one step ahead" in plan.describe()


def test_a_hand_written_plan_cannot_compute_a_trainable_unit_ahead():
    model = hf_model(freeze_vision=False)
    with pytest.raises(
        ValueError, match=r"lookahead \['vision'\]: this unit has parameters with requires_grad=True"
    ):
        trainer(MosaicStrategy(plan=lookahead_plan()), max_steps=2).fit(model, hf_loader())


class Unfreeze(L.Callback):
    """Unfreezes the vision encoder before step ``at`` (as a fine-tuning schedule does)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            pl_module.vision.requires_grad_(True)
            trainer.optimizers[0].add_param_group({"params": list(pl_module.vision.parameters())})


def test_a_unit_unfrozen_during_training_is_no_longer_computed_ahead(caplog):
    _, plain = _fit("auto", hf_model(), callbacks=[Unfreeze(at=4)])
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        t, ahead = _fit(MosaicStrategy(plan=lookahead_plan()), hf_model(), callbacks=[Unfreeze(at=4)])
    assert_bitwise_equal(plain, ahead)
    assert t.strategy.lookahead.hits == 2, "served at steps 2 and 3, then vision trains"
    assert any(
        "vision is not computed one step ahead: its parameters require grad now" in r.getMessage()
        for r in caplog.records
    )


class EMATeacher(TinyHFMultimodal):
    """The frozen vision encoder is an EMA of a trainable copy, updated in place after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Parameter(torch.ones(32))  # on the LightningModule itself: not a unit

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            weight = next(self.vision.parameters())  # the class embedding: in every output
            weight.mul_(0.9).add_(self.student, alpha=0.1)

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + self.student.square().sum()


def test_a_frozen_unit_changed_between_steps_is_served_fresh(caplog):
    torch.manual_seed(0)
    _, plain = _fit("auto", EMATeacher())
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        t, ahead = _fit(MosaicStrategy(plan=lookahead_plan()), EMATeacher())
    assert_bitwise_equal(plain, ahead)
    # Prefetched at steps 1 (for step 2) and 2 (for step 3), before step 2's call found the change.
    assert t.strategy.lookahead.prefetched == 2 and t.strategy.lookahead.hits == 0
    assert any(
        "parameters or buffers changed since the previous step" in r.getMessage() for r in caplog.records
    )


def _fit(strategy, model, max_steps=10, callbacks=()):
    t = trainer(strategy, max_steps=max_steps, callbacks=list(callbacks))
    t.fit(model, hf_loader())
    return t, parameters(model)
