"""Train a LLaVA-style Hugging Face model under ``strategy="mosaic"``, naming its units by dotted path.

A LightningModule that holds a whole ``LlavaForConditionalGeneration`` as ``self.model`` has one
child; its units (vision tower, projector, language model) sit deeper, so they are named
explicitly, exactly as ``state_dict`` keys spell them.

    pip install ".[zoo]"
    python examples/llava_dotted_modules.py --steps 5

The model is built from a small random-initialised config (no download) and trains on synthetic
images and tokens, on the CPU by default.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

import lightning_mosaic  # noqa: F401  (registers strategy="mosaic")
from lightning_mosaic import MosaicStrategy

IMAGE_TOKEN = 127
IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches; LLaVA drops the CLS token
UNITS = ["model.model.vision_tower", "model.model.multi_modal_projector", "model.model.language_model"]


class LlavaModule(L.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.model = LlavaForConditionalGeneration(
            LlavaConfig(
                vision_config=CLIPVisionConfig(
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    image_size=32,
                    patch_size=8,
                ),
                text_config=Qwen2Config(
                    hidden_size=48,
                    intermediate_size=96,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    vocab_size=128,
                ),
                image_token_index=IMAGE_TOKEN,
            )
        )
        self.model.model.vision_tower.requires_grad_(False)  # the usual LLaVA recipe: frozen vision tower

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels = batch["input_ids"].masked_fill(batch["input_ids"] == IMAGE_TOKEN, -100)
        loss = self.model(**batch, labels=labels).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=self.lr)


class ImageText(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        text = torch.randint(0, IMAGE_TOKEN, (12,), generator=g)
        return {
            "pixel_values": torch.randn(3, 32, 32, generator=g),
            "input_ids": torch.cat([torch.full((IMAGE_TOKENS,), IMAGE_TOKEN), text]),
        }


def main(argv: list[str] | None = None) -> MosaicStrategy:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args(argv)

    L.seed_everything(0)
    strategy = MosaicStrategy(modules=UNITS)
    trainer = L.Trainer(
        strategy=strategy,
        accelerator=args.accelerator,
        devices=args.devices,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(LlavaModule(), DataLoader(ImageText(), batch_size=4))
    if trainer.is_global_zero:
        print(strategy.graph.describe())
        print(strategy.plan.describe())
    return strategy


if __name__ == "__main__":
    main()
