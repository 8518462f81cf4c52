"""The shapes of the zoo's models at each size, as plain data (Hugging Face configs are built from them).

``tiny`` trains in seconds on a CPU (tests). ``edge`` is a CLIP ViT-B/16 vision tower, a Whisper-base
encoder and a Qwen2-0.5B-shaped backbone (vocabulary cut to 32k); ``base`` a ViT-L/14, a
Whisper-small encoder and a Qwen2-1.5B-shaped backbone. Weights are random: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

SIZES = ("tiny", "edge", "base")


@dataclass(frozen=True)
class Tower:
    """A transformer encoder: width, depth, heads, MLP width."""

    hidden: int
    layers: int
    heads: int
    mlp: int


@dataclass(frozen=True)
class ZooSize:
    """Every shape one size of the zoo needs."""

    image: int  # image side, pixels
    patch: int
    vision: Tower
    mels: int  # log-mel bins
    audio_positions: int  # Whisper encoder positions (input frames are twice as many)
    audio: Tower
    text_tokens: int  # text tokens per sample (padded)
    vocab: int
    llm: Tower
    llm_kv_heads: int
    text: Tower  # the text encoder of "bind"
    embed: int  # the shared embedding width of "bind"

    @property
    def frames(self) -> int:
        return 2 * self.audio_positions


ZOO_SIZES: dict[str, ZooSize] = {
    "tiny": ZooSize(
        image=32,
        patch=8,
        vision=Tower(32, 2, 4, 64),
        mels=8,
        audio_positions=8,
        audio=Tower(32, 2, 4, 64),
        text_tokens=8,
        vocab=128,
        llm=Tower(48, 2, 4, 96),
        llm_kv_heads=2,
        text=Tower(32, 2, 4, 64),
        embed=32,
    ),
    "edge": ZooSize(
        image=224,
        patch=16,
        vision=Tower(768, 12, 12, 3072),
        mels=80,
        audio_positions=500,
        audio=Tower(512, 6, 8, 2048),
        text_tokens=64,
        vocab=32000,
        llm=Tower(896, 24, 14, 4864),
        llm_kv_heads=2,
        text=Tower(512, 12, 8, 2048),
        embed=512,
    ),
    "base": ZooSize(
        image=224,
        patch=14,
        vision=Tower(1024, 24, 16, 4096),
        mels=80,
        audio_positions=750,
        audio=Tower(768, 12, 12, 3072),
        text_tokens=128,
        vocab=32000,
        llm=Tower(1536, 28, 12, 8960),
        llm_kv_heads=2,
        text=Tower(768, 12, 12, 3072),
        embed=768,
    ),
}


def zoo_size(size: str) -> ZooSize:
    """The shapes of ``size``; a ``ValueError`` naming the sizes otherwise."""
    if size not in ZOO_SIZES:
        raise ValueError(f"unknown zoo size {size!r}; choose one of {', '.join(SIZES)}")
    return ZOO_SIZES[size]
