"""SM quotas on NVIDIA GPUs through ``torch.cuda.green_contexts``, whatever shape its API has.

The API changed in every torch release from 2.10 to 2.15, so this module detects features instead
of comparing versions:

- creation: ``GreenContext.create(num_sms=..., device_id=...)`` exists in every release (a
  constructor with the same keywords from 2.14);
- a stream bound to the context: ``ctx.Stream()`` (2.12 and later). Earlier releases only offer
  ``set_context()`` / ``pop_context()``, which cannot bind a PyTorch stream to the context, so
  there the API counts as unusable and the engine falls back to plain streams, loudly;
- disjoint partitions: ``SMPartition.from_device().split(num_sms=[...])`` (2.15) carves SM groups
  that never overlap, and ``GreenContext(sm_partition=...)`` runs on one. Without it, contexts are
  created one by one and the driver may place them on overlapping SMs.

SM counts round to the hardware's granularity (``devices.granularity``: 8 SMs on Hopper and later,
2 on Ampere and Volta, with minimums of 8, 4 and 2) and are reported as requested vs granted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_mosaic.devices import DeviceSpec


@dataclass(frozen=True)
class GreenContextAPI:
    """What this torch build's ``torch.cuda.green_contexts`` offers."""

    module: Any  # the torch.cuda.green_contexts module (or a stand-in with the same shape)
    has_stream: bool  # GreenContext objects have .Stream()
    has_split: bool  # SMPartition.from_device().split() for disjoint partitions

    @property
    def usable(self) -> bool:
        return self.has_stream

    def describe(self) -> str:
        parts = ["GreenContext.create", "ctx.Stream()" if self.has_stream else "no ctx.Stream()"]
        parts.append("SMPartition.split (disjoint partitions)" if self.has_split else "no SMPartition.split")
        return ", ".join(parts)


def detect(module: Any = None) -> GreenContextAPI | None:
    """The green-context API of ``module`` (default: ``torch.cuda.green_contexts``), or None if absent."""
    if module is None:
        try:
            from torch.cuda import green_contexts as module  # type: ignore[no-redef]
        except ImportError:
            return None
    if getattr(module, "SUPPORTED", True) is False:
        return None
    context = getattr(module, "GreenContext", None)
    if context is None or not hasattr(context, "create"):
        return None
    partition = getattr(module, "SMPartition", None)
    return GreenContextAPI(
        module=module,
        has_stream=callable(getattr(context, "Stream", None)),
        has_split=partition is not None and hasattr(partition, "from_device") and hasattr(partition, "split"),
    )


@dataclass(frozen=True)
class Grant:
    """The SMs a unit asked for and the SMs it got."""

    requested: int | None  # None: the whole device
    granted: int  # SMs it may use
    partitioned: bool  # True when running in a green context (False: the whole device)


def grant(
    requested: Mapping[str, int | None],
    sm_count: int,
    minimum: int,
    multiple: int,
    groups: Sequence[Sequence[str]] | None = None,
) -> dict[str, Grant]:
    """Round each request to the hardware granularity and make co-running requests fit together.

    A request rounds to the nearest multiple (ties up), at least ``minimum``; one at or above the
    largest partition the device can hold (``sm_count`` rounded down to ``multiple``) runs on the
    whole device. ``groups`` lists the units that run at the same time (a plan's phases; default:
    all of them); when the rounded requests of a group add up to more than the device, its largest
    ones give back one multiple at a time until they fit (never below ``minimum``); if that cannot
    make them fit, each keeps its rounded size and the partitions overlap.
    """
    largest = (sm_count // multiple) * multiple
    out: dict[str, int] = {}
    for name, want in requested.items():
        if want is None or want >= sm_count:
            continue
        rounded = max(minimum, multiple * math.floor(want / multiple + 0.5))
        if rounded < largest:
            out[name] = rounded
    for group in groups if groups is not None else [list(requested)]:
        members = [name for name in group if name in out]
        while sum(out[n] for n in members) > sm_count:
            name = max(members, key=lambda n: out[n])
            if out[name] - multiple < minimum:
                break
            out[name] -= multiple
    return {
        name: Grant(want, out[name], True) if name in out else Grant(want, sm_count, False)
        for name, want in requested.items()
    }


def make_streams(
    api: GreenContextAPI,
    grants: dict[str, Grant],
    device: torch.device,
    groups: Sequence[Sequence[str]] | None = None,
) -> tuple[dict[str, Any], list[Any], list[str]]:
    """A stream per partitioned unit, inside a green context of its granted size.

    Returns the streams, the contexts and notes for the log. ``groups`` lists the units that run
    at the same time (a plan's phases; default: all of them). Contexts live as long as the process
    (see ``_CONTEXTS``): one per SM count is created and shared by every later request. With
    ``SMPartition.split`` the partitions of each group are carved in one split, so they are
    disjoint, and ``grants`` is updated with the SM counts CUDA reports; otherwise each context is
    created on its own and the driver may overlap them.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    names = [name for name, g in grants.items() if g.partitioned]
    notes: list[str] = []
    contexts: dict[str, Any] = {}
    if groups is None:
        groups = [names]
    members = [[n for n in group if n in names] for group in groups]
    members = [group for group in members if group]
    if api.has_split and all(sum(grants[n].granted for n in g) <= _device_sms(index) for g in members):
        try:
            carved = []
            for group in members:
                whole = api.module.SMPartition.from_device(device_id=index)
                parts, _rest = whole.split(num_sms=[grants[n].granted for n in group])
                carved.extend(zip(group, parts, strict=True))
            for name, part in carved:
                contexts[name] = api.module.GreenContext(sm_partition=part)
            _KEPT.extend(contexts.values())
        except Exception as err:  # e.g. a driver older than the split API needs
            contexts.clear()
            notes.append(f"SMPartition.split failed ({err}); creating the contexts one by one")
        else:
            for name, part in carved:
                reported = getattr(part, "sm_count", None)
                if isinstance(reported, int):
                    grants[name] = Grant(grants[name].requested, reported, True)
            notes.extend(f"disjoint SM partitions from one split: {', '.join(group)}" for group in members)
    if not contexts:
        for name in names:
            contexts[name] = _context(api, index, grants[name].granted)
        if any(len(group) > 1 for group in members):
            notes.append(
                "green contexts created one by one (no SMPartition.split in this torch, or the quotas exceed"
                " the device): the driver may place them on overlapping SMs"
            )
    streams = {name: ctx.Stream() for name, ctx in contexts.items()}
    return streams, list(contexts.values()), notes


# Green contexts are never destroyed. The caching allocator keeps per-stream state for memory used
# on a context's streams (cached blocks, events of ``record_stream``); destroying the context while
# any of it lives aborts the process ("CUDA error: context is destroyed") when that memory is freed.
# A process holds at most one context per (device, SM count) from here, and those of disjoint splits.
_CONTEXTS: dict[tuple[int, int, int], Any] = {}
_KEPT: list[Any] = []


def _context(api: GreenContextAPI, index: int, sms: int) -> Any:
    """The process's green context of ``sms`` SMs on device ``index``, created once."""
    key = (id(api.module), index, sms)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = api.module.GreenContext.create(num_sms=sms, device_id=index)
    return _CONTEXTS[key]


def _device_sms(index: int) -> int:
    return DeviceSpec.from_current(torch.device("cuda", index)).sm_count


def check_quotas(
    quotas: Mapping[str, int] | None,
    units: Sequence[str] | None = None,
    sm_count: int | None = None,
    device: str = "the device",
) -> dict[str, int]:
    """Validate user-given SM quotas ``{unit: SMs}``; returns them as a dict.

    Without ``units`` / ``sm_count`` only the shape is checked (names are strings, quotas positive
    whole numbers); with them, every name must be a unit and no quota may exceed the SM count.
    """
    if quotas is None:
        return {}
    if not isinstance(quotas, Mapping):
        raise TypeError(
            f"`quotas` must map module names to SM counts, got {type(quotas).__name__}: {quotas!r}"
        )
    for name, sms in quotas.items():
        if not isinstance(name, str):
            raise TypeError(f"`quotas` keys must be module names (str), got {type(name).__name__}: {name!r}")
        if not isinstance(sms, int) or isinstance(sms, bool):
            raise TypeError(
                f"quota of {name!r} must be a whole number of SMs, got {type(sms).__name__}: {sms!r}"
            )
        if sms <= 0:
            raise ValueError(f"quota of {name!r} is {sms} SMs; a quota must be at least 1 SM")
        if sm_count is not None and sms > sm_count:
            raise ValueError(f"quota of {name!r} is {sms} SMs but {device} has {sm_count} SMs")
    if units is not None:
        unknown = [name for name in quotas if name not in units]
        if unknown:
            raise ValueError(f"`quotas` names unknown modules {unknown}; the modules are {list(units)}")
    return dict(quotas)
