"""The Lightning layer: thin adapters over the core."""

from lightning_mosaic import _registration
from lightning_mosaic.lightning.callback import MosaicProfiler
from lightning_mosaic.lightning.strategy import MosaicStrategy

__all__ = ["MosaicProfiler", "MosaicStrategy"]

# Lightning is loaded now; its import hook met this layer half loaded
_registration.register_from_layer(__name__)
