"""PendingTensor: first use waits (once per stream), metadata never waits, retired shells are plain."""

from __future__ import annotations

import copy
import io
import pickle

import torch

from lightning_mosaic.engine.pending import PendingTensor, resolve_all, retire
from lightning_mosaic.engine.recording import FakeStream, RecordingBackend


def make(requires_grad=False):
    backend = RecordingBackend()
    backend.setup(["unit"], {}, torch.device("cpu"))
    producer = backend.stream("unit")
    value = torch.arange(6.0, requires_grad=requires_grad) * 2 if requires_grad else torch.arange(6.0)
    done = backend.record(producer)
    backend.log.clear()
    return backend, value, PendingTensor.wrap(value, done, producer, backend)


def waits(backend):
    return [(e.stream, e.event) for e in backend.log if e.kind == "wait"]


def test_metadata_does_not_wait():
    backend, value, shell = make(requires_grad=True)
    assert shell.shape == (6,) and shell.dtype == torch.float32 and shell.device.type == "cpu"
    assert shell.requires_grad and shell.dim() == 1 and shell.numel() == 6 and len(shell) == 6
    assert shell.grad_fn is value.grad_fn, "metadata comes from the real output"
    assert waits(backend) == []


def test_first_use_waits_once_per_stream_and_records_the_stream():
    backend, value, shell = make()
    out = shell + 1
    assert type(out) is torch.Tensor and torch.equal(out, value + 1)
    assert waits(backend) == [("caller", 1)]
    shell * 2
    assert waits(backend) == [("caller", 1)], "the caller's stream waited already"
    other = FakeStream("other")
    backend.set_current(other)
    torch.cat([shell, shell])
    assert waits(backend) == [("caller", 1), ("other", 1)]
    assert [e.stream for e in backend.log if e.kind == "record_stream"] == ["caller", "other"]


def test_use_on_the_producer_stream_needs_no_wait():
    backend, _, shell = make()
    backend.set_current(backend.stream("unit"))
    shell.sum()
    assert waits(backend) == []


def test_gradients_flow_to_the_real_output():
    _, _, shell = make(requires_grad=True)
    seen = []
    shell.register_hook(lambda g: seen.append(g.clone()))
    (shell * 3).sum().backward()
    (grad,) = seen
    assert torch.equal(grad, torch.full((6,), 3.0)), "hooks see the gradient of the real output"


def test_in_place_ops_reach_the_real_output():
    _, value, shell = make()
    shell.add_(1)
    assert torch.equal(value, torch.arange(6.0) + 1)


def test_resolve_all_in_nested_structures():
    backend, value, shell = make()
    nested = {"a": (shell, [shell]), "b": 3}
    out = resolve_all(nested, backend.stream("unit"))
    assert out["a"][0] is value and out["a"][1][0] is value and out["b"] == 3


def test_retired_shells_are_plain_tensors():
    backend, value, shell = make(requires_grad=True)
    retire(shell, backend.caller)
    assert type(shell) is torch.Tensor
    assert not hasattr(shell, "_mosaic_value")
    assert torch.equal(shell, value)
    shell.sum().backward()  # still attached to the graph
    retire(shell, backend.caller)  # retiring twice is harmless


def test_pickle_and_deepcopy_give_plain_tensors():
    _, value, shell = make()
    assert type(pickle.loads(pickle.dumps(shell))) is torch.Tensor
    copied = copy.deepcopy(shell)
    assert type(copied) is torch.Tensor and torch.equal(copied, value)
    saved = {"x": shell}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    assert type(torch.load(buffer)["x"]) is torch.Tensor


def test_hashing_and_printing():
    backend, _, shell = make()
    assert hash(shell) == id(shell) and shell in {shell}
    assert waits(backend) == [], "hashing reads no data"
    assert "tensor([" in repr(shell)
    assert waits(backend) == [("caller", 1)], "printing does"
