"""One training step as ``k`` micro-batch steps: the user's ``training_step`` on each, one combined output.

The batch is split along its first dimension (``microbatch.split_batch``, or the LightningModule's
``mosaic_split_batch(batch, k)`` hook), ``training_step`` runs on every micro-batch, and the
returned losses are combined with weights ``n_i / n`` so one backward pass gives the full batch's
gradients for losses that average over samples. Every ``self.log`` call made meanwhile is held
back and replayed once per key with the combined value (by the call's ``reduce_fx``: the
sample-weighted mean by default, the sum, max or min; the last micro-batch's object for metrics
that accumulate themselves), so Lightning records what the unsplit step would have recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from lightning_mosaic.microbatch import (
    HOOK,
    BatchSplitError,
    batch_size,
    check_split,
    combine,
    combine_outputs,
    split_batch,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mosaic.engine import Engine


def micro_batches_of(module: pl.LightningModule, batch: Any, k: int) -> list[Any]:
    """``batch`` as micro-batches: by the module's split hook if any, else by default."""
    hook = getattr(module, HOOK, None)
    if callable(hook):
        return check_split(hook(batch, k), k)
    return split_batch(batch, k)


def run_micro_steps(
    module: pl.LightningModule,
    step: Callable[..., Any],
    k: int,
    engine: Engine,
    batch: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``step(micro_batch, *args, **kwargs)`` on each of ``k`` micro-batches; the combined output.

    ``step`` is the module's ``training_step``; logging done inside is combined (module docstring).
    Each micro-batch's step runs on its own lane of ``engine`` (see :meth:`Engine.lane`), so the
    encoders of micro-batch ``i + 1`` do not queue behind the loss of micro-batch ``i``.
    """
    if not module.automatic_optimization:
        raise RuntimeError(
            f"micro-batches need automatic optimization, but {type(module).__name__} sets"
            " automatic_optimization = False (its training_step calls backward itself); train with"
            " micro_batches=1"
        )
    parts = micro_batches_of(module, batch, k)
    if len(parts) == 1:
        return step(parts[0], *args, **kwargs)
    counts = _counts(parts)
    recorder = _LogRecorder(module)
    outputs = []
    with recorder:
        for index, part in enumerate(parts):
            recorder.index = index
            with engine.lane(index, part):
                outputs.append(step(part, *args, **kwargs))
    engine.join()  # the caller's stream waits for every lane (and unit) before combining
    engine.hand_over((outputs, recorder.calls))
    recorder.replay(counts)
    return combine_outputs(outputs, counts)


def _counts(parts: list[Any]) -> list[int]:
    """Samples per micro-batch; micro-batches of a type whose size cannot be found count as equal."""
    try:
        return [batch_size(part) for part in parts]
    except BatchSplitError:
        return [1] * len(parts)


class _LogRecorder:
    """Holds back ``module.log`` calls during the micro-batch steps, replays them combined afterwards."""

    def __init__(self, module: pl.LightningModule) -> None:
        self.module = module
        self.index = 0
        self.calls: dict[str, list[tuple[int, Any, tuple, dict]]] = {}
        self._saved: Any = None

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.setdefault(name, []).append((self.index, value, args, kwargs))

    def __enter__(self) -> _LogRecorder:
        self._saved = self.module.__dict__.get("log")
        self.module.log = self.log  # type: ignore[method-assign]  # instance attribute, removed on exit
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.module.log
        if self._saved is not None:
            self.module.log = self._saved  # type: ignore[method-assign]

    def replay(self, counts: list[int]) -> None:
        """One real ``log`` call per name: the combined value, with the last call's options."""
        for name, calls in self.calls.items():
            last = {}  # a name logged several times in one micro-batch: its last value there counts
            for index, value, args, kwargs in calls:
                last[index] = (value, args, kwargs)
            indices = sorted(last)
            _, args, kwargs = last[indices[-1]]
            values = [last[i][0] for i in indices]
            if not kwargs.get("enable_graph", False):
                values = [_detached(v) for v in values]
            value = _reduce(values, [counts[i] for i in indices], kwargs.get("reduce_fx", "mean"))
            self.module.log(name, value, *args, **kwargs)


def _reduce(values: list[Any], counts: list[int], reduce_fx: Any) -> Any:
    """The value of the unsplit step: ``reduce_fx`` says what a logged value is across samples.

    ``"mean"`` (Lightning's default): the sample-weighted mean; ``"sum"``: the sum (counts, totals);
    ``"max"`` / ``"min"``: the largest / smallest. Metric objects and other values: the last one.
    """
    name = reduce_fx if isinstance(reduce_fx, str) else getattr(reduce_fx, "__name__", "")
    if name in ("sum", "max", "min") and all(isinstance(v, (torch.Tensor, float, int)) for v in values):
        stacked = torch.stack([torch.as_tensor(v) for v in values])
        reduced = getattr(stacked, name)(dim=0)
        reduced = reduced.values if name != "sum" else reduced
        return reduced if isinstance(values[0], torch.Tensor) else reduced.item()
    return combine(values, counts)


def _detached(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach() if callable(detach) and hasattr(value, "requires_grad") else value
