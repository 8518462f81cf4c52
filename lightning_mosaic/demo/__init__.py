"""A small vision + audio + language model trained with ``strategy="mosaic"``.

Run ``lightning-mosaic demo`` (or ``python -m lightning_mosaic.demo``): it trains on synthetic
data, on the CPU by default, and prints the traced module graph and the plan in use. The model is
written the way users write theirs: two encoders, user code that concatenates their outputs, a
projector and a causal language model that reads the projected tokens before the text.

``sizes`` holds the shapes, ``model`` the model and data (Lightning), ``cli`` the command; the
names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_mosaic._lazy import lazy_exports
from lightning_mosaic.demo.sizes import SIZES, DemoSize, size_of

_EXPORTS = {
    "AudioEncoder": "lightning_mosaic.demo.model",
    "CausalLM": "lightning_mosaic.demo.model",
    "DemoDataModule": "lightning_mosaic.demo.model",
    "DemoMultimodalModel": "lightning_mosaic.demo.model",
    "Projector": "lightning_mosaic.demo.model",
    "SyntheticMultimodal": "lightning_mosaic.demo.model",
    "VisionEncoder": "lightning_mosaic.demo.model",
    "main": "lightning_mosaic.demo.cli",
}

__all__ = [
    "SIZES",
    "AudioEncoder",
    "CausalLM",
    "DemoDataModule",
    "DemoMultimodalModel",
    "DemoSize",
    "Projector",
    "SyntheticMultimodal",
    "VisionEncoder",
    "main",
    "size_of",
]

if TYPE_CHECKING:
    from lightning_mosaic.demo.cli import main
    from lightning_mosaic.demo.model import (
        AudioEncoder,
        CausalLM,
        DemoDataModule,
        DemoMultimodalModel,
        Projector,
        SyntheticMultimodal,
        VisionEncoder,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
