"""GPU checks (skipped without CUDA): mosaic trains like plain Lightning on a GPU."""

from __future__ import annotations

import pytest
import torch
from helpers import demo_data, demo_model, hf_loader, hf_model, parameters, trainer

from lightning_mosaic import MosaicStrategy

pytestmark = pytest.mark.gpu


def _fit(model, strategy, data, **kwargs):
    t = trainer(strategy, accelerator="gpu", devices=1, **kwargs)
    t.fit(model, data)
    return t, parameters(model)


def _assert_close(a, b, rtol, atol):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.allclose(a[k], b[k], rtol=rtol, atol=atol)]
    assert not bad, f"parameters not close: {bad}"


@pytest.mark.parametrize(
    "make", [(demo_model, demo_data), (hf_model, hf_loader)], ids=["two-encoder", "hugging-face"]
)
def test_fp32_allclose_to_plain_lightning_after_10_steps(make):
    model_fn, data_fn = make
    before = parameters(model_fn())
    _, plain = _fit(model_fn(), "auto", data_fn())
    t, mosaic = _fit(model_fn(), "mosaic", data_fn())
    assert t.strategy.root_device.type == "cuda"
    assert any(not torch.equal(before[k].cuda(), plain[k]) for k in plain), "training moved the parameters"
    _assert_close(plain, mosaic, rtol=1e-5, atol=1e-6)
    assert t.strategy.graph is not None and t.strategy.plan.device == torch.cuda.get_device_name()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_matches_plain_lightning(precision):
    _, plain = _fit(demo_model(), "auto", demo_data(), precision=precision)
    t, mosaic = _fit(demo_model(), "mosaic", demo_data(), precision=precision)
    _assert_close(plain, mosaic, rtol=1e-3, atol=1e-4)
    assert torch.isfinite(t.callback_metrics["train_loss"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_match_ddp():
    from lightning.pytorch.strategies import DDPStrategy

    ddp_model, mosaic_model = demo_model(), demo_model()
    trainer(DDPStrategy(start_method="spawn"), accelerator="gpu", devices=2).fit(ddp_model, demo_data())
    trainer(MosaicStrategy(start_method="spawn"), accelerator="gpu", devices=2).fit(mosaic_model, demo_data())
    _assert_close(parameters(ddp_model), parameters(mosaic_model), rtol=1e-5, atol=1e-6)
