"""The demo model and its data: two encoders, user code joining them, a projector and a causal LM.

Written the way users write theirs: the LightningModule calls its submodules directly and
concatenates the encoders' outputs itself.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_mosaic.demo.sizes import DemoSize, size_of


def _blocks(width: int, layers: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        dim_feedforward=4 * width,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class VisionEncoder(nn.Module):
    """A ViT: patch embedding, transformer blocks; returns one token per patch."""

    def __init__(self, s: DemoSize) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, s.width, kernel_size=s.patch, stride=s.patch)
        self.pos = nn.Parameter(torch.randn(1, (s.image // s.patch) ** 2, s.width) * 0.02)
        self.blocks = _blocks(s.width, s.layers, s.heads)
        self.norm = nn.LayerNorm(s.width)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x))


class AudioEncoder(nn.Module):
    """A Whisper-style encoder: strided convolution over log-mel frames, transformer blocks."""

    def __init__(self, s: DemoSize) -> None:
        super().__init__()
        self.conv = nn.Conv1d(s.mels, s.width, kernel_size=3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.randn(1, (s.frames + 1) // 2, s.width) * 0.02)
        self.blocks = _blocks(s.width, s.layers, s.heads)
        self.norm = nn.LayerNorm(s.width)

    def forward(self, mels: Tensor) -> Tensor:
        x = F.gelu(self.conv(mels)).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x))


class Projector(nn.Module):
    """Maps encoder tokens into the language model's embedding space (LLaVA's MLP projector)."""

    def __init__(self, s: DemoSize) -> None:
        super().__init__()
        self.fc1 = nn.Linear(s.width, s.llm_width)
        self.fc2 = nn.Linear(s.llm_width, s.llm_width)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(tokens)))


class CausalLM(nn.Module):
    """A decoder-only language model that reads a prefix of embeddings before its text tokens."""

    def __init__(self, s: DemoSize, prefix_tokens: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.llm_width)
        self.pos = nn.Parameter(torch.randn(1, prefix_tokens + s.text, s.llm_width) * 0.02)
        self.blocks = _blocks(s.llm_width, s.llm_layers, s.llm_heads or s.heads)
        self.norm = nn.LayerNorm(s.llm_width)
        self.head = nn.Linear(s.llm_width, s.vocab, bias=False)

    def forward(self, prefix: Tensor, input_ids: Tensor) -> Tensor:
        x = torch.cat([prefix, self.embed(input_ids)], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        x = self.norm(self.blocks(x, mask=mask, is_causal=True))
        return self.head(x[:, prefix.shape[1] :])


class DemoMultimodalModel(L.LightningModule):
    """Vision and audio encoders, a projector and a causal LM, trained on next-token prediction."""

    def __init__(self, size: str = "small", lr: float = 1e-3, freeze_vision: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        s = size_of(size)
        prefix = (s.image // s.patch) ** 2 + (s.frames + 1) // 2
        self.vision = VisionEncoder(s)
        self.audio = AudioEncoder(s)
        self.projector = Projector(s)
        self.llm = CausalLM(s, prefix)
        if freeze_vision:
            self.vision.requires_grad_(False)

    def forward(self, pixels: Tensor, mels: Tensor, input_ids: Tensor) -> Tensor:
        tokens = torch.cat([self.vision(pixels), self.audio(mels)], dim=1)
        return self.llm(self.projector(tokens), input_ids)

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self(batch["pixels"], batch["mels"], batch["input_ids"])
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("test_loss", loss)
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch["pixels"], batch["mels"], batch["input_ids"]).argmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=self.hparams.lr)


class SyntheticMultimodal(Dataset):
    """Deterministic random images, log-mel frames and token ids (sample ``i`` is always the same)."""

    def __init__(self, size: str | DemoSize = "small", num_samples: int = 256, seed: int = 0) -> None:
        self.s = size_of(size)
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        s = self.s
        pixels = torch.randn(3, s.image, s.image, generator=g)
        # Text that depends on the image, so there is something to learn.
        first = int(pixels.mean().abs().mul(1e4).item()) % s.vocab
        ids = (first + torch.arange(s.text) * (1 + index % 3)) % s.vocab
        return {"pixels": pixels, "mels": torch.randn(s.mels, s.frames, generator=g), "input_ids": ids}


class DemoDataModule(L.LightningDataModule):
    """Train / val / test / predict loaders over :class:`SyntheticMultimodal`."""

    def __init__(
        self, size: str = "small", batch_size: int = 8, num_samples: int = 256, seed: int = 0
    ) -> None:
        super().__init__()
        self.size, self.batch_size, self.num_samples, self.seed = size, batch_size, num_samples, seed

    def _loader(self, offset: int) -> DataLoader:
        data = SyntheticMultimodal(self.size, self.num_samples, self.seed + offset)
        return DataLoader(data, batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(3)
