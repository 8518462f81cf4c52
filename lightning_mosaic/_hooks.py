"""Module hooks bound to live state, which copies of the module leave behind.

The engine, the tracer and the input recorder hook the units while training runs. Users copy
modules during ``fit`` (weight averaging deep-copies the LightningModule; ``torch.save(module)``
pickles it): a copy must be a plain module — neither routed through this run's engine nor failing
to pickle a closure. So each hook is a :class:`LiveHook`, which a deep copy or a pickle turns into
an :class:`Inert` hook that does nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Inert:
    """What a copied or pickled module keeps of a live hook: a hook that changes nothing."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __repr__(self) -> str:
        return "Inert()"


class LiveHook:
    """Calls ``fn``; copies (``copy.deepcopy``, pickle) are :class:`Inert`.

    Where TorchDynamo is loaded (the user compiled something), ``fn`` runs outside it: a compiled
    caller (a compiled ``training_step``) breaks its graph around the hook instead of tracing the
    engine's stream switches and pending outputs into it, and the unit's forward is compiled on its
    own.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = _outside_dynamo(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Inert:
        return Inert()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Inert, ())

    def __repr__(self) -> str:
        return f"LiveHook({getattr(self.fn, '__qualname__', self.fn)!r})"


def _outside_dynamo(fn: Callable[..., Any]) -> Callable[..., Any]:
    if "torch._dynamo" not in sys.modules:
        return fn  # nothing is compiled in this process
    import torch._dynamo

    return torch._dynamo.disable(fn, recursive=True)
