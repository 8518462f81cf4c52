"""The cpu backend's parallel regions: tasks overlap under thread quotas and compute the same bits."""

from __future__ import annotations

import pytest
import torch

from lightning_mosaic.engine.cpu import CpuThreadBackend


def matmuls(seed: int):
    def run():
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(384, 384, generator=g)
        out = a
        for _ in range(40):
            out = torch.tanh(out @ a)
        return out

    return run


def test_two_branches_with_one_thread_each_overlap_and_match_sequential():
    backend = CpuThreadBackend(cores=2)
    together = backend.run_parallel({"a": (matmuls(0), 1), "b": (matmuls(1), 1)})
    a, b = together["a"], together["b"]
    assert a.start < b.end and b.start < a.end, "their wall-clock intervals overlap"
    assert a.threads == b.threads == 1
    alone_a = backend.run_parallel({"a": (matmuls(0), 1)})["a"]
    alone_b = backend.run_parallel({"b": (matmuls(1), 1)})["b"]
    assert torch.equal(a.value, alone_a.value) and torch.equal(b.value, alone_b.value)


def test_caller_thread_count_and_grad_mode_are_kept():
    backend = CpuThreadBackend(cores=2)
    before = torch.get_num_threads()
    with torch.no_grad():
        out = backend.run_parallel({"g": (lambda: torch.is_grad_enabled(), 1)})
    assert out["g"].value is False, "tasks see the caller's grad mode"
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("tasks", "error", "message"),
    [
        ({}, ValueError, "needs at least one task"),
        ({"a": (lambda: 1, 0)}, ValueError, r"task 'a': thread quota 0 is not between 1 and 2 cores"),
        ({"a": (lambda: 1, 3)}, ValueError, r"thread quota 3 is not between 1 and 2 cores"),
        ({"a": (42, 1)}, TypeError, r"task 'a': 42 is not callable"),
    ],
)
def test_bad_tasks(tasks, error, message):
    with pytest.raises(error, match=message):
        CpuThreadBackend(cores=2).run_parallel(tasks)


def test_a_failing_task_is_named():
    def boom():
        raise KeyError("missing")

    with pytest.raises(RuntimeError, match=r"parallel task 'bad' failed: 'missing'"):
        CpuThreadBackend(cores=2).run_parallel({"bad": (boom, 1), "good": (matmuls(0), 1)})
