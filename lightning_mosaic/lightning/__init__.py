"""The Lightning layer: thin adapters over the core."""

from lightning_mosaic.lightning.callback import MosaicProfiler
from lightning_mosaic.lightning.strategy import MosaicStrategy

__all__ = ["MosaicProfiler", "MosaicStrategy"]
