"""``lightning-mosaic plan PROFILE.json --batch-size N``: plan from a profile, save it, draw it.

Fits the performance model to the profile, plans for the profiled device (or, with ``--what-if``,
for another device preset or batch size), prints the plan next to the temporal baseline, and
writes the plan JSON (``--out``) and a Gantt chart of one simulated step (``--timeline``).

``--what-if graphs`` also plans with CUDA graphs for the units the profile shows to be launch-bound
(host time at least device time: what ``MosaicStrategy(graphs="auto")`` captures), prints the
host and device time of every unit and the predicted step with and without graphs, and writes
the plan with graphs.

A what-if on a device with more SMs than the profiled one cannot be measured from the profile:
time beyond the profiled SM count is assumed to scale inversely with the quota (said in the plan's
notes). The plan needs the module graph, which profiles made by ``MosaicProfiler`` carry; for other
profiles pass ``--graph GRAPH.json`` (``ModuleGraph.to_json``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightning_mosaic.devices import PRESETS, DeviceSpec, unit_label
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.graphcost import graphed, launch_bound, step_times
from lightning_mosaic.planner import METHODS, plan
from lightning_mosaic.profile import Profile, ProfileError

if TYPE_CHECKING:
    from lightning_mosaic.perfmodel import AnalyticModel, CostModel

WHAT_IF = ("graphs",)


def what_if_model(model: CostModel, device: DeviceSpec) -> AnalyticModel:
    """``model`` on ``device``'s SM count: quotas beyond the profiled count scale time as 1 / quota."""
    from lightning_mosaic.perfmodel import AnalyticModel

    cap = model.capacity

    def time_fn(module: str, pass_: str, batch: float, quota: float) -> float:
        if quota <= cap:
            return model.predict(module, pass_, batch, quota)
        return model.predict(module, pass_, batch, cap) * cap / quota

    return AnalyticModel(
        time_fn,
        model.memory,
        modules=model.modules,
        capacity=device.sm_count,
        backward=model.backward,
        calls=model.calls,
        device=device.name,
    )


def _graphs_report(model: CostModel, units: Sequence[str], batch: int, graphs: Sequence[str]) -> str:
    """Host vs device milliseconds per unit (both passes, whole device) and which are launch-bound."""
    lines = [f"what-if graphs: host (issue) vs device time per step at batch {batch} on the whole device"]
    with_graphs = graphed(model, graphs)
    for unit in units:
        host, device = step_times(model, unit, batch)
        line = f"  {unit}: host {host * 1e3:.3f} ms, device {device * 1e3:.3f} ms"
        if unit in graphs:
            host, device = step_times(with_graphs, unit, batch)
            line += f" (launch-bound: graphed, then host {host * 1e3:.3f} ms, device {device * 1e3:.3f} ms)"
        lines.append(line + ("" if unit in graphs else " (device-bound)"))
    if not graphs:
        lines.append("  no unit is launch-bound: graphs would not shorten the step")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-mosaic plan",
        description="Plan SM quotas, phases and micro-batches from a profile; save the plan and a timeline.",
    )
    parser.add_argument("profile", help="a profile JSON file written by MosaicProfiler")
    parser.add_argument("--batch-size", type=int, required=True, help="samples per step to plan for")
    parser.add_argument(
        "--device", default=None, help=f"device preset ({', '.join(PRESETS)}); default: the profiled one"
    )
    parser.add_argument("--method", choices=METHODS, default="heuristic")
    parser.add_argument("--micro-batches", type=int, default=None, help="fix the micro-batch count")
    parser.add_argument("--graph", default=None, help="ModuleGraph JSON, for profiles without a graph")
    parser.add_argument("--out", default=None, help="write the plan JSON here")
    parser.add_argument("--timeline", default=None, help="write a PNG Gantt chart of one simulated step here")
    parser.add_argument(
        "--what-if",
        nargs="*",
        choices=WHAT_IF,
        default=None,
        metavar="graphs",
        help="allow a device or batch size other than the profiled ones; 'graphs': also plan with CUDA"
        " graphs for the launch-bound units and compare",
    )
    args = parser.parse_args(argv)
    what_if = args.what_if is not None
    try:
        profile = Profile.load(args.profile)
    except ProfileError as err:
        parser.exit(1, f"lightning-mosaic plan: {err}\n")
    try:
        device = DeviceSpec.preset(args.device) if args.device else DeviceSpec.from_profile(profile)
    except ValueError as err:
        parser.error(str(err))
    if device.quota_unit != profile.quota_unit:
        parser.error(
            f"the profile was measured on {profile.device} in {unit_label(profile.quota_unit)}; it says"
            f" nothing about {device.name}, whose quotas are {device.unit_label}: profile on such a device"
            " (a CPU rehearsal only plans for the CPU it ran on)"
        )
    other_device = device.name != profile.device or device.sm_count != profile.capacity
    other_batch = args.batch_size != profile.batch_size
    if (other_device or other_batch) and not what_if:
        parser.error(
            f"the profile was measured on {profile.device}"
            f" ({profile.capacity} {unit_label(profile.quota_unit)}) at batch {profile.batch_size};"
            f" planning for {device.name} ({device.sm_count} {device.unit_label}) at batch {args.batch_size}"
            " extrapolates:"
            " add --what-if to do it anyway"
        )
    try:
        if args.graph:
            graph = ModuleGraph.load(args.graph)
        elif profile.graph is not None:
            graph = profile.graph
        else:
            parser.error(f"{args.profile} holds no module graph; pass --graph GRAPH.json")
    except ValueError as err:
        parser.exit(1, f"lightning-mosaic plan: {err}\n")
    from lightning_mosaic.perfmodel import PerfModel  # scikit-learn: after the arguments are parsed

    model = PerfModel().fit(profile)
    if device.sm_count != model.capacity:
        model = what_if_model(model, device)
    graphs: list[str] = []
    if what_if and "graphs" in args.what_if:
        if device.quota_unit != "sm":
            parser.error("--what-if graphs: CUDA graphs are for GPUs; this profile was measured on a CPU")
        if not profile.has_host_times():
            parser.exit(
                1,
                f"lightning-mosaic plan: {args.profile} measured no host (issue) times, so what graphs would"
                " save cannot be predicted: profile again with this version\n",
            )
        graphs = launch_bound(model, graph.called, args.batch_size)
    try:
        chosen = plan(
            graph, model, device, args.batch_size, method=args.method, micro_batches=args.micro_batches
        )
        if graphs:
            eager, chosen = (
                chosen,
                plan(
                    graph,
                    model,
                    device,
                    args.batch_size,
                    method=args.method,
                    micro_batches=args.micro_batches,
                    graphs=graphs,
                ),
            )
    except ValueError as err:
        parser.exit(1, f"lightning-mosaic plan: {err}\n")
    if other_device or other_batch:
        chosen = chosen.with_notes(
            f"what-if: planned for {device.name} at batch {args.batch_size}"
            f" from a profile of {profile.device} at batch {profile.batch_size}"
            + (
                "; time beyond the profiled SMs assumed to scale as 1/quota"
                if device.sm_count > profile.capacity
                else ""
            )
        )
    print(device.describe())
    if what_if and "graphs" in args.what_if:
        print(_graphs_report(model, graph.called, args.batch_size, graphs))
        if graphs:
            chosen = chosen.with_notes(
                f"what-if graphs: {eager.predicted_step_s * 1e3:.2f} ms per step without graphs"
                f" ({eager.method}), {chosen.predicted_step_s * 1e3:.2f} ms with"
                f" ({eager.predicted_step_s / chosen.predicted_step_s:.2f}x)"
            )
    print(chosen.describe())
    if args.out:
        chosen.save(args.out)
        print(f"plan written to {args.out}")
    if args.timeline:
        from lightning_mosaic.viz import draw_plan

        try:
            width, height = draw_plan(graph, model, chosen, args.batch_size, args.timeline)
        except ImportError as err:
            parser.exit(1, f"lightning-mosaic plan: {err}\n")
        print(f"timeline written to {os.fspath(args.timeline)} ({width}x{height} px)")
    return 0
