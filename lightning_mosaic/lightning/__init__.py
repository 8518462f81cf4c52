"""The Lightning layer: thin adapters over the core."""

from lightning_mosaic import _registration
from lightning_mosaic.lightning.callback import MosaicProfiler
from lightning_mosaic.lightning.strategy import MosaicStrategy

__all__ = ["MosaicProfiler", "MosaicStrategy"]

_registration.register_from_layer()  # Lightning is loaded now; its import hook met this layer half loaded
