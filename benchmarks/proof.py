"""The proof: does ``strategy="mosaic"`` make real multimodal training faster on this GPU?

For each zoo model (``vlm``, ``avlm``, ``bind``) at ``edge`` size in bf16-mixed, at two batch
sizes, ``bench_train.py`` lets ``MosaicStrategy()`` profile, plan and guard the model as a user's
run would, then trains plain Lightning (temporal), naive streams (every module on its own stream,
no quotas) and mosaic's plan in interleaved rounds, in this one process. Everything lands in ONE
JSON file (``--out``): per configuration the samples/s, the ratios and the rounds' spread, the
plan, predicted vs measured step times (the simulator's and the guard's), the SMs requested vs
granted, the host (issue) vs device time of every unit from the profile, and the profile itself;
then the goals checked: mosaic at least 1.3x temporal on avlm, never below 0.98x, above naive
streams, predicted within 10% of measured. CUDA graphs: at the first batch size each model also
trains with graphs on every unit (``temporal_graphs``) and with the plan's graphs dropped
(``mosaic_eager``), and ``graphs_check.py`` (45 s kept for it) checks that graphed training stays
allclose to eager after 10 steps in fp32 and bf16-mixed and measures each unit's host time eager
vs graphed; all under ``"graphs"`` and in each result.

Sized from the committed H200 logs (gpu-check-h200-torch2.11.0-2026-11-27): a Trainer's set-up
takes 1-2 s, a zoo profile is cut at ``--profile-seconds`` (15 s), a configuration trains
``--rounds`` x 3 runs of ``--warmup`` + ``--steps`` steps (2 x 3 x 11 steps of at most ~0.3 s at
edge size) plus the planning run's 12 steps, so one configuration takes 40-70 s and six about
5 minutes. ``--budget-seconds`` (default 390) is kept whatever happens: a configuration that would
not fit in what is left is recorded as skipped, with the reason.

    python benchmarks/proof.py --out proof.json                       # on a GPU
    python benchmarks/proof.py --accelerator cpu --size tiny --batch-sizes 4 --rounds 1 --out p.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).parent / "bench_train.py"
GRAPHS = Path(__file__).parent / "graphs_check.py"
GRAPHS_RESERVE_S = 45.0  # kept for graphs_check.py (numerics fp32 and bf16, host times): ~20 s on an H200
GOALS = {"avlm_speedup": 1.3, "never_below": 0.98, "predicted_within": 0.10}


def _host_vs_device(profile: dict) -> dict:
    """Per unit and pass at the full batch on the whole device: device seconds, host seconds."""
    out: dict[str, dict] = {}
    for s in profile["samples"]:
        if s["feasible"] and s["batch"] == profile["batch_size"] and s["quota"] == profile["capacity"]:
            out.setdefault(s["module"], {})[s["pass"]] = {
                "device_s": s["seconds"],
                "host_s": s.get("host_seconds"),
            }
    return out


def run_one(model: str, batch: int, args: argparse.Namespace, folder: Path, graphs: bool = False) -> dict:
    main = runpy.run_path(str(BENCH))["main"]
    argv = ["--graphs"] if graphs else []
    argv += [
        "--model", model, "--size", args.size, "--batch-size", str(batch), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--rounds", str(args.rounds), "--accelerator", args.accelerator,
        "--precision", args.precision, "--profile-warmup", str(args.profile_warmup),
        "--profile-seconds", str(args.profile_seconds), "--out", str(folder / "bench.json"),
    ]  # fmt: skip
    result = main(argv)
    profile_path = folder / "mosaic_profile.json"
    profile = json.loads(profile_path.read_text()) if profile_path.exists() else None
    result["host_vs_device"] = _host_vs_device(profile) if profile else None
    result["profile"] = profile
    return result


def goals(results: list[dict]) -> dict:
    """The goals of the proof against what was measured (None where nothing measured it)."""
    measured = [r for r in results if r.get("speedup_vs_temporal")]
    if not measured:
        return {"measured": False}
    speedups = {
        f"{r['config']['model']} b{r['config']['batch_size']}": r["speedup_vs_temporal"]["mosaic"]
        for r in measured
    }
    avlm = [r["speedup_vs_temporal"]["mosaic"] for r in measured if r["config"]["model"] == "avlm"]
    predicted = [abs(r["measured_over_predicted"] - 1) for r in measured if r.get("measured_over_predicted")]
    return {
        "measured": True,
        "mosaic_vs_temporal": speedups,
        "avlm_at_least_1_3x": max(avlm) >= GOALS["avlm_speedup"] if avlm else None,
        "never_below_0_98x": min(speedups.values()) >= GOALS["never_below"],
        "above_naive": all(r["mosaic_over_naive"] >= 1.0 for r in measured),
        "predicted_within_10pct": all(p <= GOALS["predicted_within"] for p in predicted)
        if predicted
        else None,
        "median_prediction_error": statistics.median(predicted) if predicted else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vlm", "avlm", "bind"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--size", default="edge")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--profile-warmup", type=int, default=2)
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--budget-seconds", type=float, default=390.0, help="the whole run stays within this")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph checks")
    parser.add_argument("--out", type=Path, required=True, help="the one JSON file of every result")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    longest = 0.0
    reserve = 0.0 if args.no_graphs else GRAPHS_RESERVE_S
    graphs: dict[str, Any] | None = None
    for model in args.models:
        for batch in args.batch_sizes:
            left = args.budget_seconds - reserve - (time.perf_counter() - started)
            estimate = max(longest * 1.2, 30.0)  # the slowest configuration so far, with margin
            if left < estimate:
                results.append(
                    {"config": {"model": model, "batch_size": batch}, "skipped": f"budget: {left:.0f} s left"}
                )
                print(f"{model} b{batch}: skipped ({left:.0f} s of the budget left)", file=sys.stderr)
                continue
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:
                try:
                    # CUDA graphs on vs off: once per model, at its first batch size
                    with_graphs = not args.no_graphs and batch == args.batch_sizes[0]
                    result = run_one(model, batch, args, Path(scratch), graphs=with_graphs)
                except Exception as err:  # one configuration failing must not lose the others
                    result = {
                        "config": {"model": model, "batch_size": batch},
                        "error": f"{type(err).__name__}: {err}",
                    }
                    print(f"{model} b{batch}: FAILED {result['error']}", file=sys.stderr)
            result["wall_s"] = time.perf_counter() - began
            longest = max(longest, result["wall_s"])
            results.append(result)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(_document(args, results, started), indent=1))  # kept if killed
    if not args.no_graphs:
        graphs = _graphs(args)
    document = _document(args, results, started, graphs)
    args.out.write_text(json.dumps(document, indent=1))
    _print(document)
    return document


def _graphs(args: argparse.Namespace) -> dict[str, Any]:
    """graphs_check.py on the demo model: numerics (fp32, bf16-mixed) and host times, eager vs graphed."""
    main = runpy.run_path(str(GRAPHS))["main"]
    try:
        return main(["--accelerator", args.accelerator, "--size", "small" if args.size != "tiny" else "tiny"])
    except Exception as err:  # the speed results above stay
        print(f"graphs check: FAILED {type(err).__name__}: {err}", file=sys.stderr)
        return {"error": f"{type(err).__name__}: {err}"}


def _document(
    args: argparse.Namespace, results: list[dict], started: float, graphs: dict | None = None
) -> dict:
    return {
        "benchmark": "proof",
        "date": datetime.date.today().isoformat(),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_s": time.perf_counter() - started,
        "goals": goals([r for r in results if "error" not in r and "skipped" not in r]),
        "results": results,
        "graphs": graphs,
    }


def _print(document: dict) -> None:
    print(f"proof: {len(document['results'])} configurations in {document['wall_s']:.0f} s")
    for r in document["results"]:
        c = r["config"]
        name = f"{c['model']} batch {c['batch_size']}"
        if "skipped" in r or "error" in r:
            print(f"  {name}: {r.get('skipped') or r.get('error')}")
            continue
        sp, s = r.get("speedup_vs_temporal"), r["samples_per_s"]
        ratio = (
            f"mosaic {sp['mosaic']:.3f}x temporal, {r['mosaic_over_naive']:.3f}x naive" if sp else "no ratio"
        )
        throughput = f"temporal {s['temporal']:.1f}, naive {s['naive']:.1f}, mosaic {s['mosaic']:.1f}"
        print(f"  {name}: samples/s {throughput}; {ratio}")
    print(f"goals: {json.dumps(document['goals'])}")


if __name__ == "__main__":
    main()
