"""Performance-model accuracy: profile the demo model, fit, print the held-out MAPE per module.

Trains the demo model for a few steps with the ``MosaicProfiler`` callback (warmup steps, then one
step's inputs are replayed per module over the (batch, quota) grid), fits a ``PerfModel`` and
reports, per module, the mean absolute percentage error of each grid point predicted by a model
fitted without it. Targets: at most 5% per module on a GPU (SM quotas), at most 10% on a CPU
(thread quotas). Writes JSON (and the profile itself, for ``lightning-mosaic show``).

    python benchmarks/perfmodel_accuracy.py                                   # CPU, demo "small"
    python benchmarks/perfmodel_accuracy.py --accelerator gpu --size base --batch-size 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

import lightning_mosaic  # noqa: F401  (registers the strategy)
from lightning_mosaic.demo import SIZES, DemoDataModule, DemoMultimodalModel
from lightning_mosaic.lightning.callback import MosaicProfiler

sys.path.insert(0, str(Path(__file__).parent))
from _timing import training_precision

TARGETS = {"cuda": 0.05, "cpu": 0.10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time budget of the profile")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per grid point")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--precision",
        default=None,
        help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)",
    )
    parser.add_argument("--out", type=Path, default=Path("perfmodel_accuracy.json"))
    parser.add_argument("--profile-out", type=Path, default=None, help="where to write the profile JSON")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be at least 1")

    L.seed_everything(0, verbose=False)
    model = DemoMultimodalModel(args.size)
    steps = args.warmup_steps + 1
    data = DemoDataModule(args.size, batch_size=args.batch_size, num_samples=steps * args.batch_size)
    profile_path = args.profile_out or Path(tempfile.mkdtemp()) / "profile.json"
    if profile_path.exists():
        profile_path.unlink()  # measure afresh
    profiler = MosaicProfiler(
        warmup_steps=args.warmup_steps, path=profile_path, repeats=args.repeats, max_seconds=args.max_seconds
    )
    trainer = L.Trainer(
        accelerator=args.accelerator,
        precision=training_precision(args.accelerator, args.precision),
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[profiler],
    )
    started = time.perf_counter()
    trainer.fit(model, data)
    wall = time.perf_counter() - started
    profile, perf_model = profiler.profile, profiler.perf_model
    if profile is None or perf_model is None:
        print("no profile was produced", file=sys.stderr)
        return 1
    scores = perf_model.held_out_mape_
    target = TARGETS.get(profile.device_type, TARGETS["cpu"])
    print(profile.describe())
    print(f"\nheld-out MAPE per module (target <= {target:.0%}):")
    for name, value in scores.items():
        print(f"  {name:<12} {value:6.1%}  {'ok' if value <= target else 'ABOVE TARGET'}")
    result = {
        "benchmark": "perfmodel_accuracy",
        "date": datetime.date.today().isoformat(),
        "device": profile.device,
        "torch": profile.torch_version,
        "size": args.size,
        "batch_size": args.batch_size,
        "quota_unit": profile.quota_unit,
        "capacity": profile.capacity,
        "quotas": profile.quotas,
        "batches": profile.batches,
        "green_context_api": profile.green_context,
        "sm_grants_requested_vs_granted": profile.grants,
        "granularity": profile.granularity,
        "profile_seconds": profile.seconds,
        "profile_complete": profile.complete,
        "fit_wall_seconds": wall,
        "mape": scores,
        "target": target,
        "within_target": {name: value <= target for name, value in scores.items()},
        # (slowest - fastest) / median of a point's timed runs: how steady the device was at each quota
        "median_spread_by_quota": {
            str(q): statistics.median(
                [s.spread for s in profile.samples if s.quota == q and s.feasible] or [0.0]
            )
            for q in profile.quotas
        },
        "points": len(profile.samples),
        "infeasible_points": sum(not s.feasible for s in profile.samples),
        "profile_file": str(profile_path),
        "notes": profile.notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nprofiled in {profile.seconds:.1f} s; wrote {args.out} and {profile_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
