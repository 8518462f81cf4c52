"""Record each unit's real inputs in one training step, for the profiler to replay the unit alone.

:class:`InputCapture` hooks the units (forward pre-hooks that copies of the module leave behind,
``_hooks.py``) and keeps, per unit, a detached copy of the inputs of its first call in the step
(:class:`Captured`), how many times it was called, and on which device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_mosaic._hooks import LiveHook
from lightning_mosaic._tree import iter_tensors, map_tensors


@dataclass
class Captured:
    """One call of a unit, ready to replay: detached copies of its arguments and the state it ran in."""

    args: tuple
    kwargs: dict
    grad_enabled: bool
    training: bool
    autocast: tuple[str, torch.dtype] | None  # (device type, dtype) when autocast was on


class InputCapture:
    """While active, records each unit's first call of the step (and counts its calls).

    Use as a context manager around one step, or :meth:`start` / :meth:`stop` from two callbacks;
    started again for a later step (units that did not run in the first), it keeps what it has.
    A unit's first call that ran without grad (a gradient cache's no-grad pass over the batch) is
    replaced by its first call with grad, when there is one: that is the call with a backward pass
    to time. ``calls`` holds each unit's calls in the step that called it most. The hooks run after
    any hook registered earlier (the engine's), so inputs are seen as the unit sees them.
    """

    def __init__(self, units: Mapping[str, nn.Module]) -> None:
        self.units = dict(units)
        self.captured: dict[str, Captured] = {}
        self.calls: Counter[str] = Counter()
        self._step_calls: Counter[str] = Counter()
        self._handles: list[RemovableHandle] = []

    def start(self) -> None:
        self.stop()
        for name, module in self.units.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name, count in self._step_calls.items():
            self.calls[name] = max(self.calls[name], count)
        self._step_calls.clear()

    def __enter__(self) -> InputCapture:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _hook(self, name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._step_calls[name] += 1
            known = self.captured.get(name)
            if known is not None and (known.grad_enabled or not torch.is_grad_enabled()):
                return
            device_type = device_of(module, (args, kwargs)).type
            autocast = None
            if torch.is_autocast_enabled(device_type):
                autocast = (device_type, torch.get_autocast_dtype(device_type))
            self.captured[name] = Captured(
                args=map_tensors(_detached_copy, args),
                kwargs=map_tensors(_detached_copy, kwargs),
                grad_enabled=torch.is_grad_enabled(),
                training=module.training,
                autocast=autocast,
            )

        return LiveHook(hook)


def _detached_copy(tensor: torch.Tensor) -> torch.Tensor:
    copy = tensor.detach().clone()
    if tensor.requires_grad:
        copy.requires_grad_(True)
    return copy


def device_of(module: nn.Module, inputs: Any) -> torch.device:
    for p in module.parameters():
        return p.device
    for t in iter_tensors(inputs):
        return t.device
    return torch.device("cpu")


# ---------------------------------------------------------------------- grids and devices
