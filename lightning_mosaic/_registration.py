"""Register the ``"mosaic"`` strategies with Lightning when Lightning is imported, without importing it.

``import lightning_mosaic`` must not cost a Lightning import (seconds) nor fail without Lightning,
yet ``Trainer(strategy="mosaic")`` must work after it. So the registration waits for
``lightning.pytorch``: at once when it is already imported, otherwise a finder on ``sys.meta_path``
wraps the loader of ``lightning.pytorch`` and registers right after the package has executed (a
post-import hook). When the first import is the strategy class itself, Lightning loads while the
Lightning layer is half imported: the hook then leaves the registration to the layer, which
registers once it has loaded. A registration that fails is logged with the reason;
``MosaicStrategy()`` instances work all the same.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Sequence
from typing import Any

TARGET = "lightning.pytorch"
LAYER = "lightning_mosaic.lightning"
_lock = threading.RLock()  # the layer registers from inside a registration that imports it


def register_when_lightning_loads() -> None:
    """Register the strategies now if ``lightning.pytorch`` is imported, else once it is."""
    with _lock:
        module = sys.modules.get(TARGET)
        if module is not None and getattr(module, "Trainer", None) is not None:
            _register()
        elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport())


def _loading_ours() -> bool:
    """True while the Lightning layer of this package is itself being imported (it imports Lightning
    on its way): it registers when it has loaded (``lightning_mosaic/lightning/__init__.py``)."""
    module = sys.modules.get(LAYER)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def register_from_layer() -> None:
    """The Lightning layer has loaded (and with it Lightning): register now."""
    with _lock:
        _register(from_layer=True)


def _register(from_layer: bool = False) -> None:
    if not from_layer and _loading_ours():
        return
    try:
        from lightning.pytorch.strategies import StrategyRegistry

        from lightning_mosaic.lightning.strategy import MosaicStrategy

        MosaicStrategy.register_strategies(StrategyRegistry)
    except Exception as err:  # an incompatible Lightning must not break `import lightning`
        from lightning_mosaic._logging import get_logger

        get_logger(__name__).warning(
            f"strategy='mosaic' could not be registered with Lightning ({type(err).__name__}: {err});"
            " pass strategy=MosaicStrategy() instead"
        )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``lightning.pytorch`` with the other finders and registers once it has executed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        loader.exec_module = exec_module  # this loader instance serves this module only
        return spec
