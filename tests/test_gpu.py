"""GPU checks (skipped without CUDA): mosaic trains like plain Lightning on a GPU."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from helpers import demo_data, demo_model, hf_loader, hf_model, parameters, trainer

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.engine.green import detect

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
def test_fp32_allclose_to_plain_lightning_after_10_steps(make, tmp_path):
    """The whole loop on the GPU: warmup, profile, plan (no micro-batches here), apply, train."""
    model_fn, data_fn = make
    before = parameters(model_fn())
    _, plain = _fit(model_fn(), "auto", data_fn())
    strategy = MosaicStrategy(micro_batches=1, warmup_steps=2, profile_seconds=15)
    t, mosaic = _fit(model_fn(), strategy, data_fn(), default_root_dir=tmp_path)
    assert strategy.planned and strategy.session.profile is not None
    assert t.strategy.root_device.type == "cuda"
    moved = any(not torch.equal(before[k].cpu(), plain[k].cpu()) for k in plain)
    assert moved, "training moved the parameters"
    _assert_close(plain, mosaic, rtol=1e-5, atol=1e-6)
    assert t.strategy.graph is not None and t.strategy.plan.device == torch.cuda.get_device_name()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_matches_plain_lightning(precision):
    _, plain = _fit(demo_model(), "auto", demo_data(), precision=precision)
    t, mosaic = _fit(demo_model(), MosaicStrategy(plan="concurrent"), demo_data(), precision=precision)
    _assert_close(plain, mosaic, rtol=1e-3, atol=1e-4)
    assert torch.isfinite(t.callback_metrics["train_loss"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_match_ddp():
    from lightning.pytorch.strategies import DDPStrategy

    ddp_model, mosaic_model = demo_model(), demo_model()
    trainer(DDPStrategy(start_method="spawn"), accelerator="gpu", devices=2).fit(ddp_model, demo_data())
    trainer(MosaicStrategy(start_method="spawn"), accelerator="gpu", devices=2).fit(mosaic_model, demo_data())
    _assert_close(parameters(ddp_model), parameters(mosaic_model), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the engine on a GPU


@pytest.mark.parametrize("backend", ["streams", "green_context"])
def test_each_gpu_backend_allclose_to_plain_lightning(backend):
    _, plain = _fit(demo_model(), "auto", demo_data())
    t, mosaic = _fit(demo_model(), MosaicStrategy(backend=backend, plan="concurrent"), demo_data())
    assert t.strategy.engine.backend.concurrent
    _assert_close(plain, mosaic, rtol=1e-5, atol=1e-6)


ENGINE_CHECK = runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" / "engine_check.py"))


def test_streams_run_the_two_encoders_kernels_overlapping():
    streams = ENGINE_CHECK["overlap"]("streams")
    a, b = streams["encoder_a_ms"], streams["encoder_b_ms"]
    assert streams["overlapping"] and b[0] < a[1] and a[0] < b[1], streams
    inline = ENGINE_CHECK["overlap"]("none")
    assert not inline["overlapping"], f"inline: one after the other {inline}"


@pytest.mark.skipif(detect() is None or not detect().usable, reason="no usable torch.cuda.green_contexts")
def test_a_quarter_of_the_sms_takes_about_four_times_as_long():
    from lightning_mosaic.devices import granularity
    from lightning_mosaic.engine.green import grant, make_streams

    props = torch.cuda.get_device_properties(0)
    minimum, multiple = granularity((props.major, props.minor))
    grants = grant(
        {"quarter": props.multi_processor_count // 4}, props.multi_processor_count, minimum, multiple
    )
    streams, _contexts, _ = make_streams(detect(), grants, torch.device("cuda", 0))  # contexts: keep alive
    full = ENGINE_CHECK["matmul_ms"](torch.cuda.Stream())
    quarter = ENGINE_CHECK["matmul_ms"](streams["quarter"])
    expected = props.multi_processor_count / grants["quarter"].granted
    assert 0.6 * expected < quarter / full < 1.5 * expected, (full, quarter, grants)


def test_a_two_phase_plan_with_micro_batches_trains_like_plain_lightning():
    from lightning_mosaic.plan import Phase, Plan

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    half = sms // 2 // 8 * 8
    plan = Plan(
        [
            Phase({"vision": half, "audio": half}),
            Phase({"vision_proj": None, "audio_proj": None}),
            Phase({"llm": None}),
        ],
        micro_batches=2,
        method="user",
        device=torch.cuda.get_device_name(0),
    )
    _, plain = _fit(hf_model(optimizer="sgd", lr=0.1), "auto", hf_loader())
    t, mosaic = _fit(hf_model(optimizer="sgd", lr=0.1), MosaicStrategy(plan=plan), hf_loader())
    backend = t.strategy.engine.backend
    assert backend.concurrent and t.strategy.engine.calls["llm"] == 20 and len(backend.lanes) == 2
    if backend.name == "green_context":
        assert backend.grants["vision"].partitioned and backend.grants["vision"].granted <= half
    _assert_close(plain, mosaic, rtol=1e-4, atol=1e-5)


def test_user_quotas_are_granted_on_the_gpu():
    t, _ = _fit(demo_model(), MosaicStrategy(quotas={"vision": 32, "audio": 16}), demo_data(), max_steps=2)
    grants = t.strategy.engine.backend.grants
    assert grants["vision"].requested == 32 and grants["audio"].requested == 16
    if t.strategy.engine.backend.name == "green_context":
        assert grants["vision"].partitioned and grants["vision"].granted % 2 == 0


def test_a_frozen_encoder_one_step_ahead_on_the_gpu():
    from lightning_mosaic.plan import Phase, Plan

    plan = Plan(
        [
            Phase({"vision": None, "audio": None}),
            Phase({"vision_proj": None, "audio_proj": None}),
            Phase({"llm": None}),
        ],
        method="user",
        device=torch.cuda.get_device_name(0),
        lookahead=["vision"],
    )
    _, plain = _fit(hf_model(), "auto", hf_loader())
    t, mosaic = _fit(hf_model(), MosaicStrategy(plan=plan), hf_loader())
    assert t.strategy.engine.backend.concurrent and t.strategy.lookahead.hits == 8
    _assert_close(plain, mosaic, rtol=1e-5, atol=1e-6)


def test_the_accelerate_adapter_on_the_gpu(tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    import lightning_mosaic.accelerate as mosaic_accelerate

    def train(mosaic):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        accelerator = Accelerator(project_dir=str(tmp_path))
        model = hf_model()
        optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-3)
        prepare = mosaic_accelerate.prepare if mosaic else (lambda acc, *objs, **_: acc.prepare(*objs))
        model, optimizer, loader = prepare(
            accelerator, model, optimizer, hf_loader(), warmup_steps=2, profile_seconds=15
        )
        for batch in loader:
            accelerator.backward(model(**batch).loss)
            optimizer.step()
            optimizer.zero_grad()
        return accelerator, parameters(accelerator.unwrap_model(model))

    _, plain = train(False)
    accelerator, mosaic = train(True)
    session = mosaic_accelerate.session(accelerator)
    assert (
        session.planned
        and session.profile is not None
        and session.plan.device == torch.cuda.get_device_name(0)
    )
    _assert_close(plain, mosaic, rtol=1e-5, atol=1e-6)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize(
    "make", [(demo_model, demo_data), (hf_model, hf_loader)], ids=["two-encoder", "hugging-face"]
)
def test_cuda_graphs_allclose_to_plain_lightning_after_10_steps(make, precision):
    """Every unit that can be captured replays CUDA graphs on the GPU; the numbers stay eager's."""
    model_fn, data_fn = make
    _, plain = _fit(model_fn(), "auto", data_fn(), precision=precision)
    strategy = MosaicStrategy(plan="temporal", graphs=True)
    _, graphed = _fit(model_fn(), strategy, data_fn(), precision=precision)
    assert strategy.plan.graphs, strategy.plan.describe()
    tolerance = dict(rtol=1e-4, atol=1e-5) if precision == "32-true" else dict(rtol=1e-2, atol=1e-3)
    _assert_close(plain, graphed, **tolerance)


def test_a_cuda_capture_that_needs_the_host_falls_back_to_eager():
    from torch import nn

    from lightning_mosaic.engine.graphs import CudaCapture, GraphRunner

    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return y * y.abs().max().item()

    torch.manual_seed(0)
    unit, x = Reads().cuda(), torch.randn(4, 8, device="cuda")
    expected = unit(x)
    runner = GraphRunner(CudaCapture(torch.device("cuda")))
    runner.attach({"unit": unit})
    runner.new_step()
    assert torch.equal(unit(x), expected)
    assert "reads a tensor's value on the host" in runner.dropped["unit"]
    plain = nn.Linear(8, 8).cuda()
    runner.detach()
    runner.attach({"plain": plain})
    for _ in range(3):
        runner.new_step()
        out = plain(x)
        out.sum().backward()
    assert (
        len(runner.graphs["plain"]) == 1
        and runner.graphs["plain"][next(iter(runner.graphs["plain"]))].backward
    )
    assert torch.allclose(out, torch.nn.functional.linear(x, plain.weight, plain.bias))
