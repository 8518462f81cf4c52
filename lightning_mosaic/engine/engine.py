"""The engine: route each unit's call onto the unit's stream, race-free, without wrapping anything.

The engine registers a forward pre-hook and an always-called forward hook on each unit (never a
wrapper module), so ``state_dict`` keys, checkpoints and ``isinstance`` checks stay as in plain
PyTorch and :meth:`Engine.detach` leaves the model as it found it. Only a unit graphed as CUDA
graphs gets a per-instance ``forward`` (``engine/graphs.py``), which detaching removes and which a
copy of the unit leaves behind. With a concurrent backend, one call runs this protocol:

1. pre-hook, on the caller's stream: record an event on the caller's stream and make the unit's
   stream wait on it (the unit sees everything the caller did before the call); inputs that are
   pending outputs of other units are resolved for the unit's stream (it waits on their producers,
   not the caller); every input tensor is marked as used on the unit's stream; the unit's stream
   becomes current;
2. the unit's forward runs on its stream; nobody waits for it;
3. forward hook: record the unit's done-event, make the caller's stream current again, and return
   every output tensor (in tuples, lists, dicts, dataclasses, ``ModelOutput``) as a
   :class:`~lightning_mosaic.engine.pending.PendingTensor` that makes its first user wait.

Backward needs nothing extra: autograd runs each backward op on its forward op's stream and syncs
across streams. :meth:`join` makes the caller's stream wait for every unit stream used since the
last join and retires the step's pending tensors; the strategy joins at the end of every step call
and after every backward (before ``optimizer.step``). With the inline backend the hooks only count.

A unit in ``serial`` runs alone: its pre-hook makes the caller's stream wait for every stream used
since the last join, and the unit runs inline on the caller's stream, its outputs plain tensors.
That is for units whose data flow bypasses what they return (an input changed in place, tensors
kept in attributes), which no pending output would order.

Units in ``graphs`` (given to :meth:`Engine.attach` with a capture) replay CUDA graphs in training
steps (``engine/graphs.py``): the hooks above run around the replay as around an eager forward,
so a graph is captured and replayed on the unit's stream.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_mosaic._hooks import LiveHook
from lightning_mosaic._tree import iter_tensors, map_tensors
from lightning_mosaic.engine.backends import Backend, InlineBackend
from lightning_mosaic.engine.graphs import Capture, GraphRunner
from lightning_mosaic.engine.pending import PendingTensor, _value, retire


class Engine:
    """Owns the hooks on the units, the backend's streams and the per-step bookkeeping.

    ``calls`` counts the routed calls of each unit since :meth:`attach`; ``step_calls`` counts the
    step calls run inside :meth:`step`; ``serial`` names the units that run alone (see the module docstring;
    it may be changed while attached).
    """

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend: Backend = backend or InlineBackend()
        self.modules: dict[str, nn.Module] = {}
        self.calls: Counter[str] = Counter()
        self.step_calls = 0
        self._handles: list[RemovableHandle] = []
        self._frames: list[tuple[str, Any]] = []  # (unit, caller stream) of the calls in progress
        self._dirty: dict[Any, None] = {}  # unit streams used since the last join, in order
        self._shells: list[weakref.ref[PendingTensor]] = []
        self._paused = 0
        self._training = False  # inside a training step
        self.serial: set[str] = set()
        self.graphs: GraphRunner | None = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(
        self,
        modules: Mapping[str, nn.Module],
        backend: Backend | None = None,
        quotas: Mapping[str, int | None] | None = None,
        device: torch.device | None = None,
        groups: Sequence[Sequence[str]] | None = None,
        graphs: Sequence[str] = (),
        capture: Capture | None = None,
    ) -> None:
        """Hook every unit in ``modules`` (name -> module) and give it a stream of ``backend``.

        ``quotas`` (unit -> SMs) go to the backend; ``device`` is where the units live; ``groups``
        lists the units that run at the same time (a plan's phases), whose partitions must not
        overlap; the units in ``graphs`` replay CUDA graphs made by ``capture`` in training steps.
        Attaching twice is an error.
        """
        if self._handles:
            raise RuntimeError(f"engine is already attached to {list(self.modules)}; call detach() first")
        unknown = [name for name in graphs if name not in modules]
        if unknown:
            raise ValueError(f"graphs {unknown} are not units of the engine: {list(modules)}")
        if backend is not None:
            self.backend = backend
        self.modules = dict(modules)
        self.calls.clear()
        self.backend.setup(
            list(self.modules), dict(quotas or {}), device or torch.device("cpu"), groups=groups
        )
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(
                module.register_forward_hook(self._post_hook(name), with_kwargs=True, always_call=True)
            )
        if graphs and capture is not None:
            self.graphs = GraphRunner(capture)
            self.graphs.attach({name: self.modules[name] for name in graphs}, self._graphing)

    def _graphing(self) -> bool:
        return self._training and not self._paused

    def detach(self) -> None:
        """Join, then remove every hook and graph; the modules are exactly as before :meth:`attach`."""
        self.join()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.graphs is not None:
            self.graphs.detach()
            self.graphs = None
        self.modules = {}

    @contextmanager
    def step(self, train: bool = False) -> Iterator[None]:
        """Bracket one step call (``training_step`` and friends): joins when it ends, even on error.

        ``train``: a training step, where graphed units replay their graphs.
        """
        if self.graphs is not None:
            self.graphs.new_step()
        self._training = train
        try:
            yield
        finally:
            self._training = False
            if self._frames:  # an exception left a unit's stream current
                self.backend.set_current(self._frames[0][1])
                self._frames.clear()
            self.join()
            self.step_calls += 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Calls inside run as if the engine were not attached: inline, uncounted, nothing pending.

        The profiler replays units alone under its own quotas between steps; the engine must not
        route those calls onto the units' streams.
        """
        self.join()
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextmanager
    def lane(self, index: int, inputs: Any = None) -> Iterator[None]:
        """Run the block (micro-batch ``index``'s step) on its own lane stream.

        With micro-batches, the code of a step between unit calls (losses, user code) would
        otherwise queue on the one caller's stream: micro-batch ``i``'s loss waits for its
        backbone, and micro-batch ``i + 1``'s encoders would wait behind it. On a lane, each
        micro-batch's step starts after everything the caller queued so far and nothing else.
        ``inputs`` (the micro-batch) are marked as used on the lane. Join before the caller uses
        what the lanes made, and :meth:`hand_over` it.
        """
        backend = self.backend
        if not backend.concurrent or self._paused:
            yield
            return
        caller = backend.current_stream()
        stream = backend.lane(index)
        backend.wait(stream, backend.record(caller))
        for tensor in iter_tensors(inputs):
            backend.record_stream(_value(tensor), stream)
        self._dirty[stream] = None
        backend.set_current(stream)
        try:
            yield
        finally:
            backend.set_current(caller)

    def hand_over(self, obj: Any) -> None:
        """Tensors in ``obj`` made on lanes are used on the caller's stream from now on (after a join).

        Their memory must not return to a lane's pool while the caller's queued work reads it.
        """
        backend = self.backend
        if not backend.concurrent:
            return
        caller = backend.current_stream()
        for tensor in iter_tensors(obj):
            backend.record_stream(_value(tensor), caller)

    def join(self) -> None:
        """The caller's stream waits for the unit streams used since the last join; pending outputs retire."""
        backend = self.backend
        if not backend.concurrent:
            return
        caller = backend.current_stream()
        for stream in self._dirty:
            backend.wait(caller, backend.record(stream))
        self._dirty.clear()
        for ref in self._shells:
            shell = ref()
            if shell is not None:
                retire(shell, caller)
        self._shells.clear()

    def before_backward(self, loss: Any) -> None:
        """Tell the backend a backward pass starts from ``loss`` (the recording fake models its streams)."""
        if self.backend.concurrent:
            self.backend.before_backward(loss)

    def _pre_hook(self, name: str) -> Callable[[nn.Module, tuple, dict], Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if self._paused:
                return None
            self.calls[name] += 1
            backend = self.backend
            if not backend.concurrent:
                return None
            if name in self.serial:  # runs on the caller's stream, after everything queued so far
                current = backend.current_stream()
                for stream in list(self._dirty):
                    if stream is not current:
                        backend.wait(current, backend.record(stream))
                return None
            caller = backend.current_stream()
            stream = backend.stream(name)
            backend.on_unit_start(name, (args, kwargs))
            backend.wait(stream, backend.record(caller))

            def ready(tensor: torch.Tensor) -> torch.Tensor:
                if type(tensor) is PendingTensor:
                    return tensor.mosaic_resolve(stream)
                backend.record_stream(tensor, stream)
                return tensor

            args, kwargs = map_tensors(ready, (args, kwargs))
            self._frames.append((name, caller))
            self._dirty[stream] = None
            backend.set_current(stream)
            return args, kwargs

        return LiveHook(hook)

    def _post_hook(self, name: str) -> Callable[[nn.Module, tuple, dict, Any], Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            backend = self.backend
            if self._paused or not backend.concurrent or not self._frames or self._frames[-1][0] != name:
                return None  # inline, or our pre-hook never ran for this call
            _, caller = self._frames.pop()
            stream = backend.stream(name)
            done = backend.record(stream)
            backend.set_current(caller)
            if output is None:
                return None
            backend.on_unit_end(name, output)
            return map_tensors(lambda t: self._pending(t, done, stream), output)

        return LiveHook(hook)

    def _pending(self, tensor: torch.Tensor, done: Any, stream: Any) -> PendingTensor:
        shell = PendingTensor.wrap(_value(tensor), done, stream, self.backend)
        self._shells.append(weakref.ref(shell))
        return shell

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy (a deep copy of a Trainer's callbacks that reach the strategy, a pickle) is a new
        # detached engine: it hooks and routes nothing; the run's engine and its streams stay its own.
        return (Engine, ())
