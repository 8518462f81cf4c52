"""Draw simulated steps as Gantt charts: the temporal baseline above, the plan below, one time axis.

Each unit has a lane whose height is proportional to its quota — SMs on a GPU, threads in a CPU
rehearsal (the baseline's lanes are all full height); forward tasks and backward tasks are coloured
apart and labelled with their micro-batch. Needs matplotlib (``pip install "lightning-mosaic[plot]"``).
"""

from __future__ import annotations

import os
from typing import Any

from lightning_mosaic.simulator import Timeline

COLOURS = {"forward": "#4C72B0", "backward": "#DD8452"}


def plot_timelines(
    baseline: Timeline,
    planned: Timeline,
    path: str | os.PathLike,
    title: str = "",
    size: tuple[float, float] = (12.0, 7.0),
    dpi: int = 100,
    unit: str = "SMs",
) -> tuple[int, int]:
    """Write a PNG of ``baseline`` above ``planned`` to ``path``; returns its (width, height) in pixels.

    ``unit`` names what the quotas count (``"SMs"``, ``"threads"``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as err:
        raise ImportError('drawing timelines needs matplotlib: pip install "lightning-mosaic[plot]"') from err

    speedup = baseline.step_s / planned.step_s if planned.step_s else float("nan")
    fig, axes = plt.subplots(2, 1, figsize=size, dpi=dpi, sharex=True)
    for ax, timeline, name in (
        (axes[0], baseline, f"temporal baseline: {baseline.step_s * 1e3:.2f} ms"),
        (axes[1], planned, f"plan ({planned.label}): {planned.step_s * 1e3:.2f} ms"),
    ):
        _draw(ax, timeline, unit)
        ax.set_title(name, loc="left", fontsize=10)
    axes[1].set_xlabel("time (ms)")
    handles = [Patch(color=colour, label=pass_) for pass_, colour in COLOURS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title or f"one training step: {speedup:.2f}x faster than temporal")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return round(size[0] * dpi), round(size[1] * dpi)


def draw_plan(
    graph: Any, perf_model: Any, plan: Any, batch_size: int, path: str | os.PathLike
) -> tuple[int, int]:
    """Simulate one step of the temporal plan and of ``plan`` and draw both to ``path`` (a PNG)."""
    from lightning_mosaic.devices import unit_label
    from lightning_mosaic.plan import temporal_plan
    from lightning_mosaic.simulator import simulate

    baseline = simulate(graph, perf_model, temporal_plan(graph), batch_size)
    unit = unit_label(getattr(perf_model, "quota_unit", "sm"))
    return plot_timelines(baseline, simulate(graph, perf_model, plan, batch_size), path, unit=unit)


def _draw(ax: Any, timeline: Timeline, unit: str) -> None:
    """One lane per unit, stacked, each as tall as its quota's share of the device."""
    bottom = 0.0
    ticks, labels = [], []
    for module in reversed(timeline.modules):
        tasks = [t for t in timeline.tasks if t.module == module]
        height = max(t.quota for t in tasks) / timeline.sm_count
        for t in tasks:
            ax.broken_barh(
                [(t.start * 1e3, (t.end - t.start) * 1e3)],
                (bottom + 0.05 * height, 0.9 * height),
                facecolors=COLOURS[t.pass_],
                edgecolor="white",
                linewidth=0.5,
            )
            if timeline.micro_batches > 1 and (t.end - t.start) > 0.02 * timeline.step_s:
                ax.text(
                    (t.start + t.end) / 2 * 1e3, bottom + height / 2, str(t.micro_batch),
                    ha="center", va="center", fontsize=7, color="white",
                )  # fmt: skip
        ticks.append(bottom + height / 2)
        graphed = ", graph" if module in timeline.graphs else ""
        labels.append(f"{module} ({max(t.quota for t in tasks)} {unit}{graphed})")
        bottom += height
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(0, bottom)
    ax.grid(axis="x", alpha=0.3)
