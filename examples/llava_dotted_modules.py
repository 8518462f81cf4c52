"""Train a LLaVA-style Hugging Face model under ``strategy="mosaic"``, naming its units by dotted path.

A LightningModule that holds a whole ``LlavaForConditionalGeneration`` as ``self.model`` gets its
units (vision tower, projector, language model, head) found automatically (``examples/hf_vlm.py``).
Here they are chosen by hand instead, named exactly as ``state_dict`` keys spell them: three units,
the head left to run with the code between them.

    pip install ".[zoo]"
    python examples/llava_dotted_modules.py --tiny         # CPU, seconds
    python examples/llava_dotted_modules.py                # one GPU: edge-sized towers, 200 steps

The model is built from a random-initialised config (no download) and trains on synthetic images
and tokens. On a GPU the strategy profiles the three units, plans and trains under the plan; with
``--tiny`` (or without a GPU) the same loop runs on the CPU as a rehearsal (``backend="cpu"``).
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
UNITS = ["model.model.vision_tower", "model.model.multi_modal_projector", "model.model.language_model"]
# (vision width, layers, image, patch), (text width, layers, heads, kv heads)
SIZES = {"tiny": ((32, 2, 32, 8), (48, 2, 4, 2)), "edge": ((384, 6, 224, 14), (896, 8, 14, 2))}


def image_tokens(size: str) -> int:
    _, _, image, patch = SIZES[size][0]
    return (image // patch) ** 2  # LLaVA drops the CLS token


class LlavaModule(L.LightningModule):
    def __init__(self, size: str = "tiny", lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        (width, layers, image, patch), (text_width, text_layers, heads, kv_heads) = SIZES[size]
        self.model = LlavaForConditionalGeneration(
            LlavaConfig(
                vision_config=CLIPVisionConfig(
                    hidden_size=width,
                    intermediate_size=4 * width,
                    num_hidden_layers=layers,
                    num_attention_heads=max(1, width // 64) if width >= 64 else 4,
                    image_size=image,
                    patch_size=patch,
                ),
                text_config=Qwen2Config(
                    hidden_size=text_width,
                    intermediate_size=2 * text_width,
                    num_hidden_layers=text_layers,
                    num_attention_heads=heads,
                    num_key_value_heads=kv_heads,
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
    def __init__(self, size: str, samples: int) -> None:
        self.image, self.tokens, self.samples = SIZES[size][0][2], image_tokens(size), samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        text = torch.randint(0, IMAGE_TOKEN, (12,), generator=g)
        return {
            "pixel_values": torch.randn(3, self.image, self.image, generator=g),
            "input_ids": torch.cat([torch.full((self.tokens,), IMAGE_TOKEN), text]),
        }


def main(argv: list[str] | None = None) -> MosaicStrategy:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny towers on the CPU, a few steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 200; --tiny: 6)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="samples per step (default: 16; --tiny: 4)"
    )
    parser.add_argument("--root", default="llava_runs", help="logs, profile, plan (default: llava_runs)")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.tiny
    size = "edge" if gpu else "tiny"
    steps = args.steps or (200 if gpu else 6)
    batch_size = args.batch_size or (16 if gpu else 4)

    L.seed_everything(0)
    strategy = MosaicStrategy(modules=UNITS, backend="auto" if gpu else "cpu", warmup_steps=3 if gpu else 2)
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        max_steps=steps,
        default_root_dir=args.root,
        enable_checkpointing=False,
    )
    trainer.fit(LlavaModule(size), DataLoader(ImageText(size, steps * batch_size), batch_size=batch_size))
    if trainer.is_global_zero:
        print(f"plan, profile and timeline: {trainer.log_dir}")
    return strategy


if __name__ == "__main__":
    main()
