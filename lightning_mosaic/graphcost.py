"""What a CUDA graph changes in the cost of a unit: the host issues one replay instead of every kernel.

A profile measures, per unit and pass, the device's time and the host's (the one Python thread
issuing the kernels). A unit whose host time is at least its device time at the whole device is
*launch-bound* (:func:`launch_bound`): the GPU waits for the thread, so neither a quota nor a
stream of its own makes it faster. Captured as a CUDA graph (``engine/graphs.py``), each pass
costs the host one replay: copying the inputs in, one graph launch, copying the outputs out, the
autograd bookkeeping. :func:`graphed` gives a cost model that knows it.

Where the profile timed the unit's graphs (``Profile.graphed``, on a GPU: the model's
``graph_cost``), a graphed pass costs the host the measured replay time, and its device time is
the eager prediction scaled by the measured ratio (graphed over eager at the full batch on the
whole device: the launch gaps the graph removes). Elsewhere the host time of a replay is
:data:`REPLAY_HOST_S` and the device time the eager one, which for a launch-bound unit includes
the gaps where the device waited for the host: the prediction is then conservative.

A graph's memory pool keeps the activations of every call it serves for the whole run:
:func:`pool_bytes` is what the planner adds to a plan's peak for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_mosaic.perfmodel import CostModel

REPLAY_HOST_S = 60e-6  # host seconds of one graphed pass (copies in and out, one launch, autograd)
PASSES = ("forward", "backward")


def action_times(model: CostModel, unit: str, pass_: str, batch: float, quota: int) -> tuple[float, float]:
    """Device and host seconds of one pass of ``unit`` in a step, on ``batch`` samples under ``quota``:
    the cost of one action (``schedule.py``), every call of the unit in the step."""
    calls = model.calls.get(unit, 1)
    return model.predict(unit, pass_, batch, quota) * calls, model.predict_host(
        unit, pass_, batch, quota
    ) * calls


def step_times(model: CostModel, unit: str, batch: float) -> tuple[float, float]:
    """Host and device seconds of ``unit`` in one step on the whole device at ``batch`` samples:
    both passes (the backward where it has one), every call."""
    passes = [p for p in PASSES if p == "forward" or model.backward.get(unit, True)]
    times = [action_times(model, unit, p, batch, model.capacity) for p in passes]
    return sum(t[1] for t in times), sum(t[0] for t in times)


def launch_bound(model: CostModel, units: Iterable[str], batch: float) -> list[str]:
    """The ``units`` whose host time, over both passes, is at least their device time on the whole
    device at ``batch`` samples (none when the profile measured no host time), and which graphed are
    predicted to take less time per step: the longer of host and device time shrinks (a graph the
    profile timed slower than eager is not chosen)."""
    found = []
    for unit in units:
        host, device = step_times(model, unit, batch)
        if not (host > 0 and host >= device):
            continue
        graphed_host, graphed_device = step_times(GraphedModel(model, [unit]), unit, batch)
        if max(graphed_host, graphed_device) < max(host, device):
            found.append(unit)
    return found


def pool_bytes(model: CostModel, units: Iterable[str], batch_size: int, micro_batches: int) -> int:
    """Bytes the graphs of ``units`` keep for a step of ``micro_batches``: one pool of activations
    per micro-batch (each call position has its own graphs)."""
    size = batch_size / micro_batches
    return int(sum(model.memory(unit, size) for unit in units) * micro_batches)


class GraphedModel:
    """``model`` with the units in ``graphs`` captured: their host time is one replay per pass, their
    device time scaled as measured (see the module docstring); everything else as ``model`` says."""

    def __init__(self, model: CostModel, graphs: Sequence[str], replay_s: float = REPLAY_HOST_S) -> None:
        unknown = [u for u in graphs if u not in model.modules]
        if unknown:
            raise ValueError(f"graphs {unknown} are not units of the performance model: {model.modules}")
        if not replay_s >= 0:
            raise ValueError(f"replay_s={replay_s!r} must be a number of seconds >= 0")
        self.base, self.graphs, self.replay_s = model, tuple(graphs), float(replay_s)

    @property
    def modules(self) -> list[str]:
        return self.base.modules

    @property
    def capacity(self) -> int:
        return self.base.capacity

    @property
    def backward(self) -> Mapping[str, bool]:
        return self.base.backward

    @property
    def calls(self) -> Mapping[str, int]:
        return self.base.calls

    def _measured(self, module: str, pass_: str) -> tuple[float, float] | None:
        cost = getattr(self.base, "graph_cost", None)
        return cost(module, pass_) if cost is not None and module in self.graphs else None

    def predict(self, module: str, pass_: str, batch: float, quota: float) -> float:
        eager = self.base.predict(module, pass_, batch, quota)
        measured = self._measured(module, pass_)
        return eager * measured[0] if measured is not None else eager

    def predict_host(self, module: str, pass_: str, batch: float, quota: float) -> float:
        eager = self.base.predict_host(module, pass_, batch, quota)
        if module not in self.graphs:
            return eager
        measured = self._measured(module, pass_)
        return measured[1] if measured is not None else min(eager, self.replay_s)

    def memory(self, module: str, batch: float) -> int:
        return self.base.memory(module, batch)


def graphed(model: CostModel, graphs: Sequence[str]) -> CostModel:
    """``model`` knowing that ``graphs`` replay CUDA graphs (``model`` itself when none do)."""
    if not graphs:
        return model
    if isinstance(model, GraphedModel):
        if set(model.graphs) == set(graphs):
            return model
        model = model.base
    return GraphedModel(model, graphs)
