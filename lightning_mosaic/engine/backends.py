"""Where units run: the small stream/event interface of the engine, and its backends.

The engine's sync protocol (``engine.py``) is written against :class:`Backend`: create a stream per
unit, make a stream current, record an event on a stream, make a stream wait on an event, and
mark a tensor as used on a stream (so the CUDA caching allocator does not hand its memory to
another stream too early). Backends:

- ``green_context``: CUDA streams inside green contexts holding each unit's SM quota;
- ``streams``: plain CUDA streams, one per unit, no quotas (units still overlap);
- ``cpu``: units run inline; explicit parallel regions run in worker threads whose intra-op
  thread count is the quota (``engine/cpu.py``, used by the profiler);
- ``none``: inline on the caller's stream, as plain PyTorch;
- a recording fake for tests on CPU (``engine/recording.py``).

``engine/resolve.py`` picks one for a name (``"auto"``: green contexts where CUDA and the API are
present, else streams, else inline) and says once in the log why it fell back when it did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

import lightning_mosaic.engine.green as green
from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.engine.green import Grant

log = get_logger(__name__)


class Backend:
    """Streams and events for the units. The base class runs everything inline (no concurrency)."""

    name = "none"
    summary = "inline: every unit on the caller's stream, one after another"
    concurrent = False  # True: every unit has its own stream and the sync protocol is active

    def __init__(self) -> None:
        self.streams: dict[str, Any] = {}
        self.grants: dict[str, Grant] = {}
        self.notes: list[str] = []

    def setup(
        self,
        units: Sequence[str],
        quotas: Mapping[str, int | None],
        device: torch.device,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Prepare a stream for every unit, under its quota where this backend enforces quotas.

        ``groups`` lists the units that run at the same time (a plan's phases; default: all):
        their partitions must fit the device together and not overlap.
        """

    def stream(self, unit: str) -> Any:
        return self.streams[unit]

    def lane(self, index: int) -> Any:
        """The stream of micro-batch ``index``'s step: the caller's code between units runs there."""
        return None

    def current_stream(self) -> Any:
        return None

    def set_current(self, stream: Any) -> None:
        pass

    def record(self, stream: Any) -> Any:
        """Record an event on ``stream`` and return it."""
        return None

    def wait(self, stream: Any, event: Any) -> None:
        """Make ``stream`` wait for ``event`` (no host synchronisation)."""

    def record_stream(self, tensor: torch.Tensor, stream: Any) -> None:
        """Mark ``tensor``'s memory as in use on ``stream`` until the work queued there is done."""

    def on_unit_start(self, unit: str, inputs: Any) -> None:
        """Called on the caller's stream before ``unit`` runs on ``inputs``."""

    def on_unit_end(self, unit: str, outputs: Any) -> None:
        """Called after ``unit`` returned ``outputs``, with the caller's stream current again."""

    def before_backward(self, loss: Any) -> None:
        """Called before a backward pass from ``loss``."""

    def describe(self) -> str:
        """One line per unit: its stream and its quota, requested vs granted."""
        lines = [f"engine backend: {self.name} ({self.summary})"]
        for unit, g in self.grants.items():
            want = "whole device" if g.requested is None else f"{g.requested} SMs"
            got = f"{g.granted} SMs (own partition)" if g.partitioned else "the whole device"
            lines.append(f"  {unit}: requested {want}, granted {got}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


class InlineBackend(Backend):
    """Every unit on the caller's stream, one after another: plain PyTorch."""

    name = "none"

    def setup(
        self,
        units: Sequence[str],
        quotas: Mapping[str, int | None],
        device: torch.device,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        given = {u: q for u, q in quotas.items() if q is not None}
        if given:
            self._quotas_inline(given, device)

    def _quotas_inline(self, given: dict[str, int], device: torch.device) -> None:
        warn_once(
            log,
            f"quotas-inline-{self.name}",
            f"SM quotas {given} are ignored: backend '{self.name}' runs the units inline on {device}",
        )


class CudaStreamBackend(Backend):
    """One CUDA stream per unit, no SM quotas: units overlap wherever the GPU has room."""

    name = "streams"
    summary = "one CUDA stream per unit, no SM quotas"
    concurrent = True

    def setup(
        self,
        units: Sequence[str],
        quotas: Mapping[str, int | None],
        device: torch.device,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.device = device
        self.streams = self._streams(units, quotas, device, groups)
        self.lanes: dict[int, Any] = {}

    def _streams(
        self,
        units: Sequence[str],
        quotas: Mapping[str, int | None],
        device: torch.device,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> dict:
        if any(q is not None for q in quotas.values()):
            warn_once(
                log,
                "streams-quotas",
                f"SM quotas {dict(quotas)} are not enforced by the 'streams' backend: every unit may use the"
                " whole GPU",
            )
        return self._whole_gpu(units, quotas, device)

    def _whole_gpu(
        self, units: Sequence[str], quotas: Mapping[str, int | None], device: torch.device
    ) -> dict:
        """A plain stream per unit on the whole GPU; the quotas are recorded as requested, not granted."""
        sms = DeviceSpec.from_current(device).sm_count
        self.grants = {u: Grant(quotas.get(u), sms, False) for u in units}
        return {u: torch.cuda.Stream(device) for u in units}

    def lane(self, index: int) -> Any:
        if index not in self.lanes:
            self.lanes[index] = torch.cuda.Stream(self.device)  # the whole GPU, like the caller's
        return self.lanes[index]

    def current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def set_current(self, stream: Any) -> None:
        torch.cuda.set_stream(stream)

    def record(self, stream: Any) -> Any:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def record_stream(self, tensor: torch.Tensor, stream: Any) -> None:
        if tensor.is_cuda:
            tensor.record_stream(stream)


class GreenContextBackend(CudaStreamBackend):
    """CUDA streams inside green contexts: each unit with a quota runs on its own SMs."""

    name = "green_context"
    summary = "one CUDA stream per unit, inside a green context holding its SM quota"

    def __init__(self, api: green.GreenContextAPI) -> None:
        super().__init__()
        self.api = api
        self.contexts: list[Any] = []

    def _streams(
        self,
        units: Sequence[str],
        quotas: Mapping[str, int | None],
        device: torch.device,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> dict:
        spec = DeviceSpec.from_current(device)
        minimum, multiple = spec.minimum, spec.sm_granularity
        self.grants = green.grant({u: quotas.get(u) for u in units}, spec.sm_count, minimum, multiple, groups)
        try:
            streams, self.contexts, self.notes = green.make_streams(self.api, self.grants, device, groups)
        except Exception as err:  # a driver or build without green-context support
            warn_once(
                log,
                "green-context-failed",
                f"green contexts could not be created ({type(err).__name__}: {err}); units run on plain CUDA"
                " streams and SM quotas are not enforced",
            )
            self.notes = [f"green contexts failed: {err}"]
            return self._whole_gpu(units, quotas, device)
        self.notes.insert(
            0, f"green-context API: {self.api.describe()}; SM granularity {multiple} (min {minimum})"
        )
        for unit in units:
            streams.setdefault(unit, torch.cuda.Stream(device))  # no quota: the whole GPU
        return streams
