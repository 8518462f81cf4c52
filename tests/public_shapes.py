"""LightningModules shaped like public multimodal training code, small enough for CPU tests.

Each reproduces what the public code does that a tidy model does not:

- :class:`ClipStyle`: manual optimization with a gradient cache (every encoder first runs under
  ``torch.no_grad`` over the whole batch, then again with grad per chunk), a contrastive loss, a
  sequence-first ``(L, N, D)`` text transformer with a fixed causal mask, BatchNorm in the image
  encoder, and the image and text towers inside one wrapper child (``self.model``).
- :class:`ViltStyle`: a VQA model that calls its vision transformer's patch embedding, blocks and
  norm itself (the transformer's ``forward`` never runs), and a head used only in validation.
- :class:`FlavaStyle`: batches that are image-only, text-only or image-text, so the first step
  calls only some of the units.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

WIDTH = 16
TOKENS = 6
VOCAB = 32


# ---------------------------------------------------------------- CLIP with a gradient cache


class TextTower(nn.Module):
    """Token embedding + a sequence-first transformer with a fixed causal mask, as in OpenAI's CLIP."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(WIDTH, 2, 2 * WIDTH, dropout=0.0)  # batch_first=False: (L, N, D)
        self.transformer = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.register_buffer("mask", torch.full((TOKENS, TOKENS), float("-inf")).triu(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.transformer(x, mask=self.mask)


class ClipModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(
            nn.Conv2d(3, WIDTH, 4, stride=4),
            nn.BatchNorm2d(WIDTH),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.token_embedding = nn.Embedding(VOCAB, WIDTH)
        self.text = TextTower()
        self.ln_final = nn.LayerNorm(WIDTH)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        x = self.token_embedding(tokens).permute(1, 0, 2)  # (L, N, D)
        x = self.text(x).permute(1, 0, 2)
        return F.normalize(self.ln_final(x[:, -1]), dim=-1)


class ClipStyle(L.LightningModule):
    """Manual optimization with a gradient cache over ``chunks`` chunks of each batch."""

    def __init__(self, chunks: int = 2) -> None:
        super().__init__()
        self.model = ClipModel()
        self.chunks = chunks
        self.automatic_optimization = False

    def _loss(self, images: Tensor, texts: Tensor) -> Tensor:
        logits = self.model.logit_scale.exp() * images @ texts.t()
        labels = torch.arange(len(logits))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        images, tokens = batch
        with torch.no_grad():
            all_images = self.model.encode_image(images)
            all_texts = self.model.encode_text(tokens)
        optimizer.zero_grad()
        for image_chunk, token_chunk, lo in zip(
            images.chunk(self.chunks),
            tokens.chunk(self.chunks),
            range(0, len(images), len(images) // self.chunks),
            strict=True,
        ):
            hi = lo + len(image_chunk)
            mixed_images = torch.cat([all_images[:lo], self.model.encode_image(image_chunk), all_images[hi:]])
            loss = self._loss(mixed_images, all_texts)
            self.manual_backward(loss)
            mixed_texts = torch.cat([all_texts[:lo], self.model.encode_text(token_chunk), all_texts[hi:]])
            loss = self._loss(all_images, mixed_texts)
            self.manual_backward(loss)
        optimizer.step()
        loss = self._loss(all_images, all_texts)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class PairData(Dataset):
    def __init__(self, num_samples: int = 32) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(index)
        return torch.randn(3, 16, 16, generator=g), torch.randint(0, VOCAB, (TOKENS,), generator=g)


# ---------------------------------------------------------------- ViLT: blocks called one by one


class VisionTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, WIDTH, 8, stride=8)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(WIDTH, 2, 2 * WIDTH, 0.0, batch_first=True) for _ in range(2)
        )
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, images: Tensor) -> Tensor:  # never called by ViltStyle
        raise AssertionError("ViltStyle calls the parts itself")


class ViltStyle(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.text_embeddings = nn.Embedding(VOCAB, WIDTH)
        self.transformer = VisionTransformer()
        self.vqa_classifier = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, 4))
        self.val_head = nn.Linear(WIDTH, 4)  # validation only

    def features(self, images: Tensor, tokens: Tensor) -> Tensor:
        patches = self.transformer.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.text_embeddings(tokens), patches], dim=1)
        for block in self.transformer.blocks:
            x = block(x)
        return self.transformer.norm(x)[:, 0]

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, tokens, answers = batch
        loss = F.cross_entropy(self.vqa_classifier(self.features(images, tokens)), answers)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        images, tokens, answers = batch
        self.log("val_loss", F.cross_entropy(self.val_head(self.features(images, tokens)), answers))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class VqaData(Dataset):
    def __init__(self, num_samples: int = 32) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(index)
        return (
            torch.randn(3, 16, 16, generator=g),
            torch.randint(0, VOCAB, (TOKENS,), generator=g),
            torch.randint(0, 4, (), generator=g),
        )


# ---------------------------------------------------------------- FLAVA: mixed-modality batches


class FlavaStyle(L.LightningModule):
    """Image-only batches train a masked-image head, text-only ones a masked-token head, pairs all."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, WIDTH), nn.GELU())
        self.text_encoder = nn.Sequential(nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, WIDTH))
        self.multimodal_encoder = nn.Sequential(
            nn.Linear(2 * WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH)
        )
        self.image_head = nn.Linear(WIDTH, 3 * 16 * 16)
        self.text_head = nn.Linear(WIDTH, VOCAB)
        self.itm_head = nn.Linear(WIDTH, 2)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = []
        image = text = None
        if "image" in batch:
            image = self.image_encoder(batch["image"])
            losses.append(F.mse_loss(self.image_head(image), batch["image"].flatten(1)))
        if "text" in batch:
            text = self.text_encoder(batch["text"]).mean(1)
            losses.append(F.cross_entropy(self.text_head(text), batch["text"][:, 0]))
        if image is not None and text is not None:
            fused = self.multimodal_encoder(torch.cat([image, text], dim=-1))
            losses.append(F.cross_entropy(self.itm_head(fused), batch["match"]))
        loss = torch.stack(losses).sum()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class MixedData(Dataset):
    """Samples cycle image-only, text-only, image-text; batch_size=1-per-kind loaders keep kinds apart."""

    KINDS = ("image", "text", "pair")

    def __init__(self, batch_size: int = 4, batches: int = 9) -> None:
        self.batch_size, self.batches = batch_size, batches

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(index)
        kind = self.KINDS[index % 3]
        out: dict[str, Tensor] = {}
        if kind in ("image", "pair"):
            out["image"] = torch.randn(self.batch_size, 3, 16, 16, generator=g)
        if kind in ("text", "pair"):
            out["text"] = torch.randint(0, VOCAB, (self.batch_size, TOKENS), generator=g)
        if kind == "pair":
            out["match"] = torch.randint(0, 2, (self.batch_size,), generator=g)
        return out


def mixed_loader(batches: int = 9) -> DataLoader:
    """One whole batch per item (``batch_size=None``): each batch holds one kind of sample."""
    return DataLoader(MixedData(batches=batches), batch_size=None)


def loader(dataset: Dataset, batch_size: int = 8, **kwargs: Any) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, **kwargs)
