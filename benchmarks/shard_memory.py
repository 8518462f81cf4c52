"""Memory per rank and step time: the demo model's backbone sharded with FSDP2 vs every unit replicated.

Runs ``MosaicStrategy(shard=None)`` (DDP) and ``MosaicStrategy(shard=["llm"])`` on ``--devices``
processes, in interleaved rounds (the order alternates), each round a fresh launch of this script
as a worker. Each rank reports the parameter bytes it holds per unit and the training state it
holds (parameters, gradients, two AdamW moments: 4x the trainable bytes, sharded units 1/world);
the parent prints per-rank memory and the median step time of both layouts, and writes JSON.

    python benchmarks/shard_memory.py                                  # CPU processes over gloo
    python benchmarks/shard_memory.py --accelerator gpu --devices 8    # needs several GPUs

On one GPU nothing can be sharded: the GPU figures wait for a multi-GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {"replicated": None, "sharded": ["llm"]}


def worker(args: argparse.Namespace) -> None:
    import lightning as L

    sys.path.insert(0, str(Path(__file__).parent))
    from _timing import StepTimer, quiet_trainer

    from lightning_mosaic import MosaicStrategy
    from lightning_mosaic.demo import DemoDataModule, DemoMultimodalModel
    from lightning_mosaic.sharding import local_bytes, resident_bytes, training_bytes

    L.seed_everything(0, verbose=False)
    model = DemoMultimodalModel(args.size)
    units = {n: m for n, m in model.named_children()}
    whole = {n: training_bytes(m) for n, m in units.items()}
    steps = args.warmup + args.steps
    data = DemoDataModule(
        args.size, batch_size=args.batch_size, num_samples=steps * args.batch_size * args.devices
    )
    timer = StepTimer()
    strategy = MosaicStrategy(shard=VARIANTS[args.worker], plan="temporal")
    trainer = quiet_trainer(
        strategy, args.accelerator, "32-true", steps, callbacks=[timer], devices=args.devices
    )
    trainer.fit(model, data)
    layout = strategy.layout.units if strategy.layout is not None else dict.fromkeys(units, "replicated")
    record = {
        "rank": trainer.global_rank,
        "param_bytes": {n: local_bytes(m) for n, m in units.items()},
        "training_bytes_whole": whole,
        "resident_bytes": resident_bytes(units, layout, trainer.world_size),
        "step_s": statistics.median(timer.times[args.warmup :]),
        "layout": strategy.layout.describe()
        if strategy.layout is not None
        else "every unit replicated (DDP)",
    }
    Path(args.out_dir, f"{args.worker}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="demo model size (default: small)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step per rank (default: 8)")
    parser.add_argument("--devices", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--accelerator", default="cpu", help="cpu (default) or gpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (default: 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--out", type=Path, help="JSON file (default: print only)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.devices < 2:
        parser.error(f"--devices {args.devices}: sharding needs at least 2 processes")
    import tempfile

    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                argv = [sys.executable, __file__, "--worker", variant, "--out-dir", tmp]
                for flag in ("size", "batch_size", "devices", "accelerator", "steps", "warmup"):
                    argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                done = subprocess.run(argv, capture_output=True, text=True, env=os.environ)
                if done.returncode != 0:
                    sys.exit(f"{variant} round {r + 1} failed:\n{done.stderr[-3000:]}")
                ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob(f"{variant}-rank*.json"))]
            results[variant].append({"ranks": ranks})
            step = statistics.median(rank["step_s"] for rank in ranks)
            print(f"round {r + 1}/{args.rounds} {variant}: {step * 1e3:.1f} ms/step")
    summary = {}
    for variant, rounds in results.items():
        first = rounds[0]["ranks"]
        summary[variant] = {
            "layout": first[0]["layout"],
            "param_bytes_per_rank": [sum(rank["param_bytes"].values()) for rank in first],
            "llm_param_bytes_per_rank": [rank["param_bytes"]["llm"] for rank in first],
            "resident_bytes_per_rank": [rank["resident_bytes"] for rank in first],
            "step_s": statistics.median(rank["step_s"] for rnd in rounds for rank in rnd["ranks"]),
            "round_step_s": [statistics.median(rank["step_s"] for rank in rnd["ranks"]) for rnd in rounds],
        }
        s = summary[variant]
        params = [round(b / 2**20, 2) for b in s["param_bytes_per_rank"]]
        rounds_ms = [round(t * 1e3, 1) for t in s["round_step_s"]]
        print(f"{variant}: {s['layout']}")
        print(
            f"  parameters per rank {params} MiB, training state per rank"
            f" {max(s['resident_bytes_per_rank']) / 2**20:.2f} MiB, median step {s['step_s'] * 1e3:.1f} ms"
            f" (rounds {rounds_ms})"
        )
    rep, sh = summary["replicated"], summary["sharded"]
    memory_ratio = max(sh["resident_bytes_per_rank"]) / max(rep["resident_bytes_per_rank"])
    step_ratio = sh["step_s"] / rep["step_s"]
    print(f"sharded / replicated: training state per rank {memory_ratio:.2f}x, step time {step_ratio:.2f}x")
    if args.out:
        import torch

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "benchmark": "shard_memory",
                    "torch": torch.__version__,
                    "config": {k: v for k, v in vars(args).items() if k not in ("worker", "out_dir", "out")},
                    "summary": summary,
                    "memory_ratio": memory_ratio,
                    "step_ratio": step_ratio,
                    "rounds": results,
                },
                indent=1,
            )
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
