"""The execution engine: routes every unit's call, and (with a concurrent backend) runs units
side by side under their quotas."""

from lightning_mosaic.engine.engine import Engine

__all__ = ["Engine"]
