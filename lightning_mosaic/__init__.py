"""lightning_mosaic: train multimodal models faster by running their modules side by side on one GPU.

``import lightning_mosaic`` registers the ``"mosaic"`` strategy (and ``"mosaic_spawn"``,
``"mosaic_fork"``) with Lightning, so ``Trainer(strategy="mosaic")`` works.
"""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_mosaic._logging import logger as _logger  # noqa: F401  (configures the package logger)
from lightning_mosaic.engine import Engine
from lightning_mosaic.graph import ModuleGraph, trace
from lightning_mosaic.lightning import MosaicProfiler, MosaicStrategy
from lightning_mosaic.perfmodel import PerfModel
from lightning_mosaic.planner import Phase, Plan, temporal_plan
from lightning_mosaic.profile import Profile, ProfileError
from lightning_mosaic.selection import select_modules

__version__ = "0.1.0.dev0"

MosaicStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "Engine",
    "ModuleGraph",
    "MosaicProfiler",
    "MosaicStrategy",
    "PerfModel",
    "Phase",
    "Plan",
    "Profile",
    "ProfileError",
    "select_modules",
    "temporal_plan",
    "trace",
]
