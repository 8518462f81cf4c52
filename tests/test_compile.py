"""The user's torch.compile survives mosaic: compiled units and compiled LightningModules run compiled."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import assert_bitwise_equal, parameters, trainer
from torch import nn

from lightning_mosaic import MosaicStrategy
from lightning_mosaic._compile import compiled_parts, how_compiled, replays_cuda_graphs
from lightning_mosaic.engine import RecordingBackend
from lightning_mosaic.tracing import Tracer


class Counting:
    """A torch.compile backend that runs the captured graph eagerly and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args: object) -> object:
            self.calls += 1
            return gm.forward(*args)

        return run


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu())


class TwoEncoders(L.LightningModule):
    """Two encoders (compiled by the user, as ``how`` says) and a head, as in the issue's report."""

    def __init__(self, how: str | None, backend: Counting | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vision, self.audio, self.head = Encoder(), Encoder(), nn.Linear(16, 1)
        if how == "torch.compile(module)":
            self.vision = torch.compile(self.vision, backend=backend)
            self.audio = torch.compile(self.audio, backend=backend)
        elif how == "module.compile()":
            self.vision.compile(backend=backend)
            self.audio.compile(backend=backend)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return ((self.head(torch.cat([self.vision(x), self.audio(x)], -1)) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class PerStep(L.Callback):
    """The compiled calls each training step made."""

    def __init__(self, backend: Counting) -> None:
        self.backend, self.steps, self._before = backend, [], 0

    def on_train_batch_start(self, *args: object) -> None:
        self._before = self.backend.calls

    def on_train_batch_end(self, *args: object) -> None:
        self.steps.append(self.backend.calls - self._before)


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    samples = [(torch.randn(8, generator=g), torch.randn(1, generator=g)) for _ in range(32)]
    return torch.utils.data.DataLoader(samples, batch_size=4)


def _fit(strategy: object, how: str | None, whole: bool = False, steps: int = 6, **kwargs: object):
    torch._dynamo.reset()
    backend = Counting()
    model = TwoEncoders(None if whole else how, backend)
    per_step = PerStep(backend)
    fitted = torch.compile(model, backend=backend) if whole else model
    trainer(strategy, max_steps=steps, callbacks=[per_step], **kwargs).fit(fitted, _data())
    return model, per_step.steps


HOW = ["torch.compile(module)", "module.compile()"]
PLANS = {
    "temporal": dict(plan="temporal"),
    "concurrent": dict(plan="concurrent", backend=RecordingBackend),
    "micro-batches": dict(plan="concurrent", backend=RecordingBackend, micro_batches=2),
    "profiled": dict(backend="cpu", warmup_steps=2, profile_seconds=10),
}


@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("how", HOW)
def test_compiled_units_run_their_compiled_code_under_every_plan(how, plan, tmp_path):
    plain, plain_steps = _fit("auto", how)
    assert plain_steps == [2] * 6  # two compiled encoders a step
    options = dict(PLANS[plan])
    if options.get("backend") is RecordingBackend:
        options["backend"] = RecordingBackend()
    micro = options.get("micro_batches", 1)
    mosaic, steps = _fit(MosaicStrategy(**options), how, default_root_dir=tmp_path)
    assert steps[0] == 0, "the traced first step runs eagerly"
    assert all(n >= 2 * micro for n in steps[1:]), steps  # compiled in every later step
    if micro == 1:
        assert_bitwise_equal(parameters(plain), parameters(mosaic))
    else:
        a, b = parameters(plain), parameters(mosaic)
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.parametrize("plan", ["temporal", "concurrent"])
def test_a_lightning_module_compiled_as_a_whole_runs_compiled_around_its_units(plan, tmp_path, caplog):
    import logging

    plain, plain_steps = _fit("auto", None, whole=True)
    assert plain_steps == [1] * 6
    options = dict(PLANS[plan])
    if options.get("backend") is RecordingBackend:
        options["backend"] = RecordingBackend()
    with caplog.at_level(logging.INFO, logger="lightning_mosaic"):
        mosaic, steps = _fit(MosaicStrategy(**options), None, whole=True, default_root_dir=tmp_path)
    assert steps[0] == 0 and all(n >= 1 for n in steps[1:]), steps
    assert_bitwise_equal(parameters(plain), parameters(mosaic))
    assert "compiled: the model (torch.compile(model))" in caplog.text


def test_a_traced_step_leaves_compiled_code_compiled():
    torch._dynamo.reset()
    backend = Counting()
    encoder = torch.compile(Encoder(), backend=backend)
    x = torch.randn(2, 8)
    encoder(x)
    tracer = Tracer({"encoder": encoder}, record_calls=True)
    with tracer:
        encoder(x)
    assert backend.calls == 1, "eager while traced"
    encoder(x)
    assert backend.calls == 2, "compiled again after the trace"
    assert tracer.graph().called == ["encoder"]


def test_how_a_module_is_compiled_and_whether_it_replays_cuda_graphs():
    plain = Encoder()
    method = Encoder()
    method.compile()
    assert how_compiled(plain) is None and how_compiled(method) == "module.compile()"
    wrapped = torch.compile(Encoder(), mode="reduce-overhead")
    assert how_compiled(wrapped) == "torch.compile(module)" and replays_cuda_graphs(wrapped)
    assert not replays_cuda_graphs(torch.compile(Encoder())) and not replays_cuda_graphs(plain)
    root = nn.Module()
    root.a, root.b = wrapped, plain
    assert compiled_parts(root) == {"a": "torch.compile(module)"}


def test_compiled_units_are_not_captured_as_cuda_graphs_again(monkeypatch, tmp_path, caplog):
    from lightning_mosaic import session as session_module
    from lightning_mosaic.engine.graphs import EmulatedCapture

    capture = EmulatedCapture()
    monkeypatch.setattr(session_module, "capture_for", lambda device: capture)
    plain, _ = _fit("auto", HOW[0])
    model, steps = _fit(MosaicStrategy(graphs=True), HOW[0], default_root_dir=tmp_path)
    assert (
        "unit vision is not captured as a CUDA graph: it is compiled (torch.compile(module)) and runs its"
        " compiled code" in caplog.text
    )
    assert "unit head is not captured" not in caplog.text and sum(g.replays for g in capture.graphs) > 0
    assert all(n >= 2 for n in steps[1:])
    assert_bitwise_equal(parameters(plain), parameters(model))


class SaveRank(PerStep):
    """Each rank's compiled calls per step and its parameters, saved at the end of fit."""

    def __init__(self, backend: Counting, directory: str) -> None:
        super().__init__(backend)
        self.directory = directory

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(
            {"steps": self.steps, "params": parameters(pl_module)},
            f"{self.directory}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.parametrize("how", HOW)
def test_compiled_units_run_compiled_under_two_processes_like_ddp(how, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    results = {}
    for name, strategy in (
        ("ddp", DDPStrategy(start_method="fork")),
        ("mosaic", MosaicStrategy(start_method="fork")),
    ):
        (tmp_path / name).mkdir()
        torch._dynamo.reset()
        backend = Counting()
        trainer(strategy, devices=2, max_steps=4, callbacks=[SaveRank(backend, str(tmp_path / name))]).fit(
            TwoEncoders(how, backend), _data()
        )
        results[name] = [torch.load(tmp_path / name / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in range(2):
        assert results["ddp"][rank]["steps"] == [2] * 4
        steps = results["mosaic"][rank]["steps"]
        assert steps[0] == 0 and all(n >= 2 for n in steps[1:]), steps
        assert_bitwise_equal(results["ddp"][rank]["params"], results["mosaic"][rank]["params"])


def test_a_compiled_unit_is_profiled_compiled_at_every_batch():
    from lightning_mosaic.inputs import InputCapture
    from lightning_mosaic.profiler import profile_units

    torch._dynamo.reset()
    backend = Counting()
    encoder = torch.compile(Encoder(), backend=backend)
    with InputCapture({"encoder": encoder}) as capture:
        encoder(torch.randn(8, 8))
    before = backend.calls
    profile = profile_units({"encoder": encoder}, capture.captured, 8, quotas=[1], repeats=2, progress=False)
    assert {s.batch for s in profile.samples} == {2, 4, 8}
    timed = sum(s.repeats for s in profile.samples if s.pass_ == "forward")
    assert backend.calls - before >= timed, "every timed forward ran the compiled graph"


def test_the_profiler_does_not_capture_a_compiled_unit_as_cuda_graphs():
    from lightning_mosaic.engine.graphs import EmulatedCapture
    from lightning_mosaic.inputs import InputCapture
    from lightning_mosaic.profiler import profile_units

    torch._dynamo.reset()
    backend = Counting()
    units = {"encoder": torch.compile(Encoder(), backend=backend), "head": Encoder()}
    with InputCapture(units) as capture:
        units["head"](units["encoder"](torch.randn(8, 8)))
    profile = profile_units(
        units, capture.captured, 8, quotas=[1], repeats=1, progress=False, capture=EmulatedCapture()
    )
    assert {s.module for s in profile.graphed} == {"head"}
    assert any(
        note.startswith("encoder: not captured as a CUDA graph (it is compiled (torch.compile(module))")
        for note in profile.notes
    ), profile.notes
