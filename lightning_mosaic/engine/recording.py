"""A recording fake of the stream backends, so the sync protocol is tested on a CPU.

Every operation runs at once on the CPU (the numbers are exactly those of plain PyTorch), while
the backend logs what a GPU would have to order: each ATen operation as a *launch* on the stream
that is current for it (with the memory it reads and writes), every event *record* and every
stream *wait* the engine issues. :mod:`lightning_mosaic.engine.races` then checks the log.

Streams in backward follow CUDA autograd's rules, which the fake models: each backward node runs on
the stream its forward ran on; a node waits for the nodes that feed it gradients when they ran on
other streams; gradient accumulation between nodes is synchronised with every stream; and when
``backward()`` returns, the stream that called it has waited for every stream the backward used.
The stream of a node is known because the engine reports each unit's inputs and outputs
(:meth:`on_unit_start`, :meth:`on_unit_end`) and the loss before backward (:meth:`before_backward`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_mosaic._tree import iter_tensors
from lightning_mosaic.engine.backends import Backend
from lightning_mosaic.engine.green import Grant
from lightning_mosaic.engine.pending import _value
from lightning_mosaic.engine.races import Entry


@dataclass(frozen=True, eq=False)
class FakeStream:
    """A stream of the recording backend (compared by identity)."""

    name: str
    quota: int | None = None

    def __repr__(self) -> str:
        return f"<stream {self.name}>"


@dataclass(frozen=True)
class FakeEvent:
    id: int
    stream: FakeStream


def memory_key(tensor: torch.Tensor) -> int | None:
    """The address of a tensor's storage (views share it), or None for tensors without memory."""
    if tensor.layout != torch.strided or tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    try:
        return tensor.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):  # freed (FSDP2's unsharded parameters) or no plain storage
        return None


def memory_keys(obj: Any) -> tuple[int, ...]:
    keys = (memory_key(t) for t in iter_tensors(obj))
    return tuple(dict.fromkeys(k for k in keys if k is not None))


class RecordingBackend(Backend):
    """Fake streams, one per unit plus the caller's; records launches, events and waits."""

    name = "recording"
    summary = "fake streams on the CPU; every launch, record and wait is logged"
    concurrent = True

    def __init__(self, keep_alive: bool = False) -> None:
        """``keep_alive``: hold every tensor the recorded operations return until recording ends, so
        no freed memory is reused under another tensor (on a CPU the allocator reuses addresses across
        fake streams, where CUDA's caching allocator keeps a freed block to its stream): a race then
        reported is one of the recorded program, not of address reuse."""
        super().__init__()
        self.keep_alive = keep_alive
        self._alive: list[Any] = []
        self.caller = FakeStream("caller")
        self.autograd = FakeStream("autograd")  # gradient accumulation between backward nodes
        self.current = self.caller
        self.phase = "forward"
        self.log: list[Entry] = []
        self._events = 0
        self._node_stream: dict[Any, FakeStream] = {}
        self._hooks: list[Any] = []
        self._backward_streams: set[FakeStream] = set()

    # ---------------------------------------------------------------- the Backend interface

    def setup(
        self,
        units: Sequence[str],
        quotas: Mapping[str, int | None],
        device: torch.device,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.streams = {u: FakeStream(u, quotas.get(u)) for u in units}
        self.lanes: dict[int, FakeStream] = {}
        self.grants = {u: Grant(quotas.get(u), quotas.get(u) or 0, quotas.get(u) is not None) for u in units}

    def lane(self, index: int) -> FakeStream:
        return self.lanes.setdefault(index, FakeStream(f"lane{index}"))

    def current_stream(self) -> FakeStream:
        return self.current

    def set_current(self, stream: FakeStream) -> None:
        self.current = stream

    def record(self, stream: FakeStream) -> FakeEvent:
        self._events += 1
        self.log.append(Entry("record", stream.name, event=self._events, phase=self.phase))
        return FakeEvent(self._events, stream)

    def wait(self, stream: FakeStream, event: FakeEvent) -> None:
        self.log.append(Entry("wait", stream.name, event=event.id, phase=self.phase))

    def record_stream(self, tensor: torch.Tensor, stream: FakeStream) -> None:
        self.log.append(Entry("record_stream", stream.name, reads=memory_keys(tensor), phase=self.phase))

    # ---------------------------------------------------------------- recording

    @contextmanager
    def recording(self) -> Iterator[RecordingBackend]:
        """Log every ATen operation run inside the block as a launch on the current fake stream."""
        try:
            with _LaunchLog(self):
                yield self
        finally:
            self._alive.clear()

    def launches(self, stream: str, phase: str | None = None) -> list[int]:
        """Indices of the launches on ``stream`` (in ``phase``, if given)."""
        return [
            i
            for i, e in enumerate(self.log)
            if e.kind == "launch" and e.stream == stream and (phase is None or e.phase == phase)
        ]

    def _launch(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        if self.current is self.autograd:
            for stream in self._backward_streams - {self.autograd}:
                self.wait(self.autograd, self.record(stream))
        schema = getattr(func, "_schema", None)
        if schema is None:
            writes = memory_keys(out)
        else:
            # Fresh outputs are written; views of the inputs are not; arguments marked mutable are.
            many = isinstance(out, (tuple, list)) and len(schema.returns) > 1
            writes = ()
            for ret, value in zip(schema.returns, out if many else (out,), strict=False):
                if ret.alias_info is None:
                    writes += memory_keys(value)
            for arg, value in zip(schema.arguments, args, strict=False):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    writes += memory_keys(value)
        self.log.append(
            Entry("launch", self.current.name, op=str(func), reads=memory_keys((args, kwargs)), writes=writes,
                  phase=self.phase)
        )  # fmt: skip

    def _keep(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        """Hold the fresh tensors an operation returned (not its inputs, views or parameters)."""
        schema = getattr(func, "_schema", None)
        if schema is None:
            return
        inputs = {id(t) for t in iter_tensors((args, kwargs))}
        many = isinstance(out, (tuple, list)) and len(schema.returns) > 1
        for ret, value in zip(schema.returns, out if many else (out,), strict=False):
            if ret.alias_info is None:
                self._alive.extend(
                    t
                    for t in iter_tensors(value)
                    if id(t) not in inputs and not isinstance(t, torch.nn.Parameter)
                )

    # ---------------------------------------------------------------- autograd's streams

    def on_unit_start(self, unit: str, inputs: Any) -> None:
        """Nodes that made a unit's inputs ran on the caller's stream."""
        self.phase = "forward"
        self._claim(_grad_fns(inputs), self.current)

    def on_unit_end(self, unit: str, outputs: Any) -> None:
        """Nodes that made a unit's outputs (and were not claimed before) ran on the unit's stream."""
        self._claim(_grad_fns(outputs), self.streams[unit])

    def before_backward(self, loss: Any) -> None:
        """Install the hooks that run each backward node on its forward stream."""
        self._claim(_grad_fns(loss), self.current)
        parents: dict[Any, list[Any]] = {}
        for node in self._node_stream:
            for child, _ in node.next_functions:
                if child is not None:
                    parents.setdefault(child, []).append(node)
        started = [False]
        for node, stream in self._node_stream.items():
            self._hooks.append(node.register_prehook(self._prehook(stream, parents.get(node, []), started)))
            self._hooks.append(node.register_hook(self._posthook))

    def _prehook(self, stream: FakeStream, parents: list[Any], started: list[bool]) -> Any:
        def hook(grad_outputs: Any) -> None:
            if not started[0]:
                started[0] = True
                torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
            self.phase = "backward"
            for source in {self._node_stream[p] for p in parents} | {self.autograd}:
                if source is not stream and source in self._backward_streams:
                    self.wait(stream, self.record(source))
            self.current = stream
            self._backward_streams.add(stream)

        return hook

    def _posthook(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self.current = self.autograd
        self._backward_streams.add(self.autograd)

    def _end_backward(self) -> None:
        for stream in self._backward_streams:
            if stream is not self.caller:
                self.wait(self.caller, self.record(stream))
        self.current = self.caller
        self.phase = "other"
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._node_stream.clear()
        self._backward_streams.clear()

    def _claim(self, roots: Iterable[Any], stream: FakeStream) -> None:
        stack = [node for node in roots if node is not None]
        while stack:
            node = stack.pop()
            if node in self._node_stream:
                continue
            self._node_stream[node] = stream
            stack.extend(child for child, _ in node.next_functions if child is not None)


def _grad_fns(obj: Any) -> list[Any]:
    nodes = []
    for tensor in iter_tensors(obj):
        value = _value(tensor)
        if value.grad_fn is not None:
            nodes.append(value.grad_fn)
    return nodes


class _LaunchLog(TorchDispatchMode):
    def __init__(self, backend: RecordingBackend) -> None:
        super().__init__()
        self.backend = backend

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Compiled code compiles under the log (a dispatch mode otherwise makes TorchDynamo skip its
        frames for good); the operations a compiled graph runs eagerly are logged as launches."""
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.backend._launch(func, args, kwargs, out)
        if self.backend.keep_alive:
            self.backend._keep(func, args, kwargs, out)
        return out
