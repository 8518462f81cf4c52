"""Train the zoo's vision-language model in a plain Accelerate loop, under a mosaic plan.

    pip install ".[zoo,accelerate]"
    python examples/accelerate_vlm.py --tiny           # CPU
    accelerate launch examples/accelerate_vlm.py       # one or more GPUs

``lightning_mosaic.accelerate.prepare`` replaces ``accelerator.prepare``: the loop below is an
ordinary Accelerate loop. The first steps run plain, then every module is profiled, the main
process plans and every process trains under the plan (one micro-batch: your loop owns the loss).
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from lightning_mosaic.accelerate import prepare, session
from lightning_mosaic.zoo import build, data


def main(argv: list[str] | None = None) -> object:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU, a few steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--root", default="accelerate_runs")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "edge"
    if args.tiny:
        args.batch_size, args.steps = 4, 6

    set_seed(0)
    accelerator = Accelerator(cpu=args.tiny, project_dir=args.root)
    model = build("vlm", size)
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-4)
    loader = data(
        "vlm", size, batch_size=args.batch_size, num_samples=args.steps * args.batch_size
    ).train_dataloader()
    model, optimizer, loader = prepare(
        accelerator, model, optimizer, loader, backend="cpu" if args.tiny else "auto", warmup_steps=2
    )
    model.train()
    for step, batch in enumerate(loader):
        loss = model(**batch)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0:
            accelerator.print(f"step {step}: loss {loss.item():.4f}")
    mosaic = session(accelerator)
    accelerator.print(mosaic.plan.describe())
    return mosaic


if __name__ == "__main__":
    main()
