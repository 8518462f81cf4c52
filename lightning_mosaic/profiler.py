"""Measure each unit alone: replay its real inputs over a grid of (batch fraction, quota).

:class:`InputCapture` records every unit's inputs from one ordinary step (cloned, detached, with
their ``requires_grad`` flags, grad mode, autocast state and train/eval mode). :func:`profile_units`
then replays each unit by itself: a forward, and a backward with respect to its trainable
parameters and grad-requiring inputs (random ``grad_outputs`` of the outputs' shapes, through
``torch.autograd.grad`` so no ``.grad`` is touched), at each grid point:

- batch: the captured inputs sliced along their batch dimension to 1/4, 1/2 and all of the batch
  (a packed input, such as Qwen-VL's patches, cut by the lengths tensor beside it; a unit with its own
  ``mosaic_split_batch((args, kwargs), k)`` replayed on the first of its ``k`` parts);
- quota: on a GPU, SM counts from the smallest green context the hardware allows up to all SMs
  (about six steps), each run on a stream inside a green context of that size (full GPU only,
  with a warning, where green contexts are unavailable); on a CPU, intra-op thread counts 1..n in
  a worker thread.

Each point runs ``warmup`` untimed (at least one, which also sizes the repeats) and ``repeats``
timed times (CUDA events on a GPU, ``perf_counter`` on a CPU) and keeps the median; a run shorter
than a few milliseconds is repeated more (up to 50 ms of timed runs, at most 100), since short
runs jitter most. A first
run per (unit, batch) on the whole device measures memory: bytes autograd saves for backward,
and on a GPU the peak allocated. A point that runs out of memory is recorded as infeasible and
profiling goes on. ``max_seconds`` bounds the
whole profile: repeats shrink to fit the time left, and when it is spent the remaining points are
skipped (the profile says it is incomplete); every unit's full batch on the whole device is
measured first and always. The replay leaves the model as it found it: RNG
states, buffers (BatchNorm statistics), train/eval mode and parameters' ``.grad`` are unchanged.

Given a capture (``engine/graphs.py``; CUDA graphs on a GPU), each unit is then captured at the full
batch, as training would capture it, and its replays are timed on the whole device: forward and
backward, device and host (``Profile.graphed``), so the performance model knows what a graph saves.
"""

from __future__ import annotations

import datetime
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

import lightning_mosaic.engine.green as green
from lightning_mosaic._logging import get_logger
from lightning_mosaic._tree import iter_tensors, map_tensors
from lightning_mosaic.clock import Clock
from lightning_mosaic.devices import DeviceSpec, device_name, unit_label
from lightning_mosaic.engine.graphable import first
from lightning_mosaic.engine.graphs import Capture, GraphedCall, Ineligible
from lightning_mosaic.inputs import Captured, device_of
from lightning_mosaic.microbatch import HOOK, check_split
from lightning_mosaic.packing import find_packing
from lightning_mosaic.profile import (
    MemorySample,
    ModuleInfo,
    Profile,
    Sample,
    batch_grid,
    fingerprint,
)

log = get_logger(__name__)
DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)
MIN_POINT_SECONDS = 0.05  # timed runs of a point add up to at least this much, time budget allowing
MAX_REPEATS = 100


# ---------------------------------------------------------------------- capturing inputs


def quota_grid(capacity: int, minimum: int = 1, multiple: int = 1, steps: int = 6) -> list[int]:
    """About ``steps`` quotas from ``minimum`` to ``capacity`` on the granularity, evenly spaced in
    square root: denser at small quotas, where time changes fastest, without leaving a wide gap
    below the whole device, where large modules get planned."""
    if capacity <= steps and multiple == 1:
        return list(range(max(1, minimum), capacity + 1))
    out = {capacity}
    low = max(minimum, multiple)
    for i in range(steps - 1):
        want = (math.sqrt(low) + (math.sqrt(capacity) - math.sqrt(low)) * i / (steps - 1)) ** 2
        rounded = max(low, multiple * round(want / multiple))
        if rounded < capacity:
            out.add(rounded)
    return sorted(out)


class _Quotas:
    """Runs a function under each quota: a green-context stream per SM count, or a thread count."""

    def __init__(self, device: torch.device, quotas: Sequence[int] | None) -> None:
        self.device = device
        self.notes: list[str] = []
        self.grants: list[dict[str, int]] = []
        self.api_text: str | None = None
        self._streams: dict[int, Any] = {}  # their green contexts live for the process (engine/green.py)
        spec = DeviceSpec.from_current(device)
        self.unit, self.capacity = spec.quota_unit, spec.sm_count
        self.minimum, self.multiple = spec.minimum, spec.sm_granularity
        if device.type == "cuda":
            self._setup_cuda(quotas)
        else:
            wanted = self._checked(quotas) if quotas is not None else quota_grid(self.capacity)
            self.quotas = sorted(set(wanted) | {self.capacity})  # the whole device is always measured

    def _checked(self, quotas: Sequence[int]) -> list[int]:
        bad = [
            q for q in quotas if not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= self.capacity
        ]
        if bad or not quotas:
            unit = unit_label(self.unit)
            raise ValueError(
                f"quotas {list(quotas)!r} must be whole numbers of {unit} from 1 to {self.capacity}"
                f" (the device's {unit}); bad: {bad}"
            )
        return sorted(set(quotas))

    def _setup_cuda(self, quotas: Sequence[int] | None) -> None:
        wanted = self._checked(quotas) if quotas is not None else None
        api = green.detect()
        if api is None or not api.usable:
            reason = "this torch has no torch.cuda.green_contexts" if api is None else api.describe()
            log.warning(
                f"profiling on the whole GPU only: green contexts are unavailable ({reason}); the performance"
                " model will assume time scales inversely with the SM quota"
            )
            self.notes.append(f"whole GPU only: green contexts unavailable ({reason})")
            self.quotas = [self.capacity]
            return
        self.api_text = api.describe()
        requested = wanted or quota_grid(self.capacity, self.minimum, self.multiple)
        granted: dict[int, int] = {}
        for want in requested:
            g = green.grant({"q": want}, self.capacity, self.minimum, self.multiple)["q"]
            if not g.partitioned:
                granted[want] = self.capacity
                continue
            try:
                streams, _, _ = green.make_streams(api, {"q": g}, self.device)
            except Exception as err:  # a driver without green-context support
                log.warning(f"green context of {g.granted} SMs could not be created ({err}); point skipped")
                self.notes.append(f"green context of {g.granted} SMs failed: {err}")
                continue
            self._streams[g.granted] = streams["q"]
            granted[want] = g.granted
            self.grants.append({"requested": want, "granted": g.granted})
        self.quotas = sorted(set(granted.values()) | {self.capacity})

    def run(self, quota: int, fn: Callable[[], Any]) -> Any:
        """``fn()`` under ``quota`` SMs (a green-context stream) or threads (a worker thread)."""
        if self.unit == "thread":
            from lightning_mosaic.engine.cpu import CpuThreadBackend

            return CpuThreadBackend(self.capacity).run_parallel({"profile": (fn, quota)})["profile"].value
        stream = self._streams.get(quota)
        if stream is None:
            return fn()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out


# ---------------------------------------------------------------------- replaying one unit


class _Replay:
    """One unit's captured call, sliced to a batch, run forward and backward under a clock."""

    def __init__(self, name: str, module: nn.Module, call: Captured, batch_size: int) -> None:
        self.name, self.module, self.call = name, module, call
        self.batch_size = batch_size
        self.split = getattr(module, HOOK, None)  # the unit's own splitter of its inputs
        self.rows, self.dims, self.packing = batch_size, [], []
        if not callable(self.split):
            self.rows, self.dims = _batch_dims(call, batch_size)
            if self.rows is not None:
                self.packing = find_packing(list(iter_tensors((call.args, call.kwargs))), self.rows)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.backward = call.grad_enabled and (
            bool(self.params) or any(t.requires_grad for t in iter_tensors((call.args, call.kwargs)))
        )
        self._inputs: dict[int, tuple[tuple, dict, list[torch.Tensor]]] = {}
        self._grads: dict[int, list[torch.Tensor]] = {}

    def info(self, calls: int) -> ModuleInfo:
        return ModuleInfo(
            name=self.name,
            parameters=sum(p.numel() for p in self.module.parameters()),
            trainable=bool(self.params),
            backward=self.backward,
            batch_rows=self.rows,
            calls=calls,
        )

    def inputs(self, batch: int) -> tuple[tuple, dict, list[torch.Tensor]]:
        """Arguments for ``batch`` samples and the input tensors to differentiate."""
        if batch not in self._inputs:
            if callable(self.split):
                args, kwargs = self._split(batch)
            else:
                args, kwargs = self._cut(batch)
            leaves = [t for t in iter_tensors((args, kwargs)) if t.requires_grad]
            self._inputs[batch] = (args, kwargs, leaves)
        return self._inputs[batch]

    def _cut(self, batch: int) -> tuple[tuple, dict]:
        """The captured inputs cut to ``batch`` samples: along their batch dimension, packed tensors
        by their lengths (``packing.py``)."""
        n = self.rows if self.rows is None else max(1, round(batch / self.batch_size * self.rows))
        dims, packing = iter(self.dims), iter(self.packing or [None] * len(self.dims))

        def cut(t: torch.Tensor) -> torch.Tensor:
            dim, packed = next(dims), next(packing)
            if n is None or (dim is None and packed is None):
                return t
            out = (t.narrow(dim, 0, n) if dim is not None else packed.take(t, 0, n)).detach()
            return out.requires_grad_(True) if t.requires_grad else out

        return map_tensors(cut, (self.call.args, self.call.kwargs))

    def _split(self, batch: int) -> tuple[tuple, dict]:
        """The first of ``k`` parts of the captured inputs, by the unit's ``mosaic_split_batch``."""
        k = max(1, round(self.batch_size / batch))
        if k == 1:
            return self.call.args, self.call.kwargs
        try:
            first = check_split(self.split((self.call.args, self.call.kwargs), k), k)[0]
            args, kwargs = first
        except (TypeError, ValueError) as err:
            raise ReplayError(
                f"{type(self.module).__name__}.{HOOK}((args, kwargs), {k}) failed: {err}"
            ) from err

        def leaf(t: torch.Tensor) -> torch.Tensor:
            out = t.detach()
            return out.requires_grad_(True) if t.requires_grad else out

        return map_tensors(leaf, (tuple(args), dict(kwargs)))

    @contextmanager
    def context(self) -> Iterator[None]:
        with torch.set_grad_enabled(self.call.grad_enabled):
            if self.call.autocast is None:
                yield
            else:
                device_type, dtype = self.call.autocast
                with torch.autocast(device_type, dtype=dtype):
                    yield

    def forward(self, batch: int) -> list[torch.Tensor]:
        args, kwargs, _ = self.inputs(batch)
        out = self.module(*args, **kwargs)
        return [t for t in iter_tensors(out) if t.requires_grad]

    def grad_outputs(self, batch: int, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        if batch not in self._grads:
            gen = torch.Generator(device=outs[0].device if outs else "cpu").manual_seed(0)
            self._grads[batch] = [
                torch.randn(t.shape, dtype=t.dtype, device=t.device, generator=gen) for t in outs
            ]
        return self._grads[batch]

    def backward_pass(self, batch: int, outs: list[torch.Tensor]) -> None:
        """Gradients of ``outs`` w.r.t. the trainable parameters and grad-requiring inputs (not stored)."""
        if self.backward and outs:
            _, _, leaves = self.inputs(batch)
            torch.autograd.grad(outs, self.params + leaves, self.grad_outputs(batch, outs), allow_unused=True)

    def run(self, batch: int, clock: Clock, times: int) -> list[tuple[float, float, float, float]]:
        """``times`` forward (+ backward) runs, timed by :func:`_timed`."""
        with self.context():
            return _timed(
                clock, times, lambda: self.forward(batch), lambda outs: self.backward_pass(batch, outs)
            )

    def memory(self, batch: int) -> MemorySample:
        """One forward + backward on the whole device: saved activations, and the CUDA peak."""
        cuda = next(iter(self.module.parameters()), torch.empty(0)).is_cuda
        skip = {p.untyped_storage().data_ptr() for p in self.module.parameters()}
        skip |= {t.untyped_storage().data_ptr() for t in iter_tensors(self.inputs(batch)[:2])}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in skip and storage.device.type != "meta":
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with self.context(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = self.forward(batch)
            if not outs:
                self.backward = False  # nothing to differentiate: the outputs do not require grad
            self.backward_pass(batch, outs)
            del outs
        peak = None
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        return MemorySample(self.name, batch, activation_bytes=sum(saved.values()), peak_bytes=peak)


def _batch_dims(call: Captured, batch_size: int) -> tuple[int | None, list[int | None]]:
    """The rows of a call's batch dimension and, for each input tensor, which dimension holds them.

    When some tensor has a dimension of ``batch_size``, that is the batch: each tensor's first
    dimension of that size (dimension 1 of a sequence-first ``(L, N, D)`` input), and tensors
    without one (an ``(L, L)`` attention mask) are kept whole. Otherwise, when every tensor's
    first dimension is the same and divides, or is a multiple of, ``batch_size``, that is the batch
    (a chunk of it, or flattened tokens). Otherwise rows is None: the inputs are not sliced and the
    unit is profiled at the full batch only. A guess that fails to replay is left out of the profile.
    """
    tensors = list(iter_tensors((call.args, call.kwargs)))
    if any(batch_size in t.shape for t in tensors):
        return batch_size, [
            list(t.shape).index(batch_size) if batch_size in t.shape else None for t in tensors
        ]
    firsts = {t.shape[0] for t in tensors if t.dim() > 0}
    if len(firsts) == 1 and ((n := firsts.pop()) % batch_size == 0 or batch_size % n == 0):
        return n, [0 if t.dim() > 0 else None for t in tensors]
    return None, [None] * len(tensors)


def _is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, oom) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


@contextmanager
def _model_state_kept(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Restore RNG states, buffers and train/eval modes after replaying ``modules``."""
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, copy in buffers:
                    b.copy_(copy)
            for sub, mode in modes:
                sub.training = mode


# ---------------------------------------------------------------------- the profile


def profile_units(
    units: Mapping[str, nn.Module],
    captured: Mapping[str, Captured],
    batch_size: int,
    *,
    batch_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    quotas: Sequence[int] | None = None,
    warmup: int = 2,
    repeats: int = 5,
    max_seconds: float = 60.0,
    calls: Mapping[str, int] | None = None,
    progress: bool = True,
    precision: str | None = None,
    capture: Capture | None = None,
    graph_units: Sequence[str] | None = None,
) -> Profile:
    """Time every captured unit alone over ``batch_fractions`` x ``quotas``; see the module docstring.

    ``quotas`` are SM counts on a GPU or thread counts on a CPU (default: a grid from the smallest
    the hardware allows); the whole device is always measured too. ``calls`` are calls per step
    (from :class:`InputCapture`); ``precision`` the training precision, kept in the fingerprint
    (:func:`~lightning_mosaic.profile.precision_of`). With a ``capture``, each of ``graph_units``
    (default: every unit) is also captured as CUDA graphs and its replays timed at the full batch
    on the whole device (``Profile.graphed``); a unit that cannot be captured is said in the notes.
    """
    _check_positive_int("batch_size", batch_size)
    fractions = list(check_grid(batch_fractions, None, warmup, repeats, max_seconds)[0])
    missing = [name for name in units if name not in captured]
    if missing:
        log.warning(f"modules {missing} were not called in the captured step; they are not profiled")
    names = [name for name in units if name in captured]
    if not names:
        raise ValueError(f"no captured call to profile: none of {list(units)} ran in the captured step")
    started = time.perf_counter()
    device = device_of(units[names[0]], captured[names[0]].args)
    runner = _Quotas(device, quotas)
    clock = Clock(device.type == "cuda")
    replays = {name: _Replay(name, units[name], captured[name], batch_size) for name in names}
    batches = batch_grid(batch_size, fractions)
    notes = list(runner.notes)
    for name, r in replays.items():
        if r.rows is None:
            notes.append(f"{name}: no batch dimension found in its inputs; profiled at the full batch only")
    # Every unit at the full batch on the whole device first: always measured, whatever max_seconds.
    points = [(runner.capacity, batch_size, name) for name in names]
    points += [
        (q, b, name)
        for q in sorted(runner.quotas, reverse=True)
        for b in batches
        for name in names
        if (b == batch_size or replays[name].rows is not None) and (q, b) != (runner.capacity, batch_size)
    ]
    samples: list[Sample] = []
    memory: list[MemorySample] = []
    infeasible: set[tuple[str, int]] = set()
    probed: set[tuple[str, int]] = set()  # (unit, batch) whose memory run is done
    failed: dict[str, str] = {}  # unit -> why it cannot be replayed alone (not profiled)
    skipped: set[tuple[str, int]] = set()  # (unit, batch) whose sliced inputs fail to replay
    deadline = started + max_seconds
    done = 0
    bar = _progress(len(points), progress)
    with _model_state_kept([units[n] for n in names], device):
        for q, b, name in points:
            if done >= len(names) and time.perf_counter() > deadline:
                break
            done += 1
            bar.update(1)
            if name in failed or (name, b) in skipped:
                continue
            replay = replays[name]
            bar.set_postfix_str(f"{name} batch {b} quota {q}")
            try:
                if (name, b) not in probed:
                    probed.add((name, b))
                    memory.append(_measure_memory(replay, b))
                    if not memory[-1].feasible:
                        infeasible.add((name, b))
                if (name, b) in infeasible:
                    samples.extend(_infeasible(replay, b, q, "out of memory at this batch"))
                else:
                    samples.extend(
                        _measure_point(
                            replay, b, q, runner, clock, warmup, repeats, deadline, len(points) - done + 1
                        )
                    )
            except ReplayError as err:
                why = _failure(name, b, q, batch_size, runner.capacity, err, failed, skipped)
                log.warning(why)
                notes.append(why)
    bar.close()
    graphed: list[Sample] = []
    if capture is not None:
        wanted = names if graph_units is None else [n for n in names if n in graph_units]
        with _model_state_kept([units[n] for n in wanted], device):
            for name in wanted:
                if name in failed:
                    continue
                try:
                    graphed.extend(
                        runner.run(
                            runner.capacity,
                            lambda r=replays[name]: _measure_graphed(
                                r, capture, clock, runner.capacity, warmup, repeats
                            ),
                        )
                    )
                except Exception as err:  # the eager profile stands without it
                    cause = err if isinstance(err, Ineligible) else err.__cause__  # a CPU worker's, wrapped
                    if isinstance(cause, Ineligible):
                        notes.append(f"{name}: not captured as a CUDA graph (it {first(cause.reasons)})")
                    else:
                        notes.append(f"{name}: capturing it as a CUDA graph failed ({_first_line(err)})")
    if failed:  # nothing of theirs is kept: no model is fitted to them
        samples = [s for s in samples if s.module not in failed]
        memory = [m for m in memory if m.module not in failed]
        names = [n for n in names if n not in failed]
        if not names:
            raise ReplayError(f"no unit could be replayed alone: {failed}")
    samples = [s for s in samples if (s.module, s.batch) not in skipped]
    memory = [m for m in memory if (m.module, m.batch) not in skipped]
    complete = done == len(points)
    if not complete:
        log.warning(
            f"profiling stopped after max_seconds={max_seconds:g}: {done} of {len(points)} grid points"
            " measured;"
            " raise max_seconds for a complete profile"
        )
        notes.append(f"stopped by max_seconds={max_seconds:g} after {done} of {len(points)} points")
    counts = calls or {}
    return Profile(
        fingerprint=fingerprint(units, precision),  # every unit, called or not: what reuse compares
        device=device_name(device),
        device_type=device.type,
        quota_unit=runner.unit,
        capacity=runner.capacity,
        granularity=[runner.minimum, runner.multiple],
        torch_version=str(torch.__version__),  # TorchVersion would not load from a weights-only checkpoint
        batch_size=batch_size,
        batch_fractions=fractions,
        quotas=runner.quotas,
        modules=[replays[n].info(counts.get(n, 1)) for n in names],
        samples=samples,
        memory=memory,
        green_context=runner.api_text,
        grants=runner.grants,
        seconds=time.perf_counter() - started,
        complete=complete,
        notes=notes,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        graphed=graphed,
    )


def _measure_graphed(
    replay: _Replay, capture: Capture, clock: Clock, quota: int, warmup: int, repeats: int
) -> list[Sample]:
    """The unit's call at the full batch captured as CUDA graphs; the replays' device and host time
    (``quota``: the whole device, under which it runs)."""
    batch = replay.batch_size
    args, kwargs, leaves = replay.inputs(batch)
    with replay.context():
        graphed = GraphedCall(replay.module, replay.module.forward, args, kwargs, capture)
    # The backward runs as in training, into .grad (set to None before each run, as after
    # zero_grad): a replay hands autograd the graph's gradients, which it copies rather than keeps.
    surface = replay.params + leaves
    kept = [t.grad for t in surface]

    def empty_grads() -> None:
        for t in surface:
            t.grad = None

    def forward() -> list[torch.Tensor]:
        return [t for t in iter_tensors(graphed(args, kwargs)) if t.requires_grad]

    def backward(outs: list[torch.Tensor]) -> None:
        if graphed.backward and outs:
            torch.autograd.backward(outs, replay.grad_outputs(batch, outs), inputs=surface)

    try:
        with replay.context():
            runs = _timed(clock, max(1, warmup) + repeats, forward, backward, empty_grads)[max(1, warmup) :]
    finally:
        for t, grad in zip(surface, kept, strict=True):
            t.grad = grad
    return _samples(replay.name, batch, quota, runs, graphed.backward)


def _timed(
    clock: Clock,
    times: int,
    forward: Callable[[], Any],
    backward: Callable[[Any], None],
    before: Callable[[], None] | None = None,
) -> list[tuple[float, float, float, float]]:
    """``times`` runs of ``forward`` then ``backward(its outputs)`` (each after ``before()``, untimed):
    (forward, backward) device seconds and (forward, backward) host seconds of each.

    The host's is the wall clock around each call: the time this thread takes to issue the pass (on
    a CPU, to run it). On a GPU each run starts on an empty queue, so no wait for earlier work
    counts as issuing.
    """
    marks = []
    for _ in range(times):
        if before is not None:
            before()
        if clock.cuda:
            torch.cuda.synchronize()
        h0, a = time.perf_counter(), clock.mark()
        outs = forward()
        b, h1 = clock.mark(), time.perf_counter()
        backward(outs)
        c, h2 = clock.mark(), time.perf_counter()
        del outs
        marks.append((a, b, c, h1 - h0, h2 - h1))
    return [(clock.seconds(a, b), clock.seconds(b, c), fh, bh) for a, b, c, fh, bh in marks]


def _samples(
    name: str, batch: int, quota: int, runs: list[tuple[float, float, float, float]], backward: bool
) -> list[Sample]:
    """One sample per pass (the backward only when there is one): median, spread and host time of ``runs``."""
    out = []
    for index, pass_ in enumerate(("forward", "backward")):
        if pass_ == "backward" and not backward:
            continue
        times = [run[index] for run in runs]
        median = statistics.median(times)
        spread = (max(times) - min(times)) / median if median > 0 else 0.0
        host = statistics.median(run[index + 2] for run in runs)
        out.append(Sample(name, pass_, batch, quota, max(median, 1e-9), True, len(times), spread, "", host))
    return out


class ReplayError(RuntimeError):
    """A unit's captured call failed to run alone (not for lack of memory)."""


def _failure(
    name: str,
    batch: int,
    quota: int,
    full: int,
    capacity: int,
    err: ReplayError,
    failed: dict[str, str],
    skipped: set[tuple[str, int]],
) -> str:
    """Record a failed replay (the unit, the batch or the point is left out) and say what was left out."""
    if batch == full and quota == capacity:
        failed[name] = str(err)
        return f"{err}; {name} is not profiled (it trains as usual, under the temporal plan)"
    if batch != full:
        skipped.add((name, batch))
        return (
            f"{err}; {name} is profiled without batch {batch} (its inputs sliced to {batch} of {full} samples"
            " do not replay: a batch dimension guessed wrong?)"
        )
    return f"{err}; that point is skipped"


def check_grid(
    batch_fractions: Sequence[float],
    quotas: Sequence[int] | None,
    warmup: int,
    repeats: int,
    max_seconds: float,
) -> tuple[tuple[float, ...], tuple[int, ...] | None]:
    """The profile's grid and budget checked (one place for every entry point); returns the batch
    fractions and the quotas as tuples."""
    whole("warmup", warmup, 0, "runs")
    whole("repeats", repeats, 1, "runs")
    fractions = tuple(batch_fractions)
    if not fractions or any(
        not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1 for f in fractions
    ):
        raise ValueError(f"batch_fractions={list(fractions)!r} must be numbers in (0, 1]")
    if quotas is not None:
        quotas = tuple(quotas)
        if not quotas or any(not isinstance(q, int) or isinstance(q, bool) or q < 1 for q in quotas):
            raise ValueError(f"quotas={list(quotas)!r} must be whole numbers of SMs or threads, 1 or more")
    if not isinstance(max_seconds, (int, float)) or isinstance(max_seconds, bool) or not max_seconds > 0:
        raise ValueError(f"max_seconds={max_seconds!r} must be a positive number of seconds")
    return fractions, quotas


def whole(name: str, value: Any, least: int, what: str) -> None:
    """Raise unless ``value`` is a whole number of at least ``least`` (``what``: its unit)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be a whole number of {what}, {least} or more")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a whole number, at least 1")


def _measure_memory(replay: _Replay, batch: int) -> MemorySample:
    try:
        return replay.memory(batch)
    except Exception as err:
        if not _is_oom(err):
            raise ReplayError(
                f"replaying module {replay.name!r} alone at batch {batch} failed: {_first_line(err)}"
            ) from err
        _free()
        return MemorySample(replay.name, batch, activation_bytes=None, peak_bytes=None, feasible=False)


def _measure_point(
    replay: _Replay,
    batch: int,
    quota: int,
    runner: _Quotas,
    clock: Clock,
    warmup: int,
    repeats: int,
    deadline: float,
    points_left: int,
) -> list[Sample]:
    try:
        t0 = time.perf_counter()
        runner.run(quota, lambda: replay.run(batch, clock, max(1, warmup)))
        per_run = (time.perf_counter() - t0) / max(1, warmup)
        budget = max(0.0, deadline - time.perf_counter()) / max(1, points_left)
        # Short runs are noisy (launch gaps, clocks): repeat them up to MIN_POINT_SECONDS in all.
        wanted = min(max(repeats, math.ceil(MIN_POINT_SECONDS / max(per_run, 1e-9))), MAX_REPEATS)
        n = max(1, min(wanted, math.floor(budget / max(per_run, 1e-9))))
        runs = runner.run(quota, lambda: replay.run(batch, clock, n))
    except Exception as err:
        if not _is_oom(err):
            raise ReplayError(
                f"replaying module {replay.name!r} alone at batch {batch}, quota {quota} failed:"
                f" {_first_line(err)}"
            ) from err
        _free()
        return _infeasible(replay, batch, quota, str(err).splitlines()[0][:200])
    return _samples(replay.name, batch, quota, runs, replay.backward)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _infeasible(replay: _Replay, batch: int, quota: int, error: str) -> list[Sample]:
    passes = ("forward", "backward") if replay.backward else ("forward",)
    return [Sample(replay.name, p, batch, quota, None, False, 0, 0.0, error) for p in passes]


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="mosaic profile", unit="point", disable=not enabled, dynamic_ncols=True)
