"""Engine overhead: step time of the demo model under plain Lightning vs mosaic's temporal plan.

Both run the same model, data and plan (every unit alone, one after another) in one process, in
interleaved rounds (the order alternates each round), so drift of the machine hits both alike; what
differs is the engine's hooks. ``--plan concurrent`` measures units on their own streams instead.
Each step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward,
optimizer step), after warmup steps that include mosaic's one traced step. Prints the median step
times and their ratio, and writes JSON.

    python benchmarks/overhead.py                      # CPU, demo size "small"
    python benchmarks/overhead.py --accelerator gpu --size base --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import lightning as L
import torch

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.demo import DemoDataModule, DemoMultimodalModel

sys.path.insert(0, str(Path(__file__).parent))
from _timing import StepTimer, environment, quiet_trainer, training_precision


def run(variant: str, args: argparse.Namespace) -> list[float]:
    L.seed_everything(0, verbose=False)
    model = DemoMultimodalModel(args.size)
    steps = args.warmup + args.steps
    data = DemoDataModule(args.size, batch_size=args.batch_size, num_samples=steps * args.batch_size)
    timer = StepTimer()
    strategy = MosaicStrategy(plan=args.plan) if variant == "mosaic" else "auto"
    trainer = quiet_trainer(strategy, args.accelerator, args.precision, steps, callbacks=[timer])
    trainer.fit(model, data)
    return timer.times[args.warmup :]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", default="small", help="demo model size: tiny, small, medium or base (default: small)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per round (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--accelerator", default="cpu", help="cpu (default) or gpu")
    parser.add_argument(
        "--precision",
        default=None,
        help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)",
    )
    parser.add_argument(
        "--plan",
        choices=("temporal", "concurrent"),
        default="temporal",
        help="mosaic's plan: temporal (default; the engine's own cost) or concurrent (units on streams)",
    )
    parser.add_argument("--out", type=Path, help="JSON file (default: print only)")
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.batch_size) < 1 or args.warmup < 1:
        parser.error(
            "--steps, --rounds, --batch-size and --warmup must be >= 1 (warmup covers the traced step)"
        )

    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    args.precision = training_precision(args.accelerator, args.precision)
    times: dict[str, list[float]] = {"plain": [], "mosaic": []}
    rounds = []
    for r in range(args.rounds):
        order = ("plain", "mosaic") if r % 2 == 0 else ("mosaic", "plain")
        medians = {}
        for variant in order:
            measured = run(variant, args)
            times[variant] += measured
            medians[variant] = statistics.median(measured)
        medians["ratio"] = medians["mosaic"] / medians["plain"]
        rounds.append(medians)
        print(
            f"round {r + 1}/{args.rounds}: plain {medians['plain'] * 1e3:.2f} ms/step, "
            f"mosaic {medians['mosaic'] * 1e3:.2f} ms/step",
            file=sys.stderr,
        )

    plain, mosaic = statistics.median(times["plain"]), statistics.median(times["mosaic"])
    result = {
        "benchmark": "overhead",
        **environment(device),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "plain_step_s": plain,
        "mosaic_step_s": mosaic,
        "ratio_mosaic_over_plain": mosaic / plain,
        "overhead_percent": (mosaic / plain - 1) * 100,
        "round_ratio_min": min(r["ratio"] for r in rounds),
        "round_ratio_max": max(r["ratio"] for r in rounds),
        "rounds": rounds,
    }
    print(
        f"{result['device']}: plain {plain * 1e3:.2f} ms/step, mosaic {mosaic * 1e3:.2f} ms/step, "
        f"ratio {result['ratio_mosaic_over_plain']:.3f} ({result['overhead_percent']:+.1f}%; "
        f"per-round ratios {result['round_ratio_min']:.3f}..{result['round_ratio_max']:.3f})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
