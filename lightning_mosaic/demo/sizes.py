"""Shapes of the demo model and its data, from ``tiny`` (tests, a second on a CPU) to ``base``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSize:
    """Shapes of the demo model and its data."""

    image: int  # image side, pixels
    patch: int  # ViT patch side
    mels: int  # log-mel bins
    frames: int  # audio frames
    width: int  # encoder width
    layers: int  # encoder layers
    heads: int  # attention heads of the encoders
    llm_width: int
    llm_layers: int
    vocab: int
    text: int  # text tokens per sample
    llm_heads: int = 0  # attention heads of the language model (0: as many as the encoders')

    def __post_init__(self) -> None:
        llm_heads = self.llm_heads or self.heads
        for width, heads, what in ((self.width, self.heads, "encoder"), (self.llm_width, llm_heads, "LLM")):
            if width % heads:
                raise ValueError(f"{what} width {width} is not divisible by its {heads} attention heads")
        if self.image % self.patch:
            raise ValueError(f"image side {self.image} is not a multiple of the patch side {self.patch}")


SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        image=16,
        patch=4,
        mels=8,
        frames=16,
        width=32,
        layers=1,
        heads=2,
        llm_width=32,
        llm_layers=1,
        vocab=64,
        text=8,
    ),
    "small": DemoSize(
        image=32,
        patch=4,
        mels=32,
        frames=64,
        width=64,
        layers=2,
        heads=4,
        llm_width=96,
        llm_layers=2,
        vocab=256,
        text=16,
    ),
    "medium": DemoSize(  # encoders that leave an H100 underused at small batches
        image=224,
        patch=16,
        mels=80,
        frames=400,
        width=512,
        layers=6,
        heads=8,
        llm_width=768,
        llm_heads=12,
        llm_layers=6,
        vocab=8000,
        text=64,
    ),
    "base": DemoSize(
        image=224,
        patch=16,
        mels=80,
        frames=1000,
        width=768,
        layers=12,
        heads=12,
        llm_width=1024,
        llm_heads=16,
        llm_layers=12,
        vocab=32000,
        text=128,
    ),
}


def size_of(size: str | DemoSize) -> DemoSize:
    """The :class:`DemoSize` named ``size`` (a ``DemoSize`` as it is)."""
    if isinstance(size, DemoSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]
