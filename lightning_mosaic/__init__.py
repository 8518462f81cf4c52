"""lightning_mosaic: train multimodal models faster by running their modules side by side on one GPU.

``import lightning_mosaic`` imports neither torch nor Lightning: the names below load on first use,
and the core modules (``graph``, ``profile``, ``perfmodel``, ``plan``, ``planner``, ``simulator``,
``devices``, ``session``, ``engine``) work without Lightning installed. Where Lightning is
installed, the ``"mosaic"`` strategy (and ``"mosaic_spawn"``, ``"mosaic_fork"``) is registered with
it as soon as ``lightning.pytorch`` is imported (at once when it already is), so
``Trainer(strategy="mosaic")`` works after ``import lightning_mosaic``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_mosaic._lazy import lazy_exports
from lightning_mosaic._registration import register_when_lightning_loads

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "AnalyticModel": "lightning_mosaic.perfmodel",
    "DeviceSpec": "lightning_mosaic.devices",
    "Engine": "lightning_mosaic.engine",
    "ModuleGraph": "lightning_mosaic.graph",
    "MosaicProfiler": "lightning_mosaic.lightning",
    "MosaicStrategy": "lightning_mosaic.lightning",
    "PerfModel": "lightning_mosaic.perfmodel",
    "Phase": "lightning_mosaic.plan",
    "Plan": "lightning_mosaic.plan",
    "Profile": "lightning_mosaic.profile",
    "ProfileError": "lightning_mosaic.profile",
    "ProfileSettings": "lightning_mosaic.session",
    "Session": "lightning_mosaic.session",
    "SessionConfig": "lightning_mosaic.session",
    "select_modules": "lightning_mosaic.selection",
    "temporal_plan": "lightning_mosaic.plan",
    "trace": "lightning_mosaic.tracing",
}

__all__ = [
    "AnalyticModel",
    "DeviceSpec",
    "Engine",
    "ModuleGraph",
    "MosaicProfiler",
    "MosaicStrategy",
    "PerfModel",
    "Phase",
    "Plan",
    "Profile",
    "ProfileError",
    "ProfileSettings",
    "Session",
    "SessionConfig",
    "select_modules",
    "temporal_plan",
    "trace",
]

if TYPE_CHECKING:
    from lightning_mosaic.devices import DeviceSpec
    from lightning_mosaic.engine import Engine
    from lightning_mosaic.graph import ModuleGraph
    from lightning_mosaic.lightning import MosaicProfiler, MosaicStrategy
    from lightning_mosaic.perfmodel import AnalyticModel, PerfModel
    from lightning_mosaic.plan import Phase, Plan, temporal_plan
    from lightning_mosaic.profile import Profile, ProfileError
    from lightning_mosaic.selection import select_modules
    from lightning_mosaic.session import ProfileSettings, Session, SessionConfig
    from lightning_mosaic.tracing import trace

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

register_when_lightning_loads()
