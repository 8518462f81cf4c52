"""A model zoo of multimodal LightningModules with random weights, and synthetic data for them.

``build("avlm", "edge")`` gives a model; ``data("avlm", "edge", batch_size=8)`` its data module.
Needs transformers (``pip install "lightning-mosaic[zoo]"``); nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from lightning_mosaic.zoo.data import KINDS, ZooDataModule, ZooDataset
from lightning_mosaic.zoo.models import AudioVisionLanguageModel, BindModel, VisionLanguageModel, ZooModule
from lightning_mosaic.zoo.sizes import SIZES, ZOO_SIZES, ZooSize, zoo_size

MODELS: dict[str, type[ZooModule]] = {
    "vlm": VisionLanguageModel,
    "avlm": AudioVisionLanguageModel,
    "bind": BindModel,
}


def build(kind: str, size: str = "tiny", **kwargs: Any) -> ZooModule:
    """The zoo model ``kind`` (``vlm``, ``avlm``, ``bind``) at ``size`` (``tiny``, ``edge``, ``base``)."""
    if kind not in MODELS:
        raise ValueError(f"unknown zoo model {kind!r}; choose one of {', '.join(MODELS)}")
    return MODELS[kind](size, **kwargs)


def data(kind: str, size: str = "tiny", **kwargs: Any) -> ZooDataModule:
    """Synthetic data for ``kind`` at ``size`` (``batch_size``, ``num_samples``, ``num_workers``)."""
    return ZooDataModule(kind, size, **kwargs)


__all__ = [
    "KINDS",
    "MODELS",
    "SIZES",
    "ZOO_SIZES",
    "AudioVisionLanguageModel",
    "BindModel",
    "VisionLanguageModel",
    "ZooDataModule",
    "ZooDataset",
    "ZooModule",
    "ZooSize",
    "build",
    "data",
    "zoo_size",
]
