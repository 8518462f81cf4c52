"""Planner quality and speed: the heuristic against the exhaustive search, and an 8-module plan's time.

1. Random instances (``--instances``, default 200): a random DAG of 2 to 5 modules, random monotone
   time curves (time grows with the batch and never grows with the quota), on a small device
   (``--sms`` SMs in quotas of ``--granularity``) so that the exhaustive search stays affordable.
   For each, both methods plan; the script prints the distribution of heuristic / exhaustive step
   time and the share within 2% and 5% (targets: 95% within 2%, all within 5%).
2. Speed: planning a random 8-module graph for an H100 (132 SMs in quotas of 8) with the heuristic,
   on one CPU core (target: under 1 s).

    python benchmarks/planner_quality.py --out planner_quality.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import time
from pathlib import Path

from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.perfmodel import AnalyticModel
from lightning_mosaic.planner import plan


def random_instance(rng: random.Random, modules: int, sms: int) -> tuple[ModuleGraph, AnalyticModel]:
    """A random DAG of ``modules`` units with random monotone time curves on ``sms`` SMs."""
    names = [f"m{i}" for i in range(modules)]
    edges = {n: [p for p in names[:i] if rng.random() < 0.5] for i, n in enumerate(names)}
    graph = ModuleGraph.from_edges(edges)
    curves = {}
    for name in names:
        fixed = rng.uniform(1e-4, 2e-3)
        work = rng.uniform(1e-3, 5e-2)
        per_sample = rng.uniform(0.2, 4.0) * sms / 32  # SMs one sample can use
        exponent = rng.uniform(0.5, 1.0)
        backward = rng.uniform(1.0, 2.5) if rng.random() < 0.8 else 0.0
        curves[name] = (fixed, work, per_sample, exponent, backward)

    def time_fn(module: str, pass_: str, batch: float, quota: float) -> float:
        fixed, work, per_sample, exponent, backward = curves[module]
        scale = backward if pass_ == "backward" else 1.0
        return scale * (fixed + work * batch / min(quota, per_sample * batch) ** exponent)

    model = AnalyticModel(
        time_fn,
        lambda module, batch: int(1e6 * batch),
        modules=names,
        capacity=sms,
        backward={n: curves[n][4] > 0 for n in names},
    )
    return graph, model


def compare(instances: int, sms: int, granularity: int, batch: int, seed: int) -> dict:
    device = DeviceSpec("small test device", sms, granularity, 10**12)
    rng = random.Random(seed)
    ratios, sizes, seconds = [], [], {"heuristic": 0.0, "exhaustive": 0.0}
    for _ in range(instances):
        modules = rng.randint(2, 5)
        graph, model = random_instance(rng, modules, sms)
        steps = {}
        for method in ("heuristic", "exhaustive"):
            started = time.perf_counter()
            steps[method] = plan(
                graph, model, device, batch, method=method, max_micro_batches=4
            ).predicted_step_s
            seconds[method] += time.perf_counter() - started
        ratios.append(steps["heuristic"] / steps["exhaustive"])
        sizes.append(modules)
    within = lambda limit: sum(r <= 1 + limit for r in ratios) / len(ratios)  # noqa: E731
    return {
        "instances": instances,
        "device": {"sms": sms, "granularity": granularity},
        "batch_size": batch,
        "modules_per_instance": dict(sorted((str(m), sizes.count(m)) for m in set(sizes))),
        "ratio_heuristic_over_exhaustive": {
            "min": min(ratios),
            "median": statistics.median(ratios),
            "p95": sorted(ratios)[int(0.95 * (len(ratios) - 1))],
            "max": max(ratios),
        },
        "share_within_2pct": within(0.02),
        "share_within_5pct": within(0.05),
        "seconds": seconds,
        "targets": {"share_within_2pct": 0.95, "share_within_5pct": 1.0},
    }


def speed(seed: int, repeats: int = 3) -> dict:
    rng = random.Random(seed)
    graph, model = random_instance(rng, 8, 132)
    device = DeviceSpec.preset("h100")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = plan(graph, model, device, 32)
        times.append(time.perf_counter() - started)
    return {
        "modules": 8,
        "device": device.name,
        "seconds_median": statistics.median(times),
        "target_seconds": 1.0,
        "plan": result.to_dict(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--sms", type=int, default=20)
    parser.add_argument("--granularity", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = {
        "benchmark": "planner_quality",
        "date": datetime.date.today().isoformat(),
        "comparison": compare(args.instances, args.sms, args.granularity, args.batch_size, args.seed),
        "speed_8_modules_h100": speed(args.seed),
    }
    c, s = result["comparison"], result["speed_8_modules_h100"]
    r = c["ratio_heuristic_over_exhaustive"]
    print(
        f"{c['instances']} instances: heuristic/exhaustive step time min {r['min']:.4f},"
        f" median {r['median']:.4f},"
        f" p95 {r['p95']:.4f}, max {r['max']:.4f}; within 2%: {c['share_within_2pct']:.1%} (target 95%),"
        f" within 5%: {c['share_within_5pct']:.1%} (target 100%)"
    )
    print(f"planning 8 modules for an H100 on one core: {s['seconds_median']:.3f} s (target < 1 s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU core
    main()
