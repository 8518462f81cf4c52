"""GPU checks (skipped without CUDA): mosaic trains like plain Lightning on a GPU."""

from __future__ import annotations

import pytest
import torch
from helpers import demo_data, demo_model, hf_loader, hf_model, parameters, trainer
from torch import nn

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.engine import Engine, make_backend
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


# ---------------------------------------------------------------- the engine on a GPU


@pytest.mark.parametrize("backend", ["streams", "green_context"])
def test_each_gpu_backend_allclose_to_plain_lightning(backend):
    _, plain = _fit(demo_model(), "auto", demo_data())
    t, mosaic = _fit(demo_model(), MosaicStrategy(backend=backend), demo_data())
    assert t.strategy.engine.backend.concurrent
    _assert_close(plain, mosaic, rtol=1e-5, atol=1e-6)


class TimedEncoder(nn.Module):
    """Many small matmuls (a GPU-underusing encoder); records CUDA events at its start and end."""

    def __init__(self, width: int = 256, depth: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def forward(self, x):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()  # on the current stream: the unit's own
        for layer in self.layers:
            x = torch.relu(layer(x))
        end.record()
        self.events.append((start, end))
        return x


class TwoEncoders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = TimedEncoder(), TimedEncoder()

    def forward(self, x, y):
        return (self.a(x) + self.b(y)).sum()


def _intervals(backend: str):
    from lightning_mosaic.selection import select_modules

    model = TwoEncoders().cuda()
    engine = Engine()
    engine.attach(
        select_modules(model),
        backend=make_backend(backend, torch.device("cuda")),
        device=torch.device("cuda"),
    )
    x, y = torch.randn(8, 256, device="cuda"), torch.randn(8, 256, device="cuda")
    for _ in range(3):  # warm up
        with engine.step():
            model(x, y)
    reference = torch.cuda.Event(enable_timing=True)
    reference.record()
    with engine.step():
        model(x, y)
    torch.cuda.synchronize()
    engine.detach()
    (a0, a1), (b0, b1) = model.a.events[-1], model.b.events[-1]
    return [(reference.elapsed_time(s), reference.elapsed_time(e)) for s, e in ((a0, a1), (b0, b1))]


def test_streams_run_the_two_encoders_kernels_overlapping():
    (a_start, a_end), (b_start, b_end) = _intervals("streams")
    assert b_start < a_end and a_start < b_end, (
        f"a [{a_start:.3f}, {a_end:.3f}] ms, b [{b_start:.3f}, {b_end:.3f}] ms"
    )
    (a_start, a_end), (b_start, b_end) = _intervals("none")
    assert b_start >= a_end, "inline: one after the other"


def _matmul_ms(stream) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.stream(stream):
        for _ in range(3):
            a @ a  # warm up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            a @ a
        end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


@pytest.mark.skipif(detect() is None or not detect().usable, reason="no usable torch.cuda.green_contexts")
def test_a_quarter_of_the_sms_takes_about_four_times_as_long():
    from lightning_mosaic.engine.green import grant, granularity, make_streams

    props = torch.cuda.get_device_properties(0)
    minimum, multiple = granularity((props.major, props.minor))
    grants = grant(
        {"quarter": props.multi_processor_count // 4}, props.multi_processor_count, minimum, multiple
    )
    streams, _contexts, _ = make_streams(detect(), grants, torch.device("cuda", 0))  # contexts: keep alive
    full = _matmul_ms(torch.cuda.Stream())
    quarter = _matmul_ms(streams["quarter"])
    expected = props.multi_processor_count / grants["quarter"].granted
    assert 0.6 * expected < quarter / full < 1.5 * expected, (full, quarter, grants)


def test_user_quotas_are_granted_on_the_gpu():
    t, _ = _fit(demo_model(), MosaicStrategy(quotas={"vision": 32, "audio": 16}), demo_data(), max_steps=2)
    grants = t.strategy.engine.backend.grants
    assert grants["vision"].requested == 32 and grants["audio"].requested == 16
    if t.strategy.engine.backend.name == "green_context":
        assert grants["vision"].partitioned and grants["vision"].granted % 2 == 0
