"""Build the results table of README.md and benchmarks/results/README.md from the committed JSON.

Every ``bench_train`` result under ``benchmarks/results/`` measured on a GPU becomes a row: model,
size and batch, GPU, torch version, samples/s of temporal / naive streams / mosaic, mosaic's speedup
over temporal and over naive streams, and the bound. CPU results are left out (they say nothing
about GPU speedups); with no GPU result the table says so. The table goes between the markers
``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` of each file.

    python benchmarks/results_table.py            # rewrite both tables
    python benchmarks/results_table.py --check    # exit 1 if a table is out of date
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
HEADER = (
    "| model | GPU | torch | samples/s temporal / naive / mosaic | mosaic vs temporal | mosaic vs naive"
    " | bound | result |\n|---|---|---|---|---|---|---|---|"
)


def rows(results: Path) -> list[dict]:
    """The GPU ``bench_train`` results under ``results``, sorted by model, size, batch and date."""
    found = []
    for path in sorted(results.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            not isinstance(data, dict)
            or data.get("benchmark") != "bench_train"
            or data.get("device") == "cpu"
            or data.get("speedup_vs_temporal") is None  # a smoke run, or one round: no ratio
        ):
            continue
        data["_path"] = path.relative_to(results.parent.parent).as_posix()
        found.append(data)
    key = lambda d: (d["config"]["model"], d["config"]["size"], d["config"]["batch_size"], d["date"])  # noqa: E731
    return sorted(found, key=key)


def table(results: Path) -> str:
    found = rows(results)
    if not found:
        return f"{HEADER}\n| not yet measured on GPU | | | | | | | |"
    lines = [HEADER]
    for d in found:
        c, s, sp = d["config"], d["samples_per_s"], d["speedup_vs_temporal"]
        bound = f"{d['bound_speedup']:.2f}x" if d.get("bound_speedup") else "n/a"
        lines.append(
            f"| {c['model']} {c['size']}, batch {c['batch_size']} | {d['device']} | {d['torch']} |"
            f" {s['temporal']:.1f} / {s['naive']:.1f} / {s['mosaic']:.1f} | {sp['mosaic']:.2f}x |"
            f" {d['mosaic_over_naive']:.2f}x | {bound} | [{Path(d['_path']).parent.name}]({d['_path']}) |"
        )
    zoo = [d["speedup_vs_temporal"]["mosaic"] for d in found if d["config"]["model"] != "demo"]
    if zoo:
        mean = math.exp(sum(math.log(x) for x in zoo) / len(zoo))
        lines.append(f"\nGeometric mean of mosaic vs temporal over the zoo rows: {mean:.2f}x.")
    return "\n".join(lines)


def update(path: Path, text: str) -> str:
    """``path``'s content with the table replaced."""
    content = path.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{text}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--files",
        type=Path,
        nargs="*",
        default=[ROOT / "README.md", ROOT / "benchmarks" / "results" / "README.md"],
    )
    parser.add_argument("--check", action="store_true", help="only check that the tables are up to date")
    args = parser.parse_args(argv)
    text = table(args.results)
    stale = []
    for path in args.files:
        new = update(path, text)
        if new != path.read_text():
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(
            f"out of date: {', '.join(map(str, stale))}; run python benchmarks/results_table.py",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
