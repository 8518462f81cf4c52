"""Train a LLaVA-style vision-language model with ``strategy="mosaic"``: profile, plan, train.

    pip install ".[zoo,plot]"
    python examples/train_vlm.py --tiny                  # CPU, seconds
    python examples/train_vlm.py --size edge --batch-size 16 --steps 200   # one GPU

The model is the zoo's ``vlm`` (CLIP ViT tower, frozen, + MLP projector + Qwen2-shaped backbone,
random weights) on synthetic images and captions. On a GPU the strategy runs plain warmup steps,
profiles each module, plans SM quotas, phases and micro-batches, and trains under the plan; the
plan, the profile and a timeline picture land in the logger's directory. On a CPU (``--tiny``) the
same loop runs with thread quotas (``backend="cpu"``), as a rehearsal.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.zoo import SIZES, build, data


def main(argv: list[str] | None = None) -> MosaicStrategy:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU, a few steps")
    parser.add_argument("--size", choices=SIZES, default="edge", help="model size (default: edge)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--train-vision", action="store_true", help="train the vision tower too")
    parser.add_argument("--root", default="vlm_runs", help="logs, profile, plan (default: vlm_runs)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.batch_size, args.steps = "tiny", 4, 6
    gpu = torch.cuda.is_available() and not args.tiny

    L.seed_everything(0)
    model = build("vlm", args.size, freeze_vision=not args.train_vision)
    strategy = MosaicStrategy(backend="auto" if gpu else "cpu", warmup_steps=3 if gpu else 2)
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        max_steps=args.steps,
        default_root_dir=args.root,
        enable_checkpointing=not args.tiny,
        limit_val_batches=2,
        val_check_interval=min(50, args.steps),
    )
    trainer.fit(
        model, data("vlm", args.size, batch_size=args.batch_size, num_samples=args.steps * args.batch_size)
    )
    print(strategy.plan.describe())
    print(f"plan, profile and timeline: {trainer.log_dir}")
    return strategy


if __name__ == "__main__":
    main()
