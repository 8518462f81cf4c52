"""``lightning-mosaic demo``: train the demo model under ``strategy="mosaic"``, print its graph and plan.

The arguments are parsed before torch or Lightning load, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict

from lightning_mosaic.demo.sizes import SIZES, size_of
from lightning_mosaic.engine.resolve import BACKENDS


def _parse_quotas(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, int] | None:
    quotas = {}
    for item in items:
        name, _, sms = item.partition("=")
        if not name or not sms.isdigit():
            parser.error(f"--quota takes MODULE=SMS with a whole number of SMs, got {item!r}")
        quotas[name] = int(sms)
    return quotas or None


def main(argv: Sequence[str] | None = None) -> int:
    """Train the demo model under ``strategy="mosaic"`` and print the module graph and the plan."""
    parser = argparse.ArgumentParser(prog="lightning-mosaic demo", description=main.__doc__)
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="small", help="model and data size (default: small)"
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default: 8)")
    parser.add_argument("--accelerator", default="cpu", help="cpu (default), gpu or auto")
    parser.add_argument("--devices", default="1", help="number of devices (default: 1)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision (default: 32-true)")
    parser.add_argument("--freeze-vision", action="store_true", help="freeze the vision encoder")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="where units run (default: auto)")
    parser.add_argument(
        "--plan",
        default="auto",
        help="auto (profile during warmup, then plan; default), temporal, concurrent, or a plan JSON file",
    )
    parser.add_argument(
        "--micro-batches",
        default="auto",
        help="micro-batches per step: auto (the plan's; default) or a number",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="plain steps before profiling (default: 3)"
    )
    parser.add_argument(
        "--out",
        default="mosaic_demo",
        help="folder for the profile, plan and timeline (default: mosaic_demo)",
    )
    parser.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="MODULE=SMS",
        help="SM quota of a module on a GPU, e.g. --quota vision=32 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    micro_batches = int(args.micro_batches) if args.micro_batches.isdigit() else args.micro_batches

    import lightning as L  # after the arguments: `--help` loads no torch

    from lightning_mosaic.demo.model import DemoDataModule, DemoMultimodalModel
    from lightning_mosaic.lightning import MosaicStrategy

    L.seed_everything(args.seed, verbose=False)
    model = DemoMultimodalModel(args.size, freeze_vision=args.freeze_vision)
    data = DemoDataModule(args.size, batch_size=args.batch_size, num_samples=args.steps * args.batch_size)
    quotas = _parse_quotas(parser, args.quota)
    try:
        strategy = MosaicStrategy(
            plan="concurrent" if quotas and args.plan == "auto" else args.plan,
            micro_batches=micro_batches,
            backend=args.backend,
            quotas=quotas,
            warmup_steps=args.warmup_steps,
        )
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    trainer = L.Trainer(
        strategy=strategy,
        accelerator=args.accelerator,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        precision=args.precision,
        max_steps=args.steps,
        default_root_dir=args.out,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    elapsed = time.perf_counter() - start
    if not trainer.is_global_zero:
        return 0
    loss = trainer.callback_metrics.get("train_loss")
    print(f"\nTrained the demo model ({args.size}: {asdict(size_of(args.size))})")
    print(f"{trainer.global_step} steps in {elapsed:.1f} s, final train_loss {float(loss):.4f}")
    assert strategy.graph is not None and strategy.plan is not None
    print(strategy.graph.describe())
    print(strategy.plan.describe())
    print(strategy.engine.backend.describe())
    print(f"routed calls per module: {dict(strategy.engine.calls)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
