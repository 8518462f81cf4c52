"""Pending tensors: a unit's outputs, handed back before the unit's stream has finished them.

A unit runs on its own stream, so its outputs may still be being computed when its call returns.
The engine returns each output as a :class:`PendingTensor`: a shell made with ``as_subclass``
(a ``torch.Tensor`` sharing the output's storage and autograd history). Any torch operation on a
shell — in user code or in another unit — first makes that operation's current stream wait on the
producer's done-event (once per stream) and records the storage as used on that stream, then runs
on the real output. Nobody waits for a unit until its output is actually used, which is what lets
independent units run side by side. Metadata queries (shape, dtype, device, ``requires_grad``,
``grad_fn``, ...) never wait.

At the end of a step the engine *retires* every shell: after the caller's stream has joined all
unit streams, the shell becomes a plain ``torch.Tensor`` (its class is reset), so no pending tensor
outlives a step in logged values, returned losses or anything the user kept.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_mosaic._tree import map_tensors

_PROPERTIES = (
    "shape", "dtype", "device", "requires_grad", "is_leaf", "grad_fn", "layout", "ndim", "is_cuda",
    "is_cpu", "is_meta", "is_sparse", "is_quantized", "is_nested", "names", "itemsize", "nbytes",
)  # fmt: skip
_METHODS = (
    "size", "dim", "numel", "nelement", "element_size", "stride", "storage_offset", "is_floating_point",
    "is_complex", "is_contiguous", "get_device", "data_ptr", "__len__",
)  # fmt: skip


def _metadata_functions() -> frozenset[Any]:
    found = {getattr(torch.Tensor, name).__get__ for name in _PROPERTIES if hasattr(torch.Tensor, name)}
    found |= {getattr(torch.Tensor, name) for name in _METHODS if hasattr(torch.Tensor, name)}
    return frozenset(found)


class PendingTensor(torch.Tensor):
    """A unit's output whose producer stream may still be running (see the module docstring)."""

    _METADATA: ClassVar[frozenset[Any]] = _metadata_functions()

    _mosaic_value: torch.Tensor  # the unit's real output
    _mosaic_done: Any  # done-event recorded on the producer stream
    _mosaic_backend: Any  # the engine's backend (streams, events)
    _mosaic_ready: set[Any]  # streams that already waited on the done-event

    @staticmethod
    def wrap(value: torch.Tensor, done: Any, producer: Any, backend: Any) -> PendingTensor:
        """A shell for ``value``, produced on stream ``producer`` and finished at event ``done``."""
        shell = value.as_subclass(PendingTensor)
        shell._mosaic_value = value
        shell._mosaic_done = done
        shell._mosaic_backend = backend
        shell._mosaic_ready = {producer}
        return shell

    def mosaic_resolve(self, stream: Any = None) -> torch.Tensor:
        """The real output, made safe to use on ``stream`` (default: the current stream)."""
        backend = self._mosaic_backend
        stream = backend.current_stream() if stream is None else stream
        if stream not in self._mosaic_ready:
            backend.wait(stream, self._mosaic_done)
            backend.record_stream(self._mosaic_value, stream)
            self._mosaic_ready.add(stream)
        return self._mosaic_value

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in cls._METADATA:
            unwrap = _value
        else:
            unwrap = _resolve
        return func(*map_tensors(unwrap, args), **map_tensors(unwrap, kwargs))


def _resolve(tensor: torch.Tensor, stream: Any = None) -> torch.Tensor:
    return tensor.mosaic_resolve(stream) if type(tensor) is PendingTensor else tensor


def _value(tensor: torch.Tensor) -> torch.Tensor:
    """The real output behind a pending shell (any other tensor as it is), without waiting."""
    return tensor._mosaic_value if type(tensor) is PendingTensor else tensor


def resolve_all(obj: Any, stream: Any = None) -> Any:
    """``obj`` with every pending tensor replaced by its real output, made safe to use on ``stream``."""
    return map_tensors(lambda t: _resolve(t, stream), obj)


def retire(shell: PendingTensor, stream: Any) -> None:
    """Turn ``shell`` into a plain tensor for use on ``stream``, whose work is already joined."""
    if type(shell) is not PendingTensor:
        return
    shell._mosaic_backend.record_stream(shell._mosaic_value, stream)
    shell.__class__ = torch.Tensor
    for name in ("_mosaic_value", "_mosaic_done", "_mosaic_backend", "_mosaic_ready"):
        shell.__dict__.pop(name, None)
