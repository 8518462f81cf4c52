"""Hugging Face building blocks of the zoo, built from a size's shapes with random weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_mosaic.zoo.sizes import ZooSize


def _transformers():
    try:
        import transformers
    except ImportError as err:  # an optional dependency
        raise ImportError('the model zoo needs transformers: pip install "lightning-mosaic[zoo]"') from err
    return transformers


def vision_tower(s: ZooSize) -> nn.Module:
    """A CLIP ViT vision tower; its ``last_hidden_state`` has ``(image / patch)^2 + 1`` tokens."""
    t = _transformers()
    v = s.vision
    config = t.CLIPVisionConfig(
        hidden_size=v.hidden,
        intermediate_size=v.mlp,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        image_size=s.image,
        patch_size=s.patch,
    )
    return t.CLIPVisionModel(config)


def audio_tower(s: ZooSize) -> nn.Module:
    """A Whisper encoder over ``mels x frames`` log-mel features; ``audio_positions`` tokens out."""
    t = _transformers()
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    a = s.audio
    config = t.WhisperConfig(
        d_model=a.hidden,
        encoder_layers=a.layers,
        encoder_attention_heads=a.heads,
        encoder_ffn_dim=a.mlp,
        num_mel_bins=s.mels,
        max_source_positions=s.audio_positions,
    )
    return WhisperEncoder(config)


def language_model(s: ZooSize, prefix: int) -> nn.Module:
    """A Qwen2-shaped causal LM taking ``inputs_embeds``; room for ``prefix`` tokens before the text."""
    t = _transformers()
    m = s.llm
    config = t.Qwen2Config(
        hidden_size=m.hidden,
        intermediate_size=m.mlp,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=s.llm_kv_heads,
        vocab_size=s.vocab,
        max_position_embeddings=prefix + s.text_tokens,
        tie_word_embeddings=False,
    )
    return t.Qwen2ForCausalLM(config)


def text_tower(s: ZooSize) -> nn.Module:
    """A CLIP text encoder (for "bind"); ``pooler_output`` is one vector per sample."""
    t = _transformers()
    x = s.text
    config = t.CLIPTextConfig(
        hidden_size=x.hidden,
        intermediate_size=x.mlp,
        num_hidden_layers=x.layers,
        num_attention_heads=x.heads,
        vocab_size=s.vocab,
        max_position_embeddings=s.text_tokens,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return t.CLIPTextModel(config)


def mlp_projector(width: int, out: int) -> nn.Module:
    """LLaVA's two-layer projector from an encoder's width to the backbone's."""
    return nn.Sequential(nn.Linear(width, out), nn.GELU(), nn.Linear(out, out))


def prefix_lm_loss(
    llm: nn.Module, prefix: list[Tensor], input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """Next-token loss of the text after the projected ``prefix`` embeddings (prefix not labelled)."""
    text = llm.get_input_embeddings()(input_ids)
    embeds = torch.cat([*prefix, text], dim=1)
    width = sum(p.shape[1] for p in prefix)
    batch = input_ids.shape[0]
    ones = torch.ones(batch, width, dtype=attention_mask.dtype, device=attention_mask.device)
    ignore = torch.full((batch, width), -100, dtype=labels.dtype, device=labels.device)
    return llm(
        inputs_embeds=embeds,
        attention_mask=torch.cat([ones, attention_mask], dim=1),
        labels=torch.cat([ignore, labels], dim=1),
    ).loss


def vision_tokens(s: ZooSize) -> int:
    return (s.image // s.patch) ** 2 + 1
