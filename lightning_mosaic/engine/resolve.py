"""Which backend runs the units: a name (or an instance) resolved for a device, loudly when it falls back.

``"auto"`` is green contexts on a GPU whose torch can bind a stream to one, else plain CUDA streams
(SM quotas not enforced: said once), else inline on a CPU. A GPU backend asked for on a CPU runs
inline, with a warning. :func:`why_inline` says why units will not run side by side, before any
backend exists. The backends (and torch) load when one is needed, so command lines have the names
without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_mosaic._logging import get_logger, warn_once

if TYPE_CHECKING:
    import torch

    from lightning_mosaic.engine.backends import Backend

log = get_logger(__name__)
BACKENDS = ("auto", "green_context", "streams", "cpu", "none")


def check_backend(spec: str | Backend) -> str | Backend:
    """``spec`` if it names a backend or is one; a ``ValueError`` listing the names otherwise."""
    from lightning_mosaic.engine.backends import Backend

    if not isinstance(spec, Backend) and spec not in BACKENDS:
        raise ValueError(f"backend={spec!r} is not one of {', '.join(BACKENDS)}, or a Backend instance")
    return spec


def make_backend(spec: str | Backend, device: torch.device) -> Backend:
    """The backend for ``spec`` on ``device``, falling back (and saying so once) where it must."""
    import lightning_mosaic.engine.green as green
    from lightning_mosaic.engine.backends import (
        Backend,
        CudaStreamBackend,
        GreenContextBackend,
        InlineBackend,
    )
    from lightning_mosaic.engine.cpu import CpuThreadBackend

    if isinstance(check_backend(spec), Backend):
        return spec
    if spec == "none":
        return InlineBackend()
    if spec == "cpu":
        return CpuThreadBackend()
    if device.type != "cuda":
        if spec != "auto":
            warn_once(
                log,
                f"backend-{spec}-no-cuda",
                f"backend={spec!r} needs a CUDA device but the model is on {device}; units run inline",
            )
        return InlineBackend()
    if spec == "streams":
        return CudaStreamBackend()
    api = green.detect()
    if api is not None and api.usable:
        return GreenContextBackend(api)
    reason = (
        "this torch has no torch.cuda.green_contexts"
        if api is None
        else f"this torch's green-context API cannot bind a stream to a context ({api.describe()})"
    )
    warn_once(
        log,
        "green-context-fallback",
        f"SM quotas are not enforced: {reason}; units run on plain CUDA streams and may each use the"
        " whole GPU",
    )
    return CudaStreamBackend()


def why_inline(backend: str | Backend, device: torch.device) -> str | None:
    """Why units cannot run side by side under ``backend`` on ``device`` (None when they can).

    ``backend="cpu"`` runs units inline but is profiled and planned with thread quotas: a rehearsal
    of the GPU pipeline, so it counts as able.
    """
    from lightning_mosaic.engine.backends import Backend
    from lightning_mosaic.engine.cpu import CpuThreadBackend

    if isinstance(backend, Backend):
        able = backend.concurrent or isinstance(backend, CpuThreadBackend)
        return None if able else f"backend {backend.name!r} runs the units inline"
    if backend == "cpu":
        return None
    if backend == "none":
        return "backend 'none' runs the units inline"
    if device.type != "cuda":
        return (
            f"the units run inline on {device} (backend={backend!r} needs a GPU to run them side by side;"
            " backend='cpu' rehearses profiling and planning with thread quotas)"
        )
    return None
