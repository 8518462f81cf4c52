"""Frozen units one step ahead: compute a frozen encoder on the next batch while this step trains.

A unit the plan lists in ``Plan.lookahead`` has no trainable parameters and takes only tensors of
the batch, so its output for the next batch does not depend on this step's update. At the start of
training step ``t`` its forward on batch ``t + 1`` is queued on the unit's stream (overlapping step
``t``'s backbone); in step ``t + 1`` the unit's call returns that output instead of computing it
again. The numbers are those of plain Lightning: same module, same inputs, same autocast and grad
mode, and no random numbers drawn (checked).

Batch ``t + 1`` comes from Lightning's data fetcher (fetched one step early). A unit
stays on the ordinary path (once said why in the log) when its inputs are not tensors of the batch
itself, when it draws random numbers or updates running statistics, or when the LightningModule
or its DataModule changes batches on their way to the device (``on_before_batch_transfer``,
``transfer_batch_to_device``, ``on_after_batch_transfer``).

Frozen is checked on the module, every step: a unit with a parameter that requires grad (unfrozen
by a callback, say) is no longer computed ahead, and a prefetched output is served only when no
parameter or buffer of the unit was replaced or changed in place since it was computed (an EMA
teacher updated after each step; each tensor's storage and version counter are compared). Writes
through ``.data`` bypass version counters: a unit updated that way must not be listed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_mosaic._logging import get_logger, warn_once
from lightning_mosaic._tree import iter_tensors, key_get, leaves_with_paths, map_leaves, map_tensors

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_mosaic.engine import Engine

log = get_logger(__name__)
TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


class _Path:
    """Where a unit's input tensor sits in the batch: a key path from the top (a leaf of a template)."""

    def __init__(self, keys: tuple[Any, ...]) -> None:
        self.keys = keys

    def get(self, batch: Any) -> Any:
        return key_get(batch, self.keys)


class Lookahead:
    """Runs the plan's lookahead units one step ahead of the training loop; see the module docstring.

    ``hits`` counts the calls served from a prefetched output, ``prefetched`` the prefetches made.
    """

    def __init__(self, units: dict[str, nn.Module], names: list[str], engine: Engine) -> None:
        self.units = {name: units[name] for name in names}
        self.engine = engine
        self.hits = 0
        self.prefetched = 0
        self._recipes: dict[str, tuple[Any, dict[str, Any]] | None] = {}  # None: not eligible
        # (unit, (epoch, batch_idx)) -> (output, the unit's weights when it was computed)
        self._ready: dict[tuple[str, tuple[int, int]], tuple[Any, list[tuple[int, int]]]] = {}
        self._batch: Any = None
        self._key: tuple[int, int] | None = None
        self._originals: dict[str, Callable[..., Any]] = {}

    def attach(self) -> None:
        """Patch each unit's ``forward`` on the instance (removed by :meth:`detach`)."""
        for name, module in self.units.items():
            if "forward" in module.__dict__:
                continue
            self._originals[name] = module.forward
            module.forward = self._forward(name, module.forward)  # type: ignore[method-assign]

    def detach(self) -> None:
        for name in self._originals:
            self.units[name].__dict__.pop("forward", None)
        self._originals.clear()
        self._ready.clear()

    def step(self, trainer: pl.Trainer, batch: Any, batch_idx: int) -> None:
        """Training step ``batch_idx`` starts on ``batch``: queue the units' work for the next one."""
        self._batch, self._key = batch, (trainer.current_epoch, batch_idx)
        for stale in [k for k in self._ready if k[1] != self._key]:
            del self._ready[stale]  # prefetched for a batch that never came (an epoch cut short)
        overridden = [
            f"{type(owner).__name__}.{hook}"
            for owner in (trainer.lightning_module, trainer.datamodule)
            if owner is not None
            for hook in TRANSFER_HOOKS
            if is_overridden(hook, owner)
        ]
        if overridden:
            self._refuse_all(
                f"{', '.join(overridden)} {'is' if len(overridden) == 1 else 'are'} overridden: batches are"
                " changed on their way to the device, where the next one is not seen"
            )
            return
        for name, unit in self.units.items():
            if self._recipes.get(name) is not None and _trainable(unit):
                self._refuse(name, "its parameters require grad now")
        learned = {name: r for name in self.units if (r := self._recipes.get(name)) is not None}
        if not learned:
            return  # the first step learns where the inputs come from
        upcoming = _next_batch(trainer)
        if upcoming is None:
            return  # the epoch's last batch, or a fetcher without a look at the next batch
        key = (trainer.current_epoch, batch_idx + 1)
        for name, recipe in learned.items():
            self._prefetch(trainer, name, recipe, upcoming, key)

    def end_step(self) -> None:
        self._batch = self._key = None

    # ------------------------------------------------------------------ internals

    def _forward(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._batch is None:  # outside a training step
                return original(*args, **kwargs)
            recipe = self._recipes.get(name, ...)
            if recipe is ...:
                return self._learn(name, original, args, kwargs)
            ready = self._ready.pop((name, self._key), None)
            if ready is not None and recipe is not None and self._matches(recipe[0], (args, kwargs)):
                out, weights = ready
                if weights == _weights(self.units[name]):
                    self.hits += 1
                    return out
                self._refuse(
                    name, "its parameters or buffers changed since the previous step (an EMA update?)"
                )
            return original(*args, **kwargs)

        return forward

    def _learn(self, name: str, original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """The first call in a training step: find the inputs in the batch, check for random numbers."""
        module = self.units[name]
        template, missing = _template((args, kwargs), _leaves(self._batch))
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        out = original(*args, **kwargs)
        reason = None
        if _trainable(module):
            reason = "its parameters require grad"
        elif missing:
            reason = f"its input {missing} is not a tensor of the batch itself"
        elif not torch.equal(cpu, torch.get_rng_state()) or (
            cuda is not None
            and any(not torch.equal(a, b) for a, b in zip(cuda, torch.cuda.get_rng_state_all(), strict=True))
        ):
            reason = "it draws random numbers (dropout in training mode?)"
        elif any(getattr(m, "track_running_stats", False) and m.training for m in module.modules()):
            reason = "it updates running statistics in training mode"
        if reason is not None:
            self._refuse(name, reason)
            return out
        state = {
            "grad": torch.is_grad_enabled(),
            "autocast": [
                (kind, torch.get_autocast_dtype(kind))
                for kind in ("cuda", "cpu")
                if torch.is_autocast_enabled(kind)
            ],
        }
        self._recipes[name] = (template, state)
        return out

    def _refuse(self, name: str, reason: str) -> None:
        self._recipes[name] = None
        for key in [k for k in self._ready if k[0] == name]:
            del self._ready[key]
        warn_once(log, f"lookahead-{name}-{reason}", f"{name} is not computed one step ahead: {reason}")

    def _refuse_all(self, reason: str) -> None:
        for name in self.units:
            if self._recipes.get(name, ...) is not None:
                self._refuse(name, reason)

    def _matches(self, template: Any, call: Any) -> bool:
        """The call's tensors are the current batch's own tensors at the recipe's places."""
        expected = [p.get(self._batch) for p in _paths(template)]
        given = list(iter_tensors(call))
        return len(expected) == len(given) and all(a is b for a, b in zip(expected, given, strict=True))

    def _prefetch(self, trainer: pl.Trainer, name: str, recipe: Any, upcoming: Any, key: tuple) -> None:
        template, state = recipe
        try:
            inputs = [p.get(upcoming) for p in _paths(template)]
        except (KeyError, IndexError, AttributeError, TypeError):
            return  # the next batch has another shape: compute it in its own step
        inputs = trainer.strategy.batch_to_device(trainer.precision_plugin.convert_input(inputs))
        args, kwargs = _fill(template, iter(inputs))
        backend = self.engine.backend
        with self.engine.paused():  # the engine's hooks stay out; the unit's stream is set here
            caller = backend.current_stream()
            stream = backend.stream(name) if backend.concurrent else None
            if stream is not None:
                backend.wait(stream, backend.record(caller))
                for tensor in inputs:
                    backend.record_stream(tensor, stream)
                backend.set_current(stream)
            try:
                with _autocast(state["autocast"]), torch.set_grad_enabled(state["grad"]):
                    out = self._originals[name](*args, **kwargs)
            finally:
                if stream is not None:
                    backend.set_current(caller)
        self._ready[(name, key)] = (out, _weights(self.units[name]))
        self.prefetched += 1


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _weights(module: nn.Module) -> list[tuple[int, int]]:
    """Each parameter's and buffer's storage and version: what changes when the unit's state does."""
    return [(t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers())]


def _next_batch(trainer: pl.Trainer) -> Any:
    """The batch of the next step (not yet on the device), or None at the end of the epoch.

    Lightning's fetcher holds the next batch already when the loader has no length; otherwise it
    is fetched here one step early and left in the fetcher's queue, where Lightning takes it next,
    with the fetcher's count and end-of-data flag as they were (so epochs end where they did).
    """
    from lightning.pytorch.loops.fetchers import _DataFetcher, _PrefetchDataFetcher

    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if not isinstance(fetcher, _PrefetchDataFetcher):
        return None
    if not fetcher.batches:
        if fetcher.done:
            return None
        fetched, done = fetcher.fetched, fetcher.done
        try:
            item = _DataFetcher.__next__(fetcher)
        except StopIteration:
            return None
        finally:
            fetcher.fetched, fetcher.done = fetched, done
        fetcher.batches.append(item)
    item = fetcher.batches[0]
    return item[0] if isinstance(item, tuple) and len(item) == 3 else None


def _leaves(batch: Any) -> dict[int, _Path]:
    """``id(tensor) -> path`` of every tensor in ``batch``."""
    return {
        id(leaf): _Path(path) for path, leaf in leaves_with_paths(batch) if isinstance(leaf, torch.Tensor)
    }


def _template(call: Any, leaves: dict[int, _Path]) -> tuple[Any, str | None]:
    """``call`` with every tensor replaced by its path in the batch; the first tensor not found, if any."""
    missing: list[str] = []

    def place(tensor: torch.Tensor) -> Any:
        path = leaves.get(id(tensor))
        if path is None:
            missing.append(f"of shape {tuple(tensor.shape)}")
            return None
        return path

    return map_tensors(place, call), (missing[0] if missing else None)


def _paths(template: Any) -> list[_Path]:
    return [leaf for _, leaf in leaves_with_paths(template) if isinstance(leaf, _Path)]


def _fill(template: Any, tensors: Iterator[Any]) -> Any:
    return map_leaves(lambda _, leaf: next(tensors) if isinstance(leaf, _Path) else leaf, template)


class _autocast:
    """Re-enter the autocast regions that were active at the unit's call."""

    def __init__(self, regions: list[tuple[str, torch.dtype]]) -> None:
        self.contexts = [torch.autocast(kind, dtype=dtype) for kind, dtype in regions]

    def __enter__(self) -> None:
        for context in self.contexts:
            context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for context in reversed(self.contexts):
            context.__exit__(*exc)
