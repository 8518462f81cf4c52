"""Planner quality and speed: the heuristic against the exhaustive search, and the time to plan.

1. Random instances (``--instances``, default 200): a random DAG of 2 to 5 modules, random monotone
   time curves (time grows with the batch and never grows with the quota) and host (launch) times,
   on a small device (``--sms`` SMs in quotas of ``--granularity``) so that the exhaustive search
   stays affordable. For each, the heuristic as shipped (it tries every split of instances this
   small), the local search alone and the exhaustive search plan; the script prints the
   distribution of heuristic / exhaustive step time (target: equal on every instance) and of local
   search / exhaustive (targets: 95% within 2%, all within 5%).
2. Speed, on one CPU core: planning a random 8-module graph for an H100 (132 SMs in quotas of 8;
   target under 0.3 s) and a two-level graph of 16 encoders feeding one backbone (target under 1 s).

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
    return graph, _model(curves, sms, rng)


def two_level_instance(rng: random.Random, encoders: int, sms: int) -> tuple[ModuleGraph, AnalyticModel]:
    """``encoders`` independent units (some frozen) feeding one backbone, random curves on ``sms`` SMs."""
    names = [f"e{i}" for i in range(encoders)]
    graph = ModuleGraph.from_edges({**{n: [] for n in names}, "backbone": names})
    curves = {}
    for name in [*names, "backbone"]:
        work = rng.uniform(1e-3, 5e-2) * (8 if name == "backbone" else 1)
        backward = rng.uniform(1.0, 2.5) if name == "backbone" or rng.random() < 0.7 else 0.0
        curves[name] = (rng.uniform(1e-4, 2e-3), work, rng.uniform(0.2, 4.0) * sms / 32, 0.8, backward)
    return graph, _model(curves, sms, rng)


def _model(curves: dict, sms: int, rng: random.Random) -> AnalyticModel:
    """Device time ``fixed + work * b / min(q, s * b) ** e`` per pass; host time a launch cost per pass."""
    launch = {name: rng.uniform(0.2, 1.5) * curves[name][0] for name in curves}

    def time_fn(module: str, pass_: str, batch: float, quota: float) -> float:
        fixed, work, per_sample, exponent, backward = curves[module]
        scale = backward if pass_ == "backward" else 1.0
        return scale * (fixed + work * batch / min(quota, per_sample * batch) ** exponent)

    def host_fn(module: str, pass_: str, batch: float, quota: float) -> float:
        return launch[module] * (curves[module][4] if pass_ == "backward" else 1.0)

    return AnalyticModel(
        time_fn,
        lambda module, batch: int(1e6 * batch),
        modules=list(curves),
        capacity=sms,
        backward={n: c[4] > 0 for n, c in curves.items()},
        host_fn=host_fn,
    )


def compare(instances: int, sms: int, granularity: int, batch: int, seed: int) -> dict:
    device = DeviceSpec("small test device", sms, granularity, 10**12)
    rng = random.Random(seed)
    variants = {"heuristic": {}, "local search": {"exact_limit": 0}, "exhaustive": {"method": "exhaustive"}}
    ratios: dict[str, list[float]] = {"heuristic": [], "local search": []}
    sizes, seconds = [], dict.fromkeys(variants, 0.0)
    for _ in range(instances):
        modules = rng.randint(2, 5)
        graph, model = random_instance(rng, modules, sms)
        steps = {}
        for name, options in variants.items():
            started = time.perf_counter()
            steps[name] = plan(graph, model, device, batch, max_micro_batches=4, **options).predicted_step_s
            seconds[name] += time.perf_counter() - started
        for name in ratios:
            ratios[name].append(steps[name] / steps["exhaustive"])
        sizes.append(modules)

    def summary(values: list[float]) -> dict:
        return {
            "min": min(values),
            "median": statistics.median(values),
            "p95": sorted(values)[int(0.95 * (len(values) - 1))],
            "max": max(values),
            "share_equal": sum(r <= 1 + 1e-9 for r in values) / len(values),
            "share_within_2pct": sum(r <= 1.02 for r in values) / len(values),
            "share_within_5pct": sum(r <= 1.05 for r in values) / len(values),
        }

    return {
        "instances": instances,
        "device": {"sms": sms, "granularity": granularity},
        "batch_size": batch,
        "modules_per_instance": dict(sorted((str(m), sizes.count(m)) for m in set(sizes))),
        "ratio_heuristic_over_exhaustive": summary(ratios["heuristic"]),
        "ratio_local_search_over_exhaustive": summary(ratios["local search"]),
        "seconds": seconds,
        "targets": {
            "heuristic_share_equal": 1.0,
            "local_search_share_within_2pct": 0.95,
            "local_search_share_within_5pct": 1.0,
        },
    }


def speed(graph: ModuleGraph, model: AnalyticModel, target: float, repeats: int = 3) -> dict:
    device = DeviceSpec.preset("h100")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = plan(graph, model, device, 32)
        times.append(time.perf_counter() - started)
    return {
        "modules": len(graph.modules),
        "levels": len(graph.levels()),
        "device": device.name,
        "seconds_median": statistics.median(times),
        "seconds_runs": times,
        "target_seconds": target,
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
        "speed_8_modules_h100": speed(*random_instance(random.Random(args.seed), 8, 132), target=0.3),
        "speed_17_modules_two_level_h100": speed(
            *two_level_instance(random.Random(args.seed), 16, 132), target=1.0
        ),
    }
    c = result["comparison"]
    for name, key in (
        ("heuristic", "ratio_heuristic_over_exhaustive"),
        ("local search", "ratio_local_search_over_exhaustive"),
    ):
        r = c[key]
        print(
            f"{c['instances']} instances, {name} / exhaustive step time: min {r['min']:.4f}, median"
            f" {r['median']:.4f}, p95 {r['p95']:.4f}, max {r['max']:.4f}; equal {r['share_equal']:.1%},"
            f" within 2% {r['share_within_2pct']:.1%}, within 5% {r['share_within_5pct']:.1%}"
        )
    print("targets: heuristic equal on every instance; local search 95% within 2%, all within 5%")
    for key in ("speed_8_modules_h100", "speed_17_modules_two_level_h100"):
        s = result[key]
        print(
            f"planning {s['modules']} modules ({s['levels']} levels) for an H100 on one core:"
            f" {s['seconds_median']:.3f} s (target < {s['target_seconds']:g} s)"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU core
    main()
