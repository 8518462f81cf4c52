"""The recording fake: what it logs for launches, views, in-place ops and autograd's streams."""

from __future__ import annotations

import torch
from helpers import demo_batch, demo_model, train_recorded

from lightning_mosaic.engine.recording import RecordingBackend, memory_key, memory_keys


def test_memory_keys_follow_storage():
    x = torch.arange(12.0)
    assert memory_key(x) == memory_key(x.view(3, 4)) == memory_key(x[2:])
    assert memory_key(torch.empty(0)) is None
    z = torch.ones(2)
    assert memory_keys((x, [x.view(3, 4)], {"z": z})) == (memory_key(x), memory_key(z)), "each storage once"


def test_launches_log_reads_and_writes_on_the_current_stream():
    backend = RecordingBackend()
    backend.setup(["unit"], {}, torch.device("cpu"))
    x = torch.ones(4)
    with backend.recording():
        y = x * 2  # a fresh output: written
        v = y.view(2, 2)  # a view: reads y, writes nothing
        backend.set_current(backend.stream("unit"))
        v.add_(1)  # in place: writes y's memory
    mul, view, add = [e for e in backend.log if e.kind == "launch"]
    assert (mul.stream, mul.reads, mul.writes) == ("caller", (memory_key(x),), (memory_key(y),))
    assert (view.reads, view.writes) == ((memory_key(y),), ())
    assert (add.stream, add.writes) == ("unit", (memory_key(y),))
    torch.ones(1) + 1
    assert len([e for e in backend.log if e.kind == "launch"]) == 3, "nothing is logged outside recording()"


def test_backward_runs_on_forward_streams_and_returns_synchronised():
    model = demo_model()
    engine = train_recorded(model, lambda step: model._loss(demo_batch(step)), steps=1)
    log = engine.backend.log
    backward = [i for i, e in enumerate(log) if e.phase == "backward"]
    streams = {log[i].stream for i in backward if log[i].kind == "launch"}
    assert {"vision", "audio", "projector", "llm", "caller"} <= streams
    last_launch = max(i for i in backward if log[i].kind == "launch")
    closing = [e for e in log[last_launch:] if e.kind == "wait" and e.stream == "caller"]
    assert {"vision", "audio", "projector", "llm"} <= {
        next(r.stream for r in log if r.kind == "record" and r.event == w.event) for w in closing
    }, "when backward() returns, the caller's stream has waited for every stream it used"
    assert engine.backend.current_stream() is engine.backend.caller


def test_keep_alive_holds_fresh_results_so_no_address_is_reused_while_recording():
    import gc
    import weakref

    layer = torch.nn.Linear(4, 4)
    backend = RecordingBackend(keep_alive=True)
    with backend.recording():
        fresh = layer(torch.ones(2, 4))
        ref = weakref.ref(fresh)
        del fresh
        gc.collect()
        assert ref() is not None, "a result of a recorded operation was freed while recording"
        assert not any(t is layer.weight for t in backend._alive), "parameters are not held"
    gc.collect()
    assert ref() is None and backend._alive == []  # released when recording ends
    plain = RecordingBackend()
    with plain.recording():
        ref = weakref.ref(layer(torch.ones(2, 4)))
        gc.collect()
        assert ref() is None
