"""Register the ``"mosaic"`` strategies with Lightning when Lightning is imported, without importing it.

``import lightning_mosaic`` must not cost a Lightning import (seconds) nor fail without Lightning,
yet ``Trainer(strategy="mosaic")`` must work after it. So the registration waits for the Lightning
package: at once when it is already imported, otherwise a finder on ``sys.meta_path`` wraps its
loader and registers right after the package has executed (a post-import hook). Both packages are
served: ``lightning.pytorch`` gets the strategies of ``lightning_mosaic.lightning``, the standalone
``pytorch_lightning`` those of its mirror ``lightning_mosaic.pytorch_lightning`` (``_mirror.py``).
When the first import is the strategy class itself, Lightning loads while the layer is half
imported: the hook then leaves the registration to the layer, which registers once it has loaded.
A registration that fails is logged with the reason; ``MosaicStrategy()`` instances work all the same.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from collections.abc import Sequence
from typing import Any

# each Lightning package -> the layer of this package that it gets
LAYERS = {
    "lightning.pytorch": "lightning_mosaic.lightning",
    "pytorch_lightning": "lightning_mosaic.pytorch_lightning",
}
_lock = threading.RLock()  # the layer registers from inside a registration that imports it


def register_when_lightning_loads() -> None:
    """Register the strategies with each Lightning package imported now, and with the others once they are."""
    from lightning_mosaic import _mirror

    _mirror.install()
    with _lock:
        waiting = False
        for target in LAYERS:
            module = sys.modules.get(target)
            if module is not None and getattr(module, "Trainer", None) is not None:
                _register(target)
            else:
                waiting = True
        if waiting and not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport())


def _loading(layer: str) -> bool:
    """True while ``layer`` is itself being imported (it imports Lightning on its way): it registers
    when it has loaded (``lightning_mosaic/lightning/__init__.py``)."""
    module = sys.modules.get(layer)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def register_from_layer(layer: str = "lightning_mosaic.lightning") -> None:
    """``layer`` has loaded (and with it its Lightning package): register now."""
    target = next(name for name, ours in LAYERS.items() if ours == layer)
    with _lock:
        _register(target, from_layer=True)


def _register(target: str, from_layer: bool = False) -> None:
    layer = LAYERS[target]
    if not from_layer and _loading(layer):
        return
    try:
        registry = importlib.import_module(f"{target}.strategies").StrategyRegistry
        strategy = importlib.import_module(f"{layer}.strategy").MosaicStrategy
        strategy.register_strategies(registry)
    except Exception as err:  # an incompatible Lightning must not break `import lightning`
        from lightning_mosaic._logging import get_logger

        get_logger(__name__).warning(
            f"strategy='mosaic' could not be registered with {target} ({type(err).__name__}: {err});"
            f" pass strategy={layer}.MosaicStrategy() instead"
        )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds a Lightning package with the other finders and registers once it has executed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname not in LAYERS:
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
            if self in sys.meta_path and all(name in sys.modules for name in LAYERS):
                sys.meta_path.remove(self)
            _register(fullname)

        loader.exec_module = exec_module  # this loader instance serves this module only
        return spec
