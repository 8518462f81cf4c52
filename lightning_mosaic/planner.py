"""The search for a deployment plan: SM quotas per unit and phase, micro-batches, units one step ahead.

:func:`plan` simulates candidate plans (``simulator.py``) with a performance model and returns the
fastest that fits memory, or the temporal plan when nothing is at least ``MIN_GAIN`` faster. Plans
themselves are plain data (``plan.py``).

A candidate gives every unit a quota from the device's (``DeviceSpec.quotas()``). A phase of several
units either runs them side by side, each on a partial quota, those quotas adding up to at most the
device, or one after another, each on the whole device: so the temporal plan is inside the search
space. A phase of one unit may take any quota. Candidates are simulated on
plain arrays (no objects), each against a limit: a candidate is dropped as soon as its simulated
step passes the best step known, and every answer is cached.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.graphcost import action_times, graphed, pool_bytes
from lightning_mosaic.plan import Phase, Plan, temporal_plan
from lightning_mosaic.schedule import TaskGraph, actions, peak_bytes, place
from lightning_mosaic.simulator import check_inputs, simulate

if TYPE_CHECKING:
    from lightning_mosaic.devices import DeviceSpec
    from lightning_mosaic.perfmodel import CostModel

METHODS = ("heuristic", "exhaustive")
MIN_GAIN = 0.02  # below this predicted gain, the temporal plan is returned
MEMORY_HEADROOM = 0.9  # share of device memory the predicted activations may use
EXACT_LIMIT = 4096  # the heuristic tries every split where there are at most this many

Quotas = tuple[int, ...]  # one quota per unit, phase after phase (the flat order of ``graph.levels()``)


def plan(
    graph: ModuleGraph,
    perf_model: CostModel,
    device: DeviceSpec,
    batch_size: int,
    method: str = "heuristic",
    micro_batches: int | None = None,
    max_micro_batches: int = 8,
    allow_lookahead: bool = True,
    exact_limit: int = EXACT_LIMIT,
    resident_bytes: int = 0,
    graphs: tuple[str, ...] | list[str] = (),
) -> Plan:
    """The deployment plan with the shortest simulated step for ``graph`` on ``device``.

    ``perf_model`` is a fitted :class:`~lightning_mosaic.perfmodel.PerfModel` or an
    :class:`~lightning_mosaic.perfmodel.AnalyticModel` whose capacity is ``device.sm_count``;
    ``device`` a :class:`~lightning_mosaic.devices.DeviceSpec`.
    Phases are the graph's levels (units that do not depend on each other); each unit gets a quota
    from ``device.quotas()`` (the whole device = ``None``; see the module docstring for what may
    share a phase). ``micro_batches`` fixes the micro-batch count; by default the divisors of
    ``batch_size`` up to ``max_micro_batches`` are searched. ``method="heuristic"`` simulates every
    split where there are at most ``exact_limit`` of them, and beyond that searches locally from
    four starting splits (see :func:`_local_search`); ``"exhaustive"`` simulates every split (the
    reference; small instances only). The predicted activations must fit
    ``MEMORY_HEADROOM`` of the device's memory less ``resident_bytes``, what every rank holds
    besides them (parameters, gradients, optimizer state; per rank under a sharded layout:
    :func:`lightning_mosaic.sharding.resident_bytes`). Frozen sources (``graph.frozen_sources``)
    may also run one step ahead (``Plan.lookahead``; whole batches only): that variant is searched
    too, unless ``allow_lookahead`` is false (a training loop that cannot run it).
    When the best plan is less than ``MIN_GAIN`` faster than the temporal plan, the temporal plan
    is returned (with its predictions).

    ``graphs`` are units that replay CUDA graphs whatever the plan (``graphcost.py``: one replay of
    host time per pass, their activations in pools for the whole run); every candidate, the
    temporal one included, is simulated with them, and the plan lists those not computed one step
    ahead. ``predicted_temporal_s`` stays the plain temporal step (no graphs): what the plan is
    measured against.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    check_inputs(graph, perf_model, batch_size)
    unknown = [m for m in graphs if m not in graph.modules]
    if unknown:
        raise ValueError(f"graphs {unknown} are not units of the module graph: {graph.modules}")
    if perf_model.capacity != device.sm_count:
        raise ValueError(
            f"the performance model covers {perf_model.capacity} SMs but {device.name} has {device.sm_count};"
            " plan for the device the model was fitted on, or wrap the model for a what-if"
        )
    idle = [m for m in graph.modules if m not in graph.called]
    if idle and not graph.called:
        return temporal_plan(graph, device.name, notes=["no unit ran in the traced step: temporal plan"])
    if idle:  # run as plain code whenever they are called (validation): alone, after the others
        found = plan(
            graph.subgraph(graph.called),
            perf_model,
            device,
            batch_size,
            method=method,
            micro_batches=micro_batches,
            max_micro_batches=max_micro_batches,
            allow_lookahead=allow_lookahead,
            exact_limit=exact_limit,
            resident_bytes=resident_bytes,
            graphs=[m for m in graphs if m in graph.called],
        )
        return replace(found, phases=(*found.phases, *(Phase({m: None}) for m in idle))).with_notes(
            f"not called in the traced step, so alone on the whole device: {', '.join(idle)}"
        )
    counts = _micro_batch_counts(batch_size, micro_batches, max_micro_batches)
    if not isinstance(resident_bytes, int) or resident_bytes < 0:
        raise ValueError(f"resident_bytes={resident_bytes!r} must be a whole number of bytes, 0 or more")
    budget = MEMORY_HEADROOM * device.memory_bytes - resident_bytes
    if budget <= 0:
        raise ValueError(
            f"{resident_bytes / 2**30:.2f} GiB resident per rank (parameters, gradients, optimizer state)"
            f" leave no room for activations in {MEMORY_HEADROOM:.0%} of {device.name}'s"
            f" {device.memory_bytes / 2**30:.2f} GiB: shard the largest units"
        )
    plain_model, graphs = perf_model, tuple(graphs)
    perf_model = graphed(perf_model, graphs)
    counts = _fitting(graph, perf_model, device, batch_size, counts, budget)
    levels = graph.levels()
    evaluate = _Evaluator(graph, perf_model, device, batch_size, budget, graphs)
    frozen = tuple(graph.frozen_sources)
    variants = [(k, ()) for k in counts]
    if allow_lookahead and frozen and 1 in counts:
        variants.append((1, frozen))
    options = device.quotas()
    alone = [  # each unit's time alone on the whole device, in the order of the flat quota vector
        sum(perf_model.predict(m, p, batch_size, device.sm_count) for p in ("forward", "backward"))
        for level in levels
        for m in level
    ]
    best: tuple[float, int, Quotas, tuple[str, ...]] | None = None
    exact = method == "exhaustive" or _splits_at_most(levels, options, device.sm_count, exact_limit)
    for k, ahead in variants:
        limit = best[0] if best is not None else math.inf
        if exact:
            found = _exhaustive(levels, options, device.sm_count, k, ahead, evaluate, limit)
        else:
            found = _local_search(levels, options, device.sm_count, k, ahead, evaluate, alone, limit)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], k, found[1], ahead)
    temporal = replace(temporal_plan(graph, device.name), graphs=graphs)
    base_timeline = simulate(graph, perf_model, temporal, batch_size)
    plain_s = simulate(graph, plain_model, temporal_plan(graph, device.name), batch_size).step_s
    base = replace(
        temporal,
        predicted_step_s=base_timeline.step_s,
        predicted_temporal_s=plain_s,
        predicted_peak_bytes=base_timeline.peak_bytes,
    )
    nothing_fits = best is None or best[0] == math.inf
    if nothing_fits and base_timeline.peak_bytes > budget:
        leanest_peak, leanest = evaluate.leanest()
        raise ValueError(
            f"no plan keeps the predicted activations of a batch of {batch_size} within {MEMORY_HEADROOM:.0%}"
            f" of {device.name}'s {device.memory_bytes / 2**30:.2f} GiB: the temporal plan needs"
            f" {base_timeline.peak_bytes / 2**30:.2f} GiB, the leanest plan searched"
            f" {leanest_peak / 2**30:.2f} GiB ({leanest} micro-batch{'es' if leanest > 1 else ''});"
            " use a smaller batch"
        )
    if nothing_fits or best[0] > base_timeline.step_s * (1 - MIN_GAIN):
        notes = []
        if nothing_fits and evaluate.simulated():
            leanest_peak, leanest = evaluate.leanest()
            notes.append(
                f"every plan searched that runs units side by side needs more than {MEMORY_HEADROOM:.0%} of"
                f" {device.name}'s {device.memory_bytes / 2**30:.2f} GiB for its predicted activations (the"
                f" leanest {leanest_peak / 2**30:.2f} GiB, with {leanest} micro-batch"
                f"{'es' if leanest > 1 else ''}); the temporal plan needs"
                f" {base_timeline.peak_bytes / 2**30:.2f} GiB"
            )
        elif nothing_fits:
            notes.append(
                f"no split of {device.name}'s {device.sm_count} {device.unit_label} gives every unit of a"
                f" phase its smallest quota ({min(options)})"
            )
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
        predicted_temporal_s=plain_s,
        predicted_peak_bytes=evaluate.peak(k, ahead, quotas),
        graphs=tuple(m for m in graphs if m not in ahead),
    )


class _Evaluator:
    """Simulated step time of candidate quota vectors, on arrays, cached, stopped at a limit.

    ``evaluate(k, ahead, quotas, limit)`` is the step time of the candidate, ``inf`` when its
    activations exceed the memory budget, and some value ``>= limit`` when its step would exceed
    ``limit`` (the simulation stopped there).
    """

    def __init__(
        self,
        graph: ModuleGraph,
        model: CostModel,
        device: DeviceSpec,
        batch_size: int,
        budget: float,
        graphs: tuple[str, ...] = (),
    ) -> None:
        self.graph, self.model, self.batch_size, self.budget = graph, model, batch_size, budget
        self.graphs = graphs
        self.capacity = device.sm_count
        self.order = [m for level in graph.levels() for m in level]
        self._specs: dict[tuple, Any] = {}
        self._times: dict[tuple, tuple[float, float]] = {}
        self._results: dict[tuple, tuple[float, int | None, bool]] = {}  # value, peak, exact

    def _spec(self, k: int, ahead: tuple[str, ...]) -> Any:
        if (k, ahead) not in self._specs:
            steps = actions(self.graph, k, self.model.backward)
            spec = TaskGraph.of(self.graph, steps, ahead)
            slot = {m: i for i, m in enumerate(self.order)}
            size = self.batch_size / k
            held = [
                self.model.memory(a.unit, size) if a.pass_ == "forward" and a.unit not in self.graphs else 0
                for a in steps
            ]
            pools = pool_bytes(self.model, self.graphs, self.batch_size, k)
            passes = [(a.unit, a.pass_) for a in steps]  # plain tuples: the loop below runs per candidate
            self._specs[(k, ahead)] = (spec, [slot[a.unit] for a in steps], held, pools, passes)
        return self._specs[(k, ahead)]

    def _time(self, k: int, module: str, pass_: str, quota: int) -> tuple[float, float]:
        key = (k, module, pass_, quota)
        if key not in self._times:
            self._times[key] = action_times(self.model, module, pass_, self.batch_size / k, quota)
        return self._times[key]

    def __call__(self, k: int, ahead: tuple[str, ...], quotas: Quotas, limit: float = math.inf) -> float:
        key = (k, ahead, quotas)
        known = self._results.get(key)
        if known is not None and (known[2] or known[0] >= limit):
            return known[0]
        spec, slots, held, pools, passes = self._spec(k, ahead)
        per_task = [quotas[s] for s in slots]
        times = [self._time(k, m, p, q) for (m, p), q in zip(passes, per_task, strict=True)]
        placed = place(spec, [t[0] for t in times], [t[1] for t in times], per_task, self.capacity, limit)
        if placed is None:
            self._results[key] = (limit, None, False)
            return limit
        start, end, _ = placed
        peak = peak_bytes(spec, start, end, held) + pools
        value = max(end, default=0.0) if peak <= self.budget else math.inf
        self._results[key] = (value, peak, True)
        return value

    def peak(self, k: int, ahead: tuple[str, ...], quotas: Quotas) -> int:
        """The predicted peak activation memory of a candidate (simulated in full if need be)."""
        known = self._results.get((k, ahead, quotas))
        if known is None or known[1] is None:
            self._results.pop((k, ahead, quotas), None)
            self(k, ahead, quotas)
            known = self._results[(k, ahead, quotas)]
        assert known[1] is not None
        return known[1]

    def simulated(self) -> bool:
        """Some candidate was simulated in full."""
        return any(exact and peak is not None for _, peak, exact in self._results.values())

    def leanest(self) -> tuple[int, int]:
        """The smallest peak simulated in full, and its micro-batch count."""
        return min(
            (peak, key[0]) for key, (_, peak, exact) in self._results.items() if exact and peak is not None
        )


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
    levels: list[list[str]], quotas: Quotas, k: int, device: Any, ahead: tuple[str, ...] = ()
) -> Plan:
    flat = iter(quotas)
    phases = tuple(
        Phase({m: (None if (q := next(flat)) >= device.sm_count else q) for m in level}) for level in levels
    )
    return Plan(phases=phases, micro_batches=k, device=device.name, lookahead=ahead)


def _bounds(levels: list[list[str]]) -> list[tuple[int, int]]:
    """``(start, end)`` of each level in the flat quota vector."""
    out: list[tuple[int, int]] = []
    for level in levels:
        start = out[-1][1] if out else 0
        out.append((start, start + len(level)))
    return out


def _fits(quotas: Quotas, bounds: list[tuple[int, int]], sm_count: int) -> bool:
    """Every phase of several units runs them side by side (partial quotas that fit the device) or
    one after another (each on the whole device)."""
    for a, b in bounds:
        phase = quotas[a:b]
        if len(phase) > 1 and any(q >= sm_count for q in phase):
            if not all(q >= sm_count for q in phase):
                return False
        elif sum(phase) > sm_count:
            return False
    return True


def _phase_splits(units: int, options: list[int], sm_count: int) -> Iterator[Quotas]:
    """Every quota vector of one phase (see :func:`_fits`), built directly: no split is filtered out."""
    if units == 1:
        yield from ((q,) for q in options)
        return
    partial = [q for q in options if q < sm_count]

    def build(i: int, room: int) -> Iterator[Quotas]:
        if i == units:
            yield ()
            return
        for q in partial:
            if q > room:
                break  # ascending: the larger ones do not fit either
            for rest in build(i + 1, room - q):
                yield (q, *rest)

    yield from build(0, sm_count)
    yield (sm_count,) * units  # one after another


def _splits_at_most(levels: list[list[str]], options: list[int], sm_count: int, limit: int) -> bool:
    """Whether there are at most ``limit`` splits of the whole graph (counted no further than that)."""
    total = 1
    for level in levels:
        total *= sum(1 for _ in itertools.islice(_phase_splits(len(level), options, sm_count), limit + 1))
        if total > limit:
            return False
    return True


def _exhaustive(levels, options, sm_count, k, ahead, evaluate, limit):
    """Every split (see :func:`_phase_splits`); the best below ``limit``, or None."""
    per_level = [list(_phase_splits(len(level), options, sm_count)) for level in levels]
    best = None
    for parts in itertools.product(*per_level):
        quotas = tuple(q for part in parts for q in part)
        bar = best[0] if best is not None else limit
        step = evaluate(k, ahead, quotas, bar)
        if step < bar:
            best = (step, quotas)
    return best


def _local_search(levels, options, sm_count, k, ahead, evaluate, alone, limit):
    """Steepest descent from four starting splits; the best end point below ``limit``, or None.

    Moves: one unit one or two granules up or down (the top of the ladder is the whole device), a
    phase switched between side by side (split equally, or in proportion to the units' times) and
    one after another, or one granule from a unit to another of its phase; where none of these
    helps, two units one granule each. Starts: every unit on the
    whole device (the temporal order within phases), the device split equally in each phase, half of
    that (room for phases to overlap), and split in proportion to each unit's time alone on the
    whole device.
    """
    index = {q: n for n, q in enumerate(options)}
    bounds = _bounds(levels)

    def snap(value: float) -> int:
        return max((q for q in options if q <= value), default=options[0])

    def proportional(a: int, b: int) -> list[int]:
        total = sum(alone[a:b]) or 1.0
        return [snap(sm_count * alone[i] / total) for i in range(a, b)]

    def repaired(quotas: Quotas) -> Quotas | None:
        """``quotas`` with the largest quota of an over-full phase lowered until every phase fits."""
        quotas = list(quotas)
        for a, b in bounds:
            if b - a > 1 and all(q >= sm_count for q in quotas[a:b]):
                continue  # one after another
            while sum(quotas[a:b]) > sm_count:
                largest = max(range(a, b), key=lambda i: quotas[i])
                if index[quotas[largest]] == 0:
                    return None  # the phase has more units than the device has smallest quotas
                quotas[largest] = options[index[quotas[largest]] - 1]
        return tuple(quotas)

    def moves(current: Quotas) -> Iterator[Quotas]:
        for i, q in enumerate(current):
            for delta in (-2, -1, 1, 2):
                j = index[q] + delta
                if 0 <= j < len(options):
                    yield (*current[:i], options[j], *current[i + 1 :])
        for a, b in bounds:  # a phase between side by side and one after another
            if b - a > 1:
                if current[a] >= sm_count:
                    for split in (starts[1][a:b], starts[3][a:b]):
                        yield (*current[:a], *split, *current[b:])
                else:
                    yield (*current[:a], *(sm_count,) * (b - a), *current[b:])
        for a, b in bounds:  # one granule between two units of a phase
            for i, j in itertools.permutations(range(a, b), 2):
                if index[current[i]] > 0 and index[current[j]] + 1 < len(options):
                    moved = list(current)
                    moved[i], moved[j] = options[index[current[i]] - 1], options[index[current[j]] + 1]
                    yield tuple(moved)

    size = bounds[-1][1]
    starts = [
        (sm_count,) * size,
        tuple(snap(sm_count / (b - a)) for a, b in bounds for _ in range(b - a)),
        tuple(snap(sm_count / (b - a) / 2) for a, b in bounds for _ in range(b - a)),
        tuple(q for a, b in bounds for q in proportional(a, b)),
    ]
    # Snapping up to the smallest quota can overfill a phase of small units: repair, never start infeasible
    # (a phase that cannot be split keeps its units one after another).
    starts = [repaired(start) or starts[0] for start in starts]

    def pairs(current: Quotas) -> Iterator[Quotas]:
        """Two units one granule each: what a single move cannot reach across a plateau."""
        for i, j in itertools.combinations(range(len(current)), 2):
            for di, dj in itertools.product((-1, 1), repeat=2):
                qi, qj = index[current[i]] + di, index[current[j]] + dj
                if 0 <= qi < len(options) and 0 <= qj < len(options):
                    moved = list(current)
                    moved[i], moved[j] = options[qi], options[qj]
                    yield tuple(moved)

    def descend(current: Quotas, step: float, neighbours: Any) -> tuple[float, Quotas] | None:
        """The best neighbour of ``current`` shorter than ``step``, or None."""
        improved = None
        for candidate in neighbours(current):
            if not _fits(candidate, bounds, sm_count):
                continue
            bar = improved[0] if improved is not None else step * (1 - 1e-9)
            value = evaluate(k, ahead, candidate, bar)
            if value < bar:
                improved = (value, candidate)
        return improved

    best = None
    for start in dict.fromkeys(s for s in starts if s is not None):
        current, step = start, evaluate(k, ahead, start)
        while True:
            improved = descend(current, step, moves) or descend(current, step, pairs)
            if improved is None:
                break
            step, current = improved
        if step < limit and (best is None or step < best[0]):
            best = (step, current)
    return best
