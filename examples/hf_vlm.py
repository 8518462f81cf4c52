"""Fine-tune a Hugging Face Qwen2.5-VL with nothing but ``strategy="mosaic"``.

The LightningModule holds a whole ``Qwen2_5_VLForConditionalGeneration`` as ``self.model`` and returns
its loss, as one writes it without mosaic. Mosaic finds the units itself from the first training step:
the vision tower (``model.model.visual``), the language model and the head (the log says why each one
is a unit). The images are packed as Qwen-VL packs them, one row per patch beside ``image_grid_thw``;
micro-batches and the profiler's replays cut them by those grid rows.

    pip install ".[zoo]" "transformers>=5"   # the configs below are transformers 5's
    python examples/hf_vlm.py                 # CPU: tiny towers, a few steps, the units and their graph
    python examples/hf_vlm.py --size small    # one GPU: larger towers, 100 steps, profiled and planned

The model is built from a random-initialised config (no download) and trains on synthetic images and
tokens; logs, profile and plan go under ``--root`` (default ``hf_vlm_runs``).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import lightning_mosaic  # noqa: F401  (registers strategy="mosaic")

IMAGE, VIDEO = 150, 153
PATCH, MERGE, TEMPORAL = 14, 2, 2
# vision (width, depth, heads), text (width, layers, heads, kv heads), image side in patches
SIZES = {"tiny": ((32, 2, 4), (48, 2, 4, 2), 4), "small": ((256, 8, 4), (512, 8, 8, 2), 16)}


class QwenVLModule(L.LightningModule):
    def __init__(self, size: str = "tiny", lr: float = 1e-4) -> None:
        super().__init__()
        self.lr = lr
        (width, depth, heads), (text_width, layers, text_heads, kv_heads), _ = SIZES[size]
        config = Qwen2_5_VLConfig(
            vision_config=dict(
                depth=depth,
                hidden_size=width,
                intermediate_size=2 * width,
                num_heads=heads,
                out_hidden_size=text_width,
                patch_size=PATCH,
                spatial_merge_size=MERGE,
                temporal_patch_size=TEMPORAL,
                fullatt_block_indexes=[depth - 1],
                window_size=2 * PATCH * MERGE,
            ),
            text_config=dict(
                hidden_size=text_width,
                intermediate_size=2 * text_width,
                num_hidden_layers=layers,
                num_attention_heads=text_heads,
                num_key_value_heads=kv_heads,
                vocab_size=160,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                rope_parameters={"rope_type": "default", "mrope_section": _mrope(text_width // text_heads)},
            ),
            image_token_id=IMAGE,
            video_token_id=VIDEO,
            vision_start_token_id=151,
            vision_end_token_id=152,
        )
        self.model = Qwen2_5_VLForConditionalGeneration(config)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def _mrope(head_dim: int) -> list[int]:
    """M-RoPE's split of a head's rotary half into time, height and width sections (1/4, 3/8, 3/8)."""
    half = head_dim // 2
    time, height = half // 4, (half - half // 4) // 2
    return [time, height, half - time - height]


class ImageText(Dataset):
    """One square image and a caption per sample, in the processor's layout: patches packed row-wise."""

    def __init__(self, size: str, samples: int) -> None:
        self.side, self.samples = SIZES[size][2], samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        tokens = self.side * self.side // (MERGE * MERGE)  # image tokens after the 2x2 merge
        ids = torch.cat([torch.full((tokens,), IMAGE), torch.randint(3, 100, (12,), generator=g)])
        return {
            "input_ids": ids,
            "labels": ids.masked_fill(ids == IMAGE, -100),
            "mm_token_type_ids": (ids == IMAGE).int(),
            "pixel_values": torch.randn(self.side * self.side, 3 * TEMPORAL * PATCH * PATCH, generator=g),
            "image_grid_thw": torch.tensor([[1, self.side, self.side]]),
        }


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Text stacked per sample; patches and grids concatenated, as Qwen-VL's processor packs them."""
    packed = ("pixel_values", "image_grid_thw")
    return {
        key: torch.cat([s[key] for s in samples]) if key in packed else torch.stack([s[key] for s in samples])
        for key in samples[0]
    }


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="tiny (CPU default) or small (GPU)"
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 6 tiny, 100 small)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step (default: 4)")
    parser.add_argument("--root", default="hf_vlm_runs", help="logs, profile, plan (default: hf_vlm_runs)")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    size = args.size or ("small" if gpu else "tiny")
    steps = args.steps or (100 if size == "small" else 6)

    L.seed_everything(0)
    trainer = L.Trainer(
        strategy="mosaic",
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        max_steps=steps,
        default_root_dir=args.root,
        enable_checkpointing=False,
    )
    data = DataLoader(
        ImageText(size, steps * args.batch_size), batch_size=args.batch_size, collate_fn=collate
    )
    trainer.fit(QwenVLModule(size), data)
    if trainer.is_global_zero:
        print(f"units: {list(trainer.strategy.units)}")
        print(trainer.strategy.graph.describe())
    return trainer


if __name__ == "__main__":
    main()
