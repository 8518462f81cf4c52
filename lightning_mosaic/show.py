"""``lightning-mosaic show PROFILE.json``: what was measured, what the model predicts, how far apart.

One table per unit and pass: quota, batch, the measured median, the time the performance model
predicts for that point when fitted *without* it (held out, so the error is honest), and the
error; then the held-out MAPE per unit. Infeasible points are listed as such.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightning_mosaic.devices import unit_label
from lightning_mosaic.profile import Profile, ProfileError

if TYPE_CHECKING:
    from lightning_mosaic.perfmodel import PerfModel


def render(profile: Profile, model: PerfModel) -> str:
    """The tables of ``profile`` with the held-out predictions of ``model`` (``PerfModel(held_out=True)``)."""
    unit = unit_label(profile.quota_unit)
    predicted = {(r["module"], r["pass"], r["batch"], r["quota"]): r for r in model.held_out_}
    lines = [profile.describe(), ""]
    for info in profile.modules:
        passes = ("forward", "backward") if info.backward else ("forward",)
        for pass_ in passes:
            lines.append(f"{info.name} / {pass_}")
            lines.append(
                f"  {unit:>7}  {'batch':>6}  {'measured':>11}  {'predicted':>11}  {'error':>7}  {'host':>11}"
            )
            points = sorted(
                profile.samples_of(info.name, pass_, feasible_only=False), key=lambda s: (s.quota, s.batch)
            )
            for s in points:
                if not s.feasible:
                    lines.append(f"  {s.quota:>7}  {s.batch:>6}  {'infeasible':>11}  ({s.error})")
                    continue
                row = predicted[(info.name, pass_, s.batch, s.quota)]
                host = _ms(s.host_seconds) if s.host_seconds is not None else f"{'-':>11}"
                lines.append(
                    f"  {s.quota:>7}  {s.batch:>6}  {_ms(row['measured'])}  {_ms(row['predicted'])}"
                    f"  {row['error']:>7.1%}  {host}"
                )
            lines.append("")
    from lightning_mosaic.perfmodel import MAX_MAPE, critical_units

    scores = model.held_out_mape_
    critical = None  # without the module graph every unit may be on the critical path
    if profile.graph is not None:
        critical = set(critical_units(model, profile.graph, profile.batch_size))
    lines.append("held-out MAPE per module (each point predicted by a model fitted without it):")
    width = max(len(name) for name in scores) if scores else 0
    for name, value in scores.items():
        flag = ""
        if value > MAX_MAPE:
            flag = (
                f"  <- above {MAX_MAPE:.0%} on the critical path: too wrong to plan from (temporal plans)"
                if critical is None or name in critical
                else f"  <- above {MAX_MAPE:.0%}, off the critical path"
            )
        lines.append(f"  {name:<{width}}  {value:.1%}{flag}")
    if profile.graphed:
        lines.append(f"as CUDA graphs, batch {profile.batch_size} on the whole device (replayed):")
        for s in profile.graphed:
            cost = model.graph_cost(s.module, s.pass_)
            ratio = f", x{cost[0]:.2f} the eager device time" if cost is not None else ""
            host = _ms(s.host_seconds) if s.host_seconds is not None else "-"
            lines.append(f"  {s.module} / {s.pass_}: measured {_ms(s.seconds)}{ratio}, host {host.strip()}")
    lines.append("host: the time to issue the pass (the wall clock around it); measured: the device's time")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:>8.3f} ms"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-mosaic show",
        description="Show a profile: measured vs held-out predicted time per module, pass, quota and batch.",
    )
    parser.add_argument("profile", help="a profile JSON file written by MosaicProfiler or the strategy")
    args = parser.parse_args(argv)
    try:
        profile = Profile.load(args.profile)
    except ProfileError as err:
        parser.exit(1, f"lightning-mosaic show: {err}\n")
    from lightning_mosaic.perfmodel import PerfModel  # scikit-learn: after the arguments are parsed

    print(render(profile, PerfModel(held_out=True).fit(profile)))
    return 0
