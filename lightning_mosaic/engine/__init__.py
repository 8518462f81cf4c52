"""The execution engine: runs a model's units on their own streams, side by side, race-free.

``Engine`` owns the hooks and the sync protocol; ``backends`` are where units run (green-context
streams with SM quotas, plain CUDA streams, inline), ``cpu`` the thread-quota backend, ``resolve``
picks one for a name; ``recording`` is a fake backend that logs what a GPU would order, and
``races`` checks such a log. The names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_mosaic._lazy import lazy_exports

_EXPORTS = {
    "BACKENDS": "lightning_mosaic.engine.resolve",
    "Backend": "lightning_mosaic.engine.backends",
    "CpuThreadBackend": "lightning_mosaic.engine.cpu",
    "CudaStreamBackend": "lightning_mosaic.engine.backends",
    "Engine": "lightning_mosaic.engine.engine",
    "Entry": "lightning_mosaic.engine.races",
    "GreenContextBackend": "lightning_mosaic.engine.backends",
    "HappensBefore": "lightning_mosaic.engine.races",
    "InlineBackend": "lightning_mosaic.engine.backends",
    "PendingTensor": "lightning_mosaic.engine.pending",
    "Race": "lightning_mosaic.engine.races",
    "RecordingBackend": "lightning_mosaic.engine.recording",
    "check_backend": "lightning_mosaic.engine.resolve",
    "find_races": "lightning_mosaic.engine.races",
    "make_backend": "lightning_mosaic.engine.resolve",
    "why_inline": "lightning_mosaic.engine.resolve",
}

__all__ = [
    "BACKENDS",
    "Backend",
    "CpuThreadBackend",
    "CudaStreamBackend",
    "Engine",
    "Entry",
    "GreenContextBackend",
    "HappensBefore",
    "InlineBackend",
    "PendingTensor",
    "Race",
    "RecordingBackend",
    "check_backend",
    "find_races",
    "make_backend",
    "why_inline",
]

if TYPE_CHECKING:
    from lightning_mosaic.engine.backends import (
        Backend,
        CudaStreamBackend,
        GreenContextBackend,
        InlineBackend,
    )
    from lightning_mosaic.engine.cpu import CpuThreadBackend
    from lightning_mosaic.engine.engine import Engine
    from lightning_mosaic.engine.pending import PendingTensor
    from lightning_mosaic.engine.races import Entry, HappensBefore, Race, find_races
    from lightning_mosaic.engine.recording import RecordingBackend
    from lightning_mosaic.engine.resolve import BACKENDS, check_backend, make_backend, why_inline

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
