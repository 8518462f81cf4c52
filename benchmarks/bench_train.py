"""Training throughput: plain Lightning (temporal) vs naive streams vs mosaic's plan, in one process.

The model is the demo model (``--model demo``) or a zoo model (``vlm``, ``avlm``, ``bind``).

First ``strategy=MosaicStrategy()`` profiles the model during its warmup steps and makes a plan
(its profile, plan and timeline land in ``--out``'s folder). Then, in interleaved rounds (the order
rotates every round, so drift of the machine hits every variant alike), each variant trains the same
model on the same data:

- ``temporal``: plain Lightning, every module one after another;
- ``naive``: every module on its own CUDA stream, no SM quotas (``plan="concurrent", backend="streams"``);
- ``mosaic``: the plan made above (SM quotas, phases, micro-batches, CUDA graphs for the units the
  profile shows to be launch-bound), applied from the first step;
- with ``--graphs`` also ``temporal_graphs`` (plain order, every unit that can be captured replays
  CUDA graphs) and ``mosaic_eager`` (the plan without its graphs).

Steps are timed from ``on_train_batch_start`` to ``on_train_batch_end`` (GPU synchronised at both
ends) after untimed warmup steps; GPU utilisation and memory come from NVML (``nvidia-ml-py``) and
torch. Prints samples/s and the ratios against temporal, the plan,
predicted vs measured step times, the bound of DESIGN.md (max of the critical path at full GPU and
total SM-seconds / SMs) and the green-context SMs requested vs granted, and writes it all as JSON.

    python benchmarks/bench_train.py --size small --batch-size 64 --out benchmarks/results/x/bench.json
    python benchmarks/bench_train.py --model avlm --size edge --batch-size 8
    python benchmarks/bench_train.py --smoke     # CPU, tiny model, under a minute
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.demo import SIZES, DemoDataModule, DemoMultimodalModel
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.guard import STEPS as GUARD_STEPS
from lightning_mosaic.plan import Plan
from lightning_mosaic.simulator import lower_bound
from lightning_mosaic.zoo.sizes import SIZES as ZOO_SIZES

sys.path.insert(0, str(Path(__file__).parent))
from _timing import GpuMonitor, StepTimer, environment, quiet_trainer, training_precision

VARIANTS = ("temporal", "naive", "mosaic")
GRAPH_VARIANTS = ("temporal_graphs", "mosaic_eager")  # --graphs: graphs on every unit / the plan without
MODELS = ("demo", "vlm", "avlm", "bind")


def _trainer(strategy: Any, args: argparse.Namespace, steps: int, callbacks: list, root: str) -> L.Trainer:
    return quiet_trainer(
        strategy, args.accelerator, args.precision, steps, default_root_dir=root, callbacks=callbacks
    )


def _data(args: argparse.Namespace, steps: int) -> Any:
    if args.model == "demo":
        return DemoDataModule(args.size, batch_size=args.batch_size, num_samples=steps * args.batch_size)
    from lightning_mosaic import zoo

    return zoo.data(args.model, args.size, batch_size=args.batch_size, num_samples=steps * args.batch_size)


def _model(args: argparse.Namespace) -> L.LightningModule:
    if args.model == "demo":
        return DemoMultimodalModel(args.size)
    from lightning_mosaic import zoo

    return zoo.build(args.model, args.size)


def make_plan(
    args: argparse.Namespace, model: L.LightningModule, folder: Path
) -> tuple[Plan, MosaicStrategy]:
    """Profile and plan through ``MosaicStrategy()`` as a user would.

    The strategy writes ``mosaic_profile.json``, ``mosaic_plan.json`` and ``mosaic_plan.png`` to ``folder``.
    """
    L.seed_everything(0, verbose=False)
    strategy = MosaicStrategy(
        backend="cpu" if args.accelerator == "cpu" else "auto",  # on a CPU: the thread-quota rehearsal
        profile=folder / "mosaic_profile.json",
        warmup_steps=args.profile_warmup,
        profile_seconds=args.profile_seconds,
    )
    # Warmup, the captured step, then the guard's steps under the plan: the plan that comes out is
    # what a user gets, kept or dropped by the guard.
    steps = args.profile_warmup + 3 + GUARD_STEPS
    _trainer(strategy, args, steps, [], str(folder)).fit(model, _data(args, steps))
    assert strategy.plan is not None and strategy.planned
    return strategy.plan, strategy


def run(
    variant: str, plan: Plan, model: L.LightningModule, args: argparse.Namespace
) -> tuple[list[float], MosaicStrategy | None, dict]:
    L.seed_everything(0, verbose=False)
    strategy: Any = "auto"
    if variant == "naive":
        strategy = MosaicStrategy(plan="concurrent", backend="streams")
    elif variant == "mosaic":
        strategy = MosaicStrategy(plan=plan)
    elif variant == "temporal_graphs":  # plain order, every unit that can be captured replays CUDA graphs
        strategy = MosaicStrategy(plan="temporal", graphs=True)
    elif variant == "mosaic_eager":  # the plan with its graphs dropped
        strategy = MosaicStrategy(plan=replace(plan, graphs=()), graphs=False)
    steps = args.warmup + args.steps
    timer, monitor = StepTimer(), GpuMonitor()
    with tempfile.TemporaryDirectory() as root:
        _trainer(strategy, args, steps, [timer, monitor], root).fit(model, _data(args, steps))
    return timer.times[args.warmup :], strategy if variant != "temporal" else None, monitor.summary()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="demo", choices=MODELS, help="the demo model or a zoo model (default: demo)"
    )
    parser.add_argument(
        "--size", help=f"demo: {', '.join(SIZES)} (default small); zoo: {', '.join(ZOO_SIZES)} (default edge)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per variant and round (default: 20)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per run (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--accelerator", default="auto", help="gpu, cpu or auto (default: gpu if present)")
    parser.add_argument(
        "--precision",
        default=None,
        help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)",
    )
    parser.add_argument("--profile-warmup", type=int, default=3, help="plain steps before profiling")
    parser.add_argument("--profile-seconds", type=float, default=60.0, help="time budget of the profile")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps: a quick check")
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="also time temporal with CUDA graphs on every unit, and the plan without its graphs",
    )
    parser.add_argument("--out", type=Path, help="JSON file; the profile, plan and timeline go beside it")
    args = parser.parse_args(argv)
    sizes = SIZES if args.model == "demo" else ZOO_SIZES
    if args.size is None:
        args.size = "small" if args.model == "demo" else "edge"
    if args.smoke:
        args.accelerator, args.size, args.batch_size = "cpu", "tiny", 8
        args.steps, args.warmup, args.rounds = 3, 1, 1
        args.profile_warmup, args.profile_seconds = 1, 10.0
    if args.accelerator == "auto":
        args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if args.size not in sizes:
        parser.error(f"--size {args.size!r} is not a size of {args.model}: {', '.join(sizes)}")
    if min(args.steps, args.rounds, args.batch_size, args.warmup, args.profile_warmup) < 1:
        parser.error("--steps, --rounds, --batch-size, --warmup and --profile-warmup must be >= 1")
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    args.precision = training_precision(args.accelerator, args.precision)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out.parent if args.out else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        # One model for every run: building a large one takes longer than timing it. Its weights
        # move on from run to run, which changes no step time.
        model = _model(args)
        plan, planner = make_plan(args, model, folder)
        print(plan.describe(), file=sys.stderr)
        variants = VARIANTS + (GRAPH_VARIANTS if args.graphs else ())
        times: dict[str, list[float]] = {v: [] for v in variants}
        rounds, grants, notes, graphed = [], {}, [], {}
        gpu: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.rounds):
            shift = r % len(variants)
            order = variants[shift:] + variants[:shift]
            medians = {}
            for variant in order:
                measured, strategy, usage = run(variant, plan, model, args)
                gpu[variant].append(usage)
                times[variant] += measured
                medians[variant] = statistics.median(measured)
                if variant == "mosaic" and strategy is not None:
                    backend = strategy.engine.backend
                    grants = {u: vars(g) for u, g in backend.grants.items()}
                    notes = [backend.describe()]
                if strategy is not None and strategy.plan is not None and strategy.plan.graphs:
                    graphed[variant] = list(strategy.plan.graphs)
            rounds.append(medians)
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{v} {medians[v] * 1e3:.2f} ms/step" for v in variants),
                file=sys.stderr,
            )
        result = _result(args, device, plan, planner, times, rounds, grants, notes)
        result["gpu"] = {v: _usage(gpu[v]) for v in variants}
        result["graphed_units"] = graphed
    _print(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


def _result(args, device, plan, planner, times, rounds, grants, notes) -> dict:
    variants = list(times)
    step = {v: statistics.median(times[v]) for v in variants}
    # A ratio is only as good as its rounds agree: the spread of each variant's per-round medians.
    spread = {
        v: (max(r[v] for r in rounds) - min(r[v] for r in rounds)) / step[v] if len(rounds) > 1 else None
        for v in variants
    }
    ratios = not args.smoke and len(rounds) > 1
    result: dict[str, Any] = {
        "benchmark": "bench_train",
        **environment(device),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "smoke": args.smoke,
        "step_s": step,
        "spread": spread,
        "samples_per_s": {v: args.batch_size / step[v] for v in variants},
        "speedup_vs_temporal": {v: step["temporal"] / step[v] for v in variants} if ratios else None,
        "mosaic_over_naive": step["naive"] / step["mosaic"] if ratios else None,
        "guard": {
            "measured_step_s": plan.measured_step_s,
            "measured_temporal_s": plan.measured_temporal_s,
            "notes": [n for n in plan.notes if n.startswith("guard:")],
        },
        "rounds": rounds,
        "plan": plan.to_dict(),
        "plan_description": plan.describe(),
        "predicted_step_s": plan.predicted_step_s,
        "predicted_temporal_s": plan.predicted_temporal_s,
        "measured_over_predicted": step["mosaic"] / plan.predicted_step_s if plan.predicted_step_s else None,
        "grants": grants,
        "backend": notes,
    }
    session = planner.session
    if session is not None and session.perf_model is not None and session.profile is not None:
        model, profile = session.perf_model, session.profile
        graph = planner.graph or profile.graph
        spec = DeviceSpec.from_current(device)
        if model.capacity == spec.sm_count:
            bound = lower_bound(graph, model, profile.batch_size, plan.micro_batches, spec.quotas())
            result["bound_step_s"] = bound
            result["bound_speedup"] = (plan.predicted_temporal_s or 0) / bound if bound else None
        result["perfmodel_mape"] = model.held_out_mape_
    return result


def _usage(runs: list[dict]) -> dict:
    """The rounds' GPU usage of one variant: means of the means, the largest peaks."""
    means = [r["gpu_util_mean"] for r in runs if r["gpu_util_mean"] is not None]
    peaks = [r["peak_allocated_bytes"] for r in runs if r["peak_allocated_bytes"] is not None]
    used = [r["memory_used_bytes"] for r in runs if r["memory_used_bytes"] is not None]
    return {
        "gpu_util_mean": sum(means) / len(means) if means else None,
        "memory_used_bytes": max(used) if used else None,
        "peak_allocated_bytes": max(peaks) if peaks else None,
        "note": runs[0]["note"] if runs else "",
    }


def _print(result: dict) -> None:
    s, sp, spread = result["samples_per_s"], result["speedup_vs_temporal"], result["spread"]
    if sp is None:
        why = "a smoke run" if result["smoke"] else "one round"
        print(
            f"{result['device']}: samples/s temporal {s['temporal']:.1f}, naive {s['naive']:.1f}, mosaic"
            f" {s['mosaic']:.1f} ({why}: it checks that everything runs; no ratio is reported)"
        )
        return
    print(
        f"{result['device']}: samples/s temporal {s['temporal']:.1f}, naive {s['naive']:.1f}"
        f" ({sp['naive']:.3f}x), mosaic {s['mosaic']:.1f} ({sp['mosaic']:.3f}x);"
        f" mosaic/naive {result['mosaic_over_naive']:.3f}; spread of the rounds' medians: "
        + ", ".join(f"{v} {spread[v]:.1%}" for v in VARIANTS)
    )
    for v in GRAPH_VARIANTS:
        if v in s:
            units = result["graphed_units"].get(v, [])
            print(f"{v}: samples/s {s[v]:.1f} ({sp[v]:.3f}x temporal); graphed {units}")
    noise = max(spread.values())
    if abs(sp["mosaic"] - 1) <= noise:
        print(f"mosaic vs temporal is within the rounds' spread ({noise:.1%}): no difference shown")
    if result["predicted_step_s"]:
        print(
            f"mosaic step measured {result['step_s']['mosaic'] * 1e3:.2f} ms vs predicted"
            f" {result['predicted_step_s'] * 1e3:.2f} ms (x{result['measured_over_predicted']:.2f});"
            f" temporal measured {result['step_s']['temporal'] * 1e3:.2f} ms vs predicted"
            f" {(result['predicted_temporal_s'] or 0) * 1e3:.2f} ms"
        )
    util = {v: result["gpu"][v]["gpu_util_mean"] for v in result["gpu"]}
    if all(u is not None for u in util.values()):
        print("GPU utilisation (NVML, mean %): " + ", ".join(f"{v} {u:.0f}" for v, u in util.items()))
    if result.get("bound_speedup"):
        print(
            f"bound: {result['bound_step_s'] * 1e3:.2f} ms per step, at most {result['bound_speedup']:.2f}x"
        )


if __name__ == "__main__":
    main()
