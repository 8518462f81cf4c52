"""Hugging Face multimodal models of every family mosaic finds units in, from tiny configs (no downloads).

``FAMILIES[name]`` is ``(model, batch)``: ``model()`` builds the ``*ForConditionalGeneration`` (or the
two-tower ``*Model``), ``batch(seed, size)`` a training batch for it, labels included. ``UNITS[name]``
holds the units mosaic should find when a LightningModule holds the model as ``self.model``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import transformers as t
from torch import Tensor
from torch.utils.data import DataLoader

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=160,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
MROPE = {"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 10000.0}
AUDIO = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    num_mel_bins=16,
    max_source_positions=50,
)
QWEN_VISION = dict(
    depth=2, num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3
)
QWEN25_VISION = dict(
    QWEN_VISION,
    hidden_size=32,
    out_hidden_size=48,
    intermediate_size=64,
    fullatt_block_indexes=[1],
    window_size=8,
)
IMAGE, VIDEO, AUDIO_TOKEN = 150, 153, 154
Batch = dict[str, Tensor]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text(seed: int, size: int, *specials: tuple[int, int]) -> Batch:
    """Token ids: a run of placeholders per ``(token, count)``, then 6 text tokens (labelled)."""
    g = _generator(seed)
    ids = torch.cat(
        [torch.full((size, n), tok) for tok, n in specials] + [torch.randint(3, 100, (size, 6), generator=g)],
        1,
    )
    return {"input_ids": ids, "labels": ids.masked_fill(ids >= IMAGE, -100)}


def _llava_config(cls: Any, **extra: Any) -> Any:
    return cls(
        vision_config=t.CLIPVisionConfig(**VISION, image_size=32, patch_size=8),
        text_config=t.Qwen2Config(**TEXT),
        image_token_index=IMAGE,
        **extra,
    )


def llava() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        return t.LlavaForConditionalGeneration(_llava_config(t.LlavaConfig))

    def batch(seed: int, size: int) -> Batch:
        return {
            **_text(seed, size, (IMAGE, 16)),
            "pixel_values": torch.randn(size, 3, 32, 32, generator=_generator(seed)),
        }

    return model, batch


def _anyres(cls: Any, config: Any, **extra: Any) -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        return cls(_llava_config(config, image_grid_pinpoints=[[32, 32]], **extra))

    def batch(seed: int, size: int) -> Batch:
        # a 32x32 image is its base view and one crop, 16 patches each, plus a newline per row of the crop
        pixels = torch.randn(size, 2, 3, 32, 32, generator=_generator(seed))
        return {
            **_text(seed, size, (IMAGE, 36)),
            "pixel_values": pixels,
            "image_sizes": torch.tensor([[32, 32]] * size),
        }

    return model, batch


def llava_next() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _anyres(t.LlavaNextForConditionalGeneration, t.LlavaNextConfig)


def llava_onevision() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _anyres(
        t.LlavaOnevisionForConditionalGeneration,
        t.LlavaOnevisionConfig,
        vision_aspect_ratio="anyres_max_1",
        vision_feature_select_strategy="default",
    )


def _qwen_vl(kind: str, vision: dict) -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        config = getattr(t, f"{kind}Config")(
            vision_config=vision,
            text_config=dict(TEXT, rope_parameters=MROPE),
            image_token_id=IMAGE,
            vision_start_token_id=151,
            vision_end_token_id=152,
            video_token_id=VIDEO,
        )
        return getattr(t, f"{kind}ForConditionalGeneration")(config)

    def batch(seed: int, size: int) -> Batch:
        # one 16x16 image per sample: a (1, 4, 4) grid of patches, packed one row per patch; 4 tokens
        # after the 2x2 merge
        text = _text(seed, size, (IMAGE, 4))
        return {
            **text,
            "pixel_values": torch.randn(16 * size, 3 * 2 * 4 * 4, generator=_generator(seed)),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * size),
            "mm_token_type_ids": (text["input_ids"] == IMAGE).int(),
        }

    return model, batch


def qwen2_vl() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _qwen_vl("Qwen2VL", dict(QWEN_VISION, embed_dim=32, hidden_size=48))


def qwen2_5_vl() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _qwen_vl("Qwen2_5_VL", QWEN25_VISION)


def _audio(seed: int, size: int) -> Batch:
    # 100 frames: 50 after the encoder's strided convolution, 25 after its pooling
    return {
        "input_features": torch.randn(size, 16, 100, generator=_generator(seed)),
        "feature_attention_mask": torch.ones(size, 100, dtype=torch.long),
    }


def qwen2_audio() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        config = t.Qwen2AudioConfig(
            audio_config=dict(AUDIO, model_type="qwen2_audio_encoder"),
            text_config=t.Qwen2Config(**TEXT),
            audio_token_index=IMAGE,
        )
        return t.Qwen2AudioForConditionalGeneration(config)

    def batch(seed: int, size: int) -> Batch:
        return {**_text(seed, size, (IMAGE, 25)), **_audio(seed, size)}

    return model, batch


def qwen2_5_omni_thinker() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig

        config = Qwen2_5OmniThinkerConfig(
            audio_config=dict(AUDIO, output_dim=48, n_window=50),
            vision_config=QWEN25_VISION,
            text_config=dict(TEXT, rope_parameters=MROPE),
            audio_token_index=AUDIO_TOKEN,
            image_token_index=IMAGE,
            video_token_index=VIDEO,
            audio_start_token_id=155,
            audio_end_token_id=156,
            user_token_id=157,
        )
        return t.Qwen2_5OmniThinkerForConditionalGeneration(config)

    def batch(seed: int, size: int) -> Batch:
        return {
            **_text(seed, size, (IMAGE, 4), (AUDIO_TOKEN, 25)),
            "pixel_values": torch.randn(16 * size, 96, generator=_generator(seed)),
            "image_grid_thw": torch.tensor([[1, 4, 4]] * size),
            **_audio(seed, size),
        }

    return model, batch


def _idefics(kind: str) -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        config = getattr(t, f"{kind}Config")(
            vision_config=dict(VISION, image_size=32, patch_size=8),
            text_config=dict(TEXT, model_type="llama"),
            image_token_id=IMAGE,
            scale_factor=2,
        )
        return getattr(t, f"{kind}ForConditionalGeneration")(config)

    def batch(seed: int, size: int) -> Batch:
        # one 32x32 image per sample: 16 patches, 4 tokens after the pixel shuffle
        pixels = torch.randn(size, 1, 3, 32, 32, generator=_generator(seed))
        return {**_text(seed, size, (IMAGE, 4)), "pixel_values": pixels}

    return model, batch


def idefics3() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _idefics("Idefics3")


def smolvlm() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _idefics("SmolVLM")


def paligemma() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        config = t.PaliGemmaConfig(
            vision_config=dict(VISION, image_size=32, patch_size=8, model_type="siglip_vision_model"),
            text_config=dict(TEXT, model_type="gemma", head_dim=12),
            image_token_index=IMAGE,
            vocab_size=160,
            projection_dim=48,
            hidden_size=48,
        )
        return t.PaliGemmaForConditionalGeneration(config)

    def batch(seed: int, size: int) -> Batch:
        text = _text(seed, size, (IMAGE, 16))
        pixels = torch.randn(size, 3, 32, 32, generator=_generator(seed))
        return {**text, "pixel_values": pixels, "token_type_ids": (text["input_ids"] != IMAGE).long()}

    return model, batch


def blip2() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        config = t.Blip2Config(
            vision_config=dict(VISION, image_size=32, patch_size=8),
            qformer_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                encoder_hidden_size=32,
                vocab_size=100,
            ),
            text_config=dict(TEXT, model_type="qwen2"),
            num_query_tokens=4,
            image_token_index=IMAGE,
        )
        return t.Blip2ForConditionalGeneration(config)

    def batch(seed: int, size: int) -> Batch:
        return {
            **_text(seed, size, (IMAGE, 4)),
            "pixel_values": torch.randn(size, 3, 32, 32, generator=_generator(seed)),
        }

    return model, batch


def _two_towers(kind: str) -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    def model() -> Any:
        config = getattr(t, f"{kind}Config")(
            text_config=dict(VISION, vocab_size=100, max_position_embeddings=16),
            vision_config=dict(VISION, image_size=32, patch_size=8),
        )
        return getattr(t, f"{kind}Model")(config)

    def batch(seed: int, size: int) -> Batch:
        g = _generator(seed)
        ids = torch.randint(0, 100, (size, 8), generator=g)
        return {
            "input_ids": ids,
            "pixel_values": torch.randn(size, 3, 32, 32, generator=g),
            "return_loss": True,
        }

    return model, batch


def clip() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _two_towers("CLIP")


def siglip() -> tuple[Callable[[], Any], Callable[[int, int], Batch]]:
    return _two_towers("Siglip")


FAMILIES = {
    f.__name__: f()
    for f in (
        llava,
        llava_next,
        llava_onevision,
        qwen2_vl,
        qwen2_5_vl,
        qwen2_audio,
        qwen2_5_omni_thinker,
        idefics3,
        smolvlm,
        paligemma,
        blip2,
        clip,
        siglip,
    )
}

_LLAVA = [
    "model.model.vision_tower",
    "model.model.multi_modal_projector",
    "model.model.language_model",
    "model.lm_head",
]
_IDEFICS = ["model.model.vision_model", "model.model.connector", "model.model.text_model", "model.lm_head"]
_QWEN_VL = ["model.model.visual", "model.model.language_model", "model.lm_head"]
UNITS = {
    "llava": _LLAVA,
    "llava_next": _LLAVA,
    "llava_onevision": _LLAVA,
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "qwen2_audio": [
        "model.model.audio_tower",
        "model.model.multi_modal_projector",
        "model.model.language_model",
        "model.lm_head",
    ],
    "qwen2_5_omni_thinker": [
        "model.model.audio_tower",
        "model.model.visual",
        "model.model.language_model",
        "model.lm_head",
    ],
    "idefics3": _IDEFICS,
    "smolvlm": _IDEFICS,
    "paligemma": _LLAVA,
    "blip2": ["model.vision_model", "model.qformer", "model.language_projection", "model.language_model"],
    "clip": ["model.text_model", "model.vision_model", "model.visual_projection", "model.text_projection"],
    "siglip": ["model.text_model", "model.vision_model"],
}


class HFModule(L.LightningModule):
    """A LightningModule as a new user writes one: the model as ``self.model``, the loss it returns."""

    def __init__(self, family: str, seed: int = 0, lr: float = 1e-3, optimizer: str = "adamw") -> None:
        super().__init__()
        L.seed_everything(seed, verbose=False)
        self.model = FAMILIES[family][0]()
        self.lr, self.optimizer = lr, optimizer

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self.model(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":  # updates proportional to the gradients: float rounding stays small
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def loader(family: str, batches: int = 6, size: int = 2) -> DataLoader:
    """``batches`` ready batches of ``size`` samples (already collated: packed tensors stay packed)."""
    make = FAMILIES[family][1]
    return DataLoader([make(seed, size) for seed in range(batches)], batch_size=None)
