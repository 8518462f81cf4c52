"""The execution engine: runs a model's units on their own streams, side by side, race-free.

``Engine`` owns the hooks and the sync protocol; ``backends`` are where units run (green-context
streams with SM quotas, plain CUDA streams, inline), ``cpu`` the thread-quota backend, ``resolve``
picks one for a name; ``recording`` is a fake backend that logs what a GPU would order, and
``races`` checks such a log.
"""

from lightning_mosaic.engine.backends import Backend, CudaStreamBackend, GreenContextBackend, InlineBackend
from lightning_mosaic.engine.cpu import CpuThreadBackend
from lightning_mosaic.engine.engine import Engine
from lightning_mosaic.engine.pending import PendingTensor
from lightning_mosaic.engine.races import Entry, HappensBefore, Race, find_races
from lightning_mosaic.engine.recording import RecordingBackend
from lightning_mosaic.engine.resolve import BACKENDS, check_backend, make_backend, why_inline

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
