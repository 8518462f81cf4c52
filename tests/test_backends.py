"""Backend choice and fallbacks (on the CPU every GPU backend falls back to inline, loudly)."""

from __future__ import annotations

import logging

import pytest
import torch

from lightning_mosaic._logging import _said
from lightning_mosaic.engine import (
    Backend,
    CpuThreadBackend,
    InlineBackend,
    RecordingBackend,
    make_backend,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_warnings():
    _said.clear()  # each test sees the once-only warnings again
    yield
    _said.clear()


def test_auto_on_cpu_is_inline_and_quiet(caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        backend = make_backend("auto", CPU)
    assert type(backend) is InlineBackend and not backend.concurrent
    assert caplog.text == ""


@pytest.mark.parametrize("spec", ["green_context", "streams"])
def test_gpu_backends_on_cpu_fall_back_to_inline_once_and_loudly(caplog, spec):
    with caplog.at_level(logging.WARNING, logger="lightning_mosaic"):
        first, second = make_backend(spec, CPU), make_backend(spec, CPU)
    assert type(first) is InlineBackend and type(second) is InlineBackend
    assert (
        caplog.text.count(f"backend={spec!r} needs a CUDA device but the model is on cpu; units run inline")
        == 1
    )


def test_named_backends():
    assert type(make_backend("none", CPU)) is InlineBackend
    assert type(make_backend("cpu", CPU)) is CpuThreadBackend
    fake = RecordingBackend()
    assert make_backend(fake, CPU) is fake


def test_unknown_backend():
    with pytest.raises(
        ValueError, match=r"backend='fast' is not one of auto, green_context, streams, cpu, none"
    ):
        make_backend("fast", CPU)


def test_describe_reports_requested_and_granted():
    backend = RecordingBackend()
    backend.setup(["vision", "llm"], {"vision": 32}, CPU)
    text = backend.describe()
    assert text.splitlines()[0].startswith("engine backend: recording (fake streams")
    assert "vision: requested 32 SMs, granted 32 SMs (own partition)" in text
    assert "llm: requested whole device, granted the whole device" in text
    assert (
        Backend().describe()
        == "engine backend: none (inline: every unit on the caller's stream, one after another)"
    )
