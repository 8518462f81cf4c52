"""The zoo's LightningModules: the multimodal architectures people train, at any size, random weights.

- :class:`VisionLanguageModel` (``"vlm"``, LLaVA-style): a CLIP ViT tower (frozen by default), an MLP
  projector and a Qwen2-shaped backbone trained on the text after the image tokens.
- :class:`AudioVisionLanguageModel` (``"avlm"``): the same plus a Whisper encoder and its projector;
  image and audio tokens both come before the text.
- :class:`BindModel` (``"bind"``, ImageBind-style): vision, audio and text encoders with linear heads
  into one embedding space and a symmetric contrastive loss (vision-text and audio-text), no
  backbone. The loss couples the samples of a batch, so it declares
  ``mosaic_max_micro_batches = 1``: splitting its batch would change the numbers.

Each takes the batch of :class:`~lightning_mosaic.zoo.data.ZooDataModule` for its kind.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_mosaic.zoo.towers as towers
from lightning_mosaic.zoo.sizes import zoo_size


class ZooModule(L.LightningModule):
    """What the zoo's models share: the size, the optimizer over trainable parameters, logging."""

    kind = ""

    def __init__(self, size: str = "tiny", lr: float = 1e-4) -> None:
        super().__init__()
        self.size, self.lr = size, lr
        self.shapes = zoo_size(size)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self(**batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=self.lr)


class VisionLanguageModel(ZooModule):
    """CLIP vision tower -> MLP projector -> causal LM over [image tokens, text]."""

    kind = "vlm"

    def __init__(self, size: str = "tiny", freeze_vision: bool = True, lr: float = 1e-4) -> None:
        super().__init__(size, lr)
        s = self.shapes
        self.vision = towers.vision_tower(s)
        self.projector = towers.mlp_projector(s.vision.hidden, s.llm.hidden)
        self.llm = towers.language_model(s, towers.vision_tokens(s))
        if freeze_vision:
            self.vision.requires_grad_(False)

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, **_: Any
    ) -> Tensor:
        image = self.projector(self.vision(pixel_values=pixel_values).last_hidden_state)
        return towers.prefix_lm_loss(self.llm, [image], input_ids, attention_mask, labels)


class AudioVisionLanguageModel(ZooModule):
    """CLIP vision tower and Whisper encoder -> projectors -> causal LM over [image, audio, text]."""

    kind = "avlm"

    def __init__(self, size: str = "tiny", freeze_vision: bool = True, lr: float = 1e-4) -> None:
        super().__init__(size, lr)
        s = self.shapes
        self.vision = towers.vision_tower(s)
        self.audio = towers.audio_tower(s)
        self.vision_proj = towers.mlp_projector(s.vision.hidden, s.llm.hidden)
        self.audio_proj = towers.mlp_projector(s.audio.hidden, s.llm.hidden)
        self.llm = towers.language_model(s, towers.vision_tokens(s) + s.audio_positions)
        if freeze_vision:
            self.vision.requires_grad_(False)

    def forward(
        self,
        pixel_values: Tensor,
        input_features: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        **_: Any,
    ) -> Tensor:
        image = self.vision_proj(self.vision(pixel_values=pixel_values).last_hidden_state)
        audio = self.audio_proj(self.audio(input_features).last_hidden_state)
        return towers.prefix_lm_loss(self.llm, [image, audio], input_ids, attention_mask, labels)


class BindModel(ZooModule):
    """Vision, audio and text encoders with heads into one space; symmetric InfoNCE to the text."""

    kind = "bind"
    mosaic_max_micro_batches = 1  # in-batch negatives: a micro-batch would see fewer of them

    def __init__(self, size: str = "tiny", temperature: float = 0.07, lr: float = 1e-4) -> None:
        super().__init__(size, lr)
        s = self.shapes
        self.vision = towers.vision_tower(s)
        self.audio = towers.audio_tower(s)
        self.text = towers.text_tower(s)
        self.vision_head = nn.Linear(s.vision.hidden, s.embed, bias=False)
        self.audio_head = nn.Linear(s.audio.hidden, s.embed, bias=False)
        self.text_head = nn.Linear(s.text.hidden, s.embed, bias=False)
        self.temperature = temperature

    def forward(
        self,
        pixel_values: Tensor,
        input_features: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        **_: Any,
    ) -> Tensor:
        image = self.vision_head(self.vision(pixel_values=pixel_values).pooler_output)
        audio = self.audio_head(self.audio(input_features).last_hidden_state.mean(dim=1))
        text = self.text_head(self.text(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
        image, audio, text = (F.normalize(x, dim=-1) for x in (image, audio, text))
        return (_info_nce(image, text, self.temperature) + _info_nce(audio, text, self.temperature)) / 2


def _info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
