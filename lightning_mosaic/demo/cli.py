"""``lightning-mosaic demo``: train the demo model under ``strategy="mosaic"``, print its graph and plan.

On a CPU the default backend is ``cpu``: the whole loop runs — capture, profile under thread quotas,
fit, plan, guard — and the profile, the plan and its timeline are written to ``--out``; the units
still run one after another (a rehearsal of what a GPU does). On a GPU it is ``auto``. The
arguments are parsed before torch or Lightning load, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

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
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="where units run (default: cpu on a CPU, a rehearsal that profiles and plans under thread"
        " quotas; auto on a GPU)",
    )
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
        "--profile-seconds",
        type=float,
        default=20.0,
        help="time budget of profiling (default: 20)",
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
    parser.add_argument(
        "--graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="CUDA graphs on a GPU: auto (the launch-bound units; default), on (every unit) or off",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    micro_batches = int(args.micro_batches) if args.micro_batches.isdigit() else args.micro_batches

    import lightning as L  # after the arguments: `--help` loads no torch
    import torch

    from lightning_mosaic.demo.model import DemoDataModule, DemoMultimodalModel
    from lightning_mosaic.lightning import MosaicStrategy

    L.seed_everything(args.seed, verbose=False)
    model = DemoMultimodalModel(args.size, freeze_vision=args.freeze_vision)
    data = DemoDataModule(args.size, batch_size=args.batch_size, num_samples=args.steps * args.batch_size)
    quotas = _parse_quotas(parser, args.quota)
    gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        parser.error(
            f"--accelerator {args.accelerator}: this torch ({torch.__version__}) sees no CUDA GPU;"
            " use --accelerator cpu"
        )
    backend = args.backend or ("auto" if gpu else "cpu")
    try:
        strategy = MosaicStrategy(
            plan="concurrent" if quotas and args.plan == "auto" else args.plan,
            micro_batches=micro_batches,
            backend=backend,
            quotas=quotas,
            warmup_steps=args.warmup_steps,
            profile_seconds=args.profile_seconds,
            graphs={"auto": "auto", "on": True, "off": False}[args.graphs],
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
    shown = _Shown()  # what the session logs to the console: the graph, each plan it applies
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=data)
    finally:
        shown.close()
    elapsed = time.perf_counter() - start
    if not trainer.is_global_zero:
        return 0
    loss = trainer.callback_metrics.get("train_loss")
    print(f"\nTrained the demo model ({args.size}: {asdict(size_of(args.size))}) with backend={backend!r}")
    print(f"{trainer.global_step} steps in {elapsed:.1f} s, final train_loss {float(loss):.4f}")
    assert strategy.graph is not None and strategy.plan is not None
    plan = strategy.plan
    if not any(m.startswith(strategy.graph.describe()) for m in shown.messages):
        print(strategy.graph.describe())
    if any(m.startswith(plan.describe()) for m in shown.messages):
        print(
            f"the plan in use is the last one logged above: {plan.method}, {len(plan.phases)} phases,"
            f" {plan.micro_batches} micro-batch(es) per step"
        )
    else:
        print(plan.describe())
    print(f"routed calls per module: {dict(strategy.engine.calls)}")
    written = sorted(p.name for p in Path(args.out).glob("mosaic_*"))
    print(f"files in {args.out}/: {', '.join(written) if written else 'none'}")
    if plan.measured_step_s is not None and plan.measured_temporal_s is not None:
        print(
            f"measured: {plan.measured_step_s * 1e3:.1f} ms per step under the plan,"
            f" {plan.measured_temporal_s * 1e3:.1f} ms temporal"
        )
    return 0


class _Shown(logging.Handler):
    """Collects the package's INFO messages while they reach the console, so nothing is printed twice."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        from lightning_mosaic._logging import get_logger

        self.messages: list[str] = []
        self.log = get_logger("lightning_mosaic")
        console = self.log.handlers or logging.getLogger().handlers
        if self.log.isEnabledFor(logging.INFO) and console:
            self.log.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def close(self) -> None:
        self.log.removeHandler(self)
        super().close()
