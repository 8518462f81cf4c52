"""Micro-batched training steps through real Trainers: same parameters and logs as the unsplit step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import TinyHFMultimodal, hf_loader, hf_model, parameters, trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, default_collate

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.plan import Phase, Plan


class LoggedLoss(Callback):
    """The step-level ``train_loss`` Lightning recorded after every step."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(trainer.callback_metrics["train_loss"].clone())


def fit(strategy, model=None, steps=10, **kwargs):
    model = model or hf_model()
    logged = LoggedLoss()
    t = trainer(strategy, max_steps=steps, callbacks=[logged], **kwargs)
    t.fit(model, hf_loader())
    return t, model, torch.stack(logged.values)


@pytest.mark.parametrize("k", [2, 4])
def test_micro_batches_match_the_unsplit_step(k):
    """SGD: parameters move by the gradients, so this compares gradients (equal up to float rounding)."""
    _, plain, plain_losses = fit("auto", hf_model(optimizer="sgd", lr=0.1))
    t, split, split_losses = fit(
        MosaicStrategy(plan="temporal", micro_batches=k), hf_model(optimizer="sgd", lr=0.1)
    )
    assert t.strategy.active_micro_batches == k and t.strategy.plan.micro_batches == k
    assert t.strategy.engine.calls["llm"] == 10 * k  # every step ran k micro-batches, the first one too
    a, b = parameters(plain), parameters(split)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name
    assert len(split_losses) == 10
    assert torch.allclose(plain_losses, split_losses, rtol=1e-5, atol=1e-6)


def test_micro_batches_under_adamw_stay_close():
    """AdamW divides by the gradients' running RMS, which magnifies rounding in tiny gradients a little."""
    _, plain, _ = fit("auto")
    _, split, _ = fit(MosaicStrategy(plan="temporal", micro_batches=4))
    a, b = parameters(plain), parameters(split)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-5), name


def test_micro_batches_from_a_plan_and_epoch_level_logs():
    class EpochLogs(TinyHFMultimodal):
        def training_step(self, batch, batch_idx):
            loss = self(**batch).loss
            self.log("epoch_loss", loss, on_step=False, on_epoch=True)
            self.log_dict({"samples": float(batch["input_ids"].shape[0])}, on_step=True, reduce_fx="sum")
            self.log("longest", batch["input_ids"].float().sum(1).max(), reduce_fx="max")
            return {"loss": loss, "rows": batch["input_ids"]}

    seen = []

    class Rows(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(outputs["rows"].shape[0])

    units = ["vision", "audio", "vision_proj", "audio_proj", "llm"]
    plan = Plan([Phase({u: None}) for u in units], micro_batches=2, method="user", device="cpu")
    results = {}
    for name, strategy in (("plain", "auto"), ("split", MosaicStrategy(plan=plan))):
        torch.manual_seed(0)
        model = EpochLogs()
        t = trainer(strategy, max_epochs=1, max_steps=-1, callbacks=[Rows()])
        t.fit(model, hf_loader(num_samples=12))
        results[name] = dict(t.callback_metrics)
    assert torch.allclose(results["plain"]["epoch_loss"], results["split"]["epoch_loss"], rtol=1e-5)
    assert results["split"]["samples"].item() == 4.0  # what the unsplit step logged, not a micro-batch's 2
    assert results["split"]["longest"] == results["plain"]["longest"]
    assert seen[-3:] == [4, 4, 4]  # per-sample outputs are concatenated back


class Box:
    """A batch type the default split does not know."""

    def __init__(self, data):
        self.data = data


class Boxed(TinyHFMultimodal):
    def __init__(self):
        super().__init__()
        self.splits: list[int] = []

    def training_step(self, batch, batch_idx):
        data = batch.data if isinstance(batch, Box) else batch
        loss = self(**data).loss
        self.log("train_loss", loss, batch_size=data["input_ids"].shape[0])
        return loss

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch

    def mosaic_split_batch(self, batch, k):
        self.splits.append(k)
        n = batch.data["input_ids"].shape[0] // k
        return [Box({key: v[i * n : (i + 1) * n] for key, v in batch.data.items()}) for i in range(k)]


def test_a_custom_batch_type_uses_the_split_hook():
    torch.manual_seed(0)
    plain = Boxed()
    trainer("auto", max_steps=3).fit(plain, hf_loader())
    torch.manual_seed(0)
    split = Boxed()
    boxes = DataLoader(hf_loader().dataset, batch_size=4, collate_fn=lambda rows: Box(default_collate(rows)))
    trainer(MosaicStrategy(plan="temporal", micro_batches=2), max_steps=3).fit(split, boxes)
    assert split.splits == [2, 2, 2]
    a, b = parameters(plain), parameters(split)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name


def test_a_batch_that_cannot_be_split_is_an_error_naming_type_and_hook():
    class Meta:
        pass

    class WithMeta(TinyHFMultimodal):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)

        def on_before_batch_transfer(self, batch, dataloader_idx):
            return {**batch, "meta": Meta()}

        def forward(self, pixel_values, input_features, input_ids, meta=None):
            return super().forward(pixel_values, input_features, input_ids)

    torch.manual_seed(0)
    t = trainer(MosaicStrategy(plan="temporal", micro_batches=2), max_steps=1)
    with pytest.raises(
        TypeError, match=r"batch\['meta'\] of type .*Meta into micro-batches.*mosaic_split_batch"
    ):
        t.fit(WithMeta(), hf_loader())


def test_manual_optimization_cannot_be_split():
    class Manual(TinyHFMultimodal):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = self(**batch).loss
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()

    torch.manual_seed(0)
    t = trainer(MosaicStrategy(plan="temporal", micro_batches=2), max_steps=1)
    with pytest.raises(
        ValueError, match=r"2 micro-batches per step asked for, but Manual sets automatic_opt"
    ):
        t.fit(Manual(), hf_loader())
    t = trainer(MosaicStrategy(plan="temporal"), max_steps=1)
    t.fit(Manual(), hf_loader())
    assert t.strategy.session.max_micro_batches == 1, "the planner never splits its batches"


def test_bad_micro_batch_and_plan_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="micro_batches=0 must be 'auto'"):
        MosaicStrategy(micro_batches=0)
    with pytest.raises(ValueError, match="plan='fastest' is neither one of auto, temporal, concurrent"):
        MosaicStrategy(plan="fastest")
    with pytest.raises(TypeError, match=r"plan must be one of .* got int: 3"):
        MosaicStrategy(plan=3)
    with pytest.raises(ValueError, match=r"quotas= .* plan='concurrent', not plan='temporal'"):
        MosaicStrategy(plan="temporal", quotas={"vision": 8})
    broken = tmp_path / "plan.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"plan\.json"):
        MosaicStrategy(plan=broken)
    assert MosaicStrategy(quotas={"vision": 8}).config.plan == "concurrent"


def test_encoders_of_the_next_micro_batch_are_not_ordered_after_the_backbone():
    """Two phases, two micro-batches, recorded on fake streams: overlap where the plan wants it, no race."""
    from helpers import demo_data, demo_model, long_lived

    from lightning_mosaic.engine import HappensBefore, RecordingBackend, find_races

    plan = Plan(
        [Phase({"vision": 64, "audio": 64}), Phase({"projector": None, "llm": None})],
        micro_batches=2,
        method="user",
        device="cpu",
    )
    backend = RecordingBackend()
    model = demo_model()
    marks = []

    class Mark(L.Callback):  # the first step is traced and runs every unit alone: look at the second
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            marks.append(len(backend.log))

    t = trainer(MosaicStrategy(backend=backend, plan=plan), max_steps=2, callbacks=[Mark()])
    with backend.recording():
        t.fit(model, demo_data(batch_size=4))
    assert t.strategy.engine.calls == {"vision": 4, "audio": 4, "projector": 4, "llm": 4}
    assert backend.grants["vision"].granted == 64 and backend.streams["llm"].quota is None
    log = backend.log
    hb = HappensBefore(log)
    start = marks[1]
    first_backward = next(i for i, e in enumerate(log) if i >= start and e.phase == "backward")
    forward = {
        u: [i for i in backend.launches(u, "forward") if start <= i < first_backward]
        for u in t.strategy.units
    }
    llm = forward["llm"]
    # Micro-batch 0's backbone is launched before micro-batch 1's encoders (the CPU runs in order).
    llm_0 = [i for i in llm if i < min(v for v in forward["vision"] if v > llm[0])]
    for encoder in ("vision", "audio"):
        next_encoder = [i for i in forward[encoder] if i > llm_0[-1]]
        assert next_encoder, f"{encoder} of micro-batch 1 comes after the backbone of micro-batch 0"
        assert hb.concurrent(llm_0, next_encoder), f"{encoder} of micro-batch 1 waits for the backbone of 0"
    lanes = {e.stream for e in log if e.kind == "launch" and e.stream.startswith("lane")}
    assert lanes == {"lane0", "lane1"}, "each micro-batch's step code runs on its own lane"
    assert find_races(log, long_lived(model)) == []


def test_batchnorm_or_dropout_under_micro_batches_warns_that_numbers_differ(caplog):
    import logging

    class WithNorm(TinyHFMultimodal):
        def __init__(self) -> None:
            super().__init__()
            self.vision_proj = torch.nn.Sequential(
                torch.nn.Linear(32, 48), torch.nn.BatchNorm1d(17), torch.nn.Dropout(0.1)
            )

    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        fit(MosaicStrategy(plan="temporal", micro_batches=2), WithNorm(), steps=2)
    warned = [r.getMessage() for r in caplog.records if "numbers will differ" in r.getMessage()]
    assert len(warned) == 1, "said once"
    assert "BatchNorm in training mode (vision_proj.1)" in warned[0] and "dropout (vision_proj.2" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        fit(MosaicStrategy(plan="temporal", micro_batches=1), WithNorm(), steps=2)
        fit(MosaicStrategy(plan="temporal", micro_batches=2), hf_model(), steps=2)
    assert "numbers will differ" not in caplog.text, "nothing to say: one micro-batch, or no such module"
