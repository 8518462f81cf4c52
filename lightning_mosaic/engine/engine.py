"""Route each unit's forward call through the engine with module hooks.

The engine never wraps a module: it registers hooks on each unit, so ``state_dict`` keys,
checkpoints and ``isinstance`` checks stay exactly as in plain PyTorch, and :meth:`Engine.detach`
leaves the model as it found it. The inline backend runs every unit on the caller's stream, one
after another, as plain PyTorch does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


class Engine:
    """Owns the hooks on the units and the per-step bookkeeping.

    ``calls`` counts the routed calls of each unit since :meth:`attach`; ``steps`` counts the steps
    run inside :meth:`step`.
    """

    backend = "inline"

    def __init__(self) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.calls: Counter[str] = Counter()
        self.steps = 0
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, modules: Mapping[str, nn.Module]) -> None:
        """Hook every unit in ``modules`` (name -> module). Attaching twice is an error."""
        if self._handles:
            raise RuntimeError(f"engine is already attached to {list(self.modules)}; call detach() first")
        self.modules = dict(modules)
        self.calls.clear()
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))

    def detach(self) -> None:
        """Remove every hook; the modules are exactly as before :meth:`attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.modules = {}

    @contextmanager
    def step(self) -> Iterator[None]:
        """Bracket one step call (``training_step`` and friends); counted in ``steps``."""
        try:
            yield
        finally:
            self.steps += 1

    def _pre_hook(self, name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.calls[name] += 1

        return hook

    def __getstate__(self) -> dict[str, Any]:
        if self._handles:
            raise RuntimeError("an attached engine cannot be pickled; call detach() first")
        return self.__dict__.copy()
