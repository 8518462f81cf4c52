"""The search for a deployment plan: SM quotas per unit and phase, micro-batches, units one step ahead.

:func:`plan` simulates candidate plans (``simulator.py``) with a performance model and returns the
fastest that fits memory, or the temporal plan when nothing is at least ``MIN_GAIN`` faster. Plans
themselves are plain data (``plan.py``).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.plan import Phase, Plan, temporal_plan
from lightning_mosaic.simulator import _simulate, _tasks, check_inputs, simulate

if TYPE_CHECKING:
    from lightning_mosaic.devices import DeviceSpec
    from lightning_mosaic.perfmodel import CostModel

METHODS = ("heuristic", "exhaustive")
MIN_GAIN = 0.02  # below this predicted gain, the temporal plan is returned
MEMORY_HEADROOM = 0.9  # share of device memory the predicted activations may use


def plan(
    graph: ModuleGraph,
    perf_model: CostModel,
    device: DeviceSpec,
    batch_size: int,
    method: str = "heuristic",
    micro_batches: int | None = None,
    max_micro_batches: int = 8,
    allow_lookahead: bool = True,
) -> Plan:
    """The deployment plan with the shortest simulated step for ``graph`` on ``device``.

    ``perf_model`` is a fitted :class:`~lightning_mosaic.perfmodel.PerfModel` or an
    :class:`~lightning_mosaic.perfmodel.AnalyticModel` whose capacity is ``device.sm_count``;
    ``device`` a :class:`~lightning_mosaic.devices.DeviceSpec`.
    Phases are the graph's levels (units that do not depend on each other); each unit gets a quota
    from ``device.quotas()`` (the whole device = ``None``), the quotas of a phase adding up to at
    most the device. ``micro_batches`` fixes the micro-batch count; by default the divisors of
    ``batch_size`` up to ``max_micro_batches`` are searched. ``method="heuristic"`` is a local
    search from three starting splits (see :func:`_local_search`); ``"exhaustive"`` simulates every
    split (the reference; small instances only). The predicted activations must fit
    ``MEMORY_HEADROOM`` of the device's memory. Frozen sources (no backward pass, inputs from the
    batch only) may also run one step ahead (``Plan.lookahead``; whole batches only): that variant
    is searched too, unless ``allow_lookahead`` is false (a training loop that cannot run it).
    When the best plan is less than ``MIN_GAIN`` faster than the temporal plan, the temporal plan
    is returned (with its predictions).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    check_inputs(graph, perf_model, batch_size)
    if perf_model.capacity != device.sm_count:
        raise ValueError(
            f"the performance model covers {perf_model.capacity} SMs but {device.name} has {device.sm_count};"
            " plan for the device the model was fitted on, or wrap the model for a what-if"
        )
    # The search asks for the same few (unit, pass, batch, quota) times again and again.
    perf_model = _Memo(perf_model)
    counts = _micro_batch_counts(batch_size, micro_batches, max_micro_batches)
    budget = MEMORY_HEADROOM * device.memory_bytes
    counts = _fitting(graph, perf_model, device, batch_size, counts, budget)
    levels = graph.levels()
    options = device.quotas()
    cache: dict[tuple, tuple[float, int]] = {}
    specs: dict[tuple, Any] = {}  # the task graph of each (micro-batch count, lookahead)
    # Frozen sources (no backward, inputs from the batch only) may run one step ahead, whole batches only.
    frozen = tuple(
        m for m in graph.topological_order() if not graph.inputs[m] and not perf_model.backward.get(m, True)
    )
    variants = [(k, ()) for k in counts]
    if allow_lookahead and frozen and 1 in counts:
        variants.append((1, frozen))

    def evaluate(k: int, quotas: tuple[int, ...], ahead: tuple[str, ...] = ()) -> tuple[float, int]:
        key = (k, ahead, quotas)
        if key not in cache:
            candidate = _make_plan(levels, quotas, k, device, ahead)
            if (k, ahead) not in specs:
                specs[(k, ahead)] = _tasks(graph, perf_model, k, frozenset(ahead))
            timeline = _simulate(graph, perf_model, candidate, batch_size, specs[(k, ahead)])
            cache[key] = (
                timeline.step_s if timeline.peak_bytes <= budget else float("inf"),
                timeline.peak_bytes,
            )
        return cache[key]

    alone = [  # each unit's time alone on the whole device, in the order of the flat quota vector
        sum(perf_model.predict(m, p, batch_size, device.sm_count) for p in ("forward", "backward"))
        for level in levels
        for m in level
    ]
    best: tuple[float, int, tuple[int, ...], tuple[str, ...]] | None = None
    for k, ahead in variants:
        score = functools.partial(_with_ahead, evaluate, ahead)
        if method == "exhaustive":
            found = _exhaustive(levels, options, device, k, score)
        else:
            found = _local_search(levels, options, device, k, score, alone)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], k, found[1], ahead)
    base = temporal_plan(graph, device.name)
    base_timeline = simulate(graph, perf_model, base, batch_size)
    base = replace(
        base,
        predicted_step_s=base_timeline.step_s,
        predicted_temporal_s=base_timeline.step_s,
        predicted_peak_bytes=base_timeline.peak_bytes,
    )
    nothing_fits = best is None or best[0] == float("inf")
    if nothing_fits and base_timeline.peak_bytes > budget:
        leanest_peak, leanest = min((peak, key[0]) for key, (_, peak) in cache.items())
        raise ValueError(
            f"no plan keeps the predicted activations of a batch of {batch_size} within {MEMORY_HEADROOM:.0%}"
            f" of {device.name}'s {device.memory_bytes / 2**30:.2f} GiB: the temporal plan needs"
            f" {base_timeline.peak_bytes / 2**30:.2f} GiB, the leanest plan searched"
            f" {leanest_peak / 2**30:.2f} GiB ({leanest} micro-batch{'es' if leanest > 1 else ''});"
            " use a smaller batch"
        )
    if nothing_fits or best[0] > base_timeline.step_s * (1 - MIN_GAIN):
        notes = []
        if nothing_fits:
            notes.append(f"no plan searched keeps its activations within {MEMORY_HEADROOM:.0%} of memory")
        else:
            gain = 1 - best[0] / base_timeline.step_s
            notes.append(
                f"{method} search found a predicted gain of {gain:.1%}, under {MIN_GAIN:.0%}:"
                " temporal plan kept"
            )
        if base_timeline.peak_bytes > budget:
            notes.append(
                f"the temporal plan's predicted activations ({base_timeline.peak_bytes / 2**30:.2f} GiB)"
                f" exceed {MEMORY_HEADROOM:.0%} of {device.name}'s memory"
            )
        return base.with_notes(*notes)
    step, k, quotas, ahead = best
    return replace(
        _make_plan(levels, quotas, k, device, ahead),
        method=method,
        predicted_step_s=step,
        predicted_temporal_s=base_timeline.step_s,
        predicted_peak_bytes=cache[(k, ahead, quotas)][1],
    )


def _with_ahead(evaluate: Any, ahead: tuple[str, ...], k: int, quotas: tuple[int, ...]) -> tuple[float, int]:
    return evaluate(k, quotas, ahead)


class _Memo:
    """A performance model that remembers every answer (same interface, for the simulator)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.modules, self.capacity = model.modules, model.capacity
        self.calls, self.backward = model.calls, model.backward
        self._times: dict[tuple, float] = {}
        self._memory: dict[tuple, int] = {}

    def predict(self, module: str, pass_: str, batch: float, quota: float) -> float:
        key = (module, pass_, batch, quota)
        if key not in self._times:
            self._times[key] = self.model.predict(module, pass_, batch, quota)
        return self._times[key]

    def memory(self, module: str, batch: float) -> int:
        key = (module, batch)
        if key not in self._memory:
            self._memory[key] = self.model.memory(module, batch)
        return self._memory[key]


def _micro_batch_counts(batch_size: int, wanted: int | None, largest: int) -> list[int]:
    if wanted is None:
        return [k for k in range(1, max(1, largest) + 1) if batch_size % k == 0]
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise ValueError(f"micro_batches={wanted!r} must be a positive whole number")
    if batch_size % wanted:
        raise ValueError(
            f"a batch of {batch_size} samples cannot be split into {wanted} equal micro-batches"
            f" ({batch_size} % {wanted} = {batch_size % wanted}); use a divisor of {batch_size}"
        )
    return [wanted]


def _fitting(
    graph: ModuleGraph, perf_model: Any, device: Any, batch_size: int, counts: list[int], budget: float
) -> list[int]:
    """The micro-batch counts at which every unit's activations fit alone (an error with the numbers
    if there are none)."""
    fitting = [
        k for k in counts if all(perf_model.memory(m, batch_size / k) <= budget for m in graph.modules)
    ]
    if fitting:
        return fitting
    k = max(counts)
    worst = max(graph.modules, key=lambda m: perf_model.memory(m, batch_size / k))
    need = perf_model.memory(worst, batch_size / k)
    raise ValueError(
        f"module {worst!r} needs {need / 2**30:.2f} GiB of activations for {batch_size / k:g} samples"
        f" ({k} micro-batch{'es' if k > 1 else ''} of a batch of {batch_size}), more than"
        f" {MEMORY_HEADROOM:.0%} of {device.name}'s {device.memory_bytes / 2**30:.2f} GiB, even alone"
    )


def _make_plan(
    levels: list[list[str]], quotas: tuple[int, ...], k: int, device: Any, ahead: tuple[str, ...] = ()
) -> Plan:
    flat = iter(quotas)
    phases = tuple(
        Phase({m: (None if (q := next(flat)) >= device.sm_count else q) for m in level}) for level in levels
    )
    return Plan(phases=phases, micro_batches=k, device=device.name, lookahead=ahead)


def _exhaustive(levels, options, device, k, evaluate):
    """Every split: each unit any quota, the quotas of a phase adding up to at most the device."""
    import itertools

    per_level = [
        [combo for combo in itertools.product(options, repeat=len(level)) if sum(combo) <= device.sm_count]
        for level in levels
    ]
    best = None
    for parts in itertools.product(*per_level):
        quotas = tuple(q for part in parts for q in part)
        step = evaluate(k, quotas)[0]
        if best is None or step < best[0]:
            best = (step, quotas)
    return best


def _local_search(levels, options, device, k, evaluate, alone):
    """Steepest descent from three starting splits; the best end point.

    Moves: one unit one or two granules up or down, or one granule from any unit to any other.
    Starts: the device split equally in each phase, half of that (room for phases to overlap), and
    split in proportion to each unit's time alone on the whole device.
    """
    index = {q: n for n, q in enumerate(options)}
    bounds = []  # (start, end) of each level in the flat quota vector
    for level in levels:
        start = bounds[-1][1] if bounds else 0
        bounds.append((start, start + len(level)))
    size = bounds[-1][1]

    def feasible(quotas: tuple[int, ...]) -> bool:
        return all(sum(quotas[a:b]) <= device.sm_count for a, b in bounds)

    def snap(value: float) -> int:
        return max((q for q in options if q <= value), default=options[0])

    def proportional(a: int, b: int) -> list[int]:
        total = sum(alone[a:b]) or 1.0
        return [snap(device.sm_count * alone[i] / total) for i in range(a, b)]

    def repaired(quotas: tuple[int, ...]) -> tuple[int, ...] | None:
        """``quotas`` with the largest quota of an over-full phase lowered until every phase fits."""
        quotas = list(quotas)
        for a, b in bounds:
            while sum(quotas[a:b]) > device.sm_count:
                largest = max(range(a, b), key=lambda i: quotas[i])
                if index[quotas[largest]] == 0:
                    return None  # the phase has more units than the device has smallest quotas
                quotas[largest] = options[index[quotas[largest]] - 1]
        return tuple(quotas)

    starts = [
        tuple(snap(device.sm_count / (b - a)) for a, b in bounds for _ in range(b - a)),
        tuple(snap(device.sm_count / (b - a) / 2) for a, b in bounds for _ in range(b - a)),
        tuple(q for a, b in bounds for q in proportional(a, b)),
    ]
    # Snapping up to the smallest quota can overfill a phase of small units: repair, never start infeasible.
    starts = [fixed for start in starts if (fixed := repaired(start)) is not None]
    best = None
    for start in dict.fromkeys(starts):
        current, step = start, evaluate(k, start)[0]
        while True:
            moves = []
            for i, q in enumerate(current):
                for delta in (-2, -1, 1, 2):
                    j = index[q] + delta
                    if 0 <= j < len(options):
                        moves.append((*current[:i], options[j], *current[i + 1 :]))
            for i in range(size):
                for j in range(size):
                    if i != j and index[current[i]] > 0 and index[current[j]] + 1 < len(options):
                        moved = list(current)
                        moved[i], moved[j] = options[index[current[i]] - 1], options[index[current[j]] + 1]
                        moves.append(tuple(moved))
            scored = [(evaluate(k, m)[0], m) for m in moves if feasible(m)]
            if not scored:
                break
            new_step, new = min(scored)
            if new_step >= step * (1 - 1e-9):
                break
            current, step = new, new_step
        if best is None or step < best[0]:
            best = (step, current)
    return best
