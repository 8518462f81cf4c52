"""Start-up cost: wall time of importing the package's layers and of the command line's ``--help``.

Each command runs in a fresh interpreter; the commands are interleaved over ``--rounds`` rounds (the
order rotates each round), so drift of the machine hits them alike. Prints the median, the spread
((slowest - fastest) / median) and the ratio to ``import lightning`` (what every ``--help`` used to
cost), checks the ``--help`` commands against ``--target`` seconds, and writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/import_time.py --rounds 7
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python (interpreter start)": "pass",
    "import lightning_mosaic": "import lightning_mosaic",
    "import lightning_mosaic.planner": "import lightning_mosaic.planner",
    "import lightning_mosaic.session": "import lightning_mosaic.session",
    "lightning-mosaic --help": "from lightning_mosaic.cli import main; main(['--help'])",
    "lightning-mosaic plan --help": "from lightning_mosaic.cli import main; main(['plan', '--help'])",
    "lightning-mosaic show --help": "from lightning_mosaic.cli import main; main(['show', '--help'])",
    "lightning-mosaic demo --help": "from lightning_mosaic.cli import main; main(['demo', '--help'])",
    "import lightning": "import lightning",
    "import lightning_mosaic, lightning (registers mosaic)": (
        "import lightning_mosaic, lightning; from lightning.pytorch.strategies import StrategyRegistry;"
        " assert 'mosaic' in StrategyRegistry"
    ),
}
HELP = [name for name in COMMANDS if name.endswith("--help")]


def wall(code: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0,) and "SystemExit" not in done.stderr:
        raise RuntimeError(f"{code!r} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target", type=float, default=2.0, help="seconds a --help may take")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(wall(COMMANDS[name]))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    lightning = statistics.median(times["import lightning"])
    rows = {}
    for name in names:
        median = statistics.median(times[name])
        rows[name] = {
            "median_s": median,
            "spread": (max(times[name]) - min(times[name])) / median,
            "of_import_lightning": median / lightning,
            "runs_s": times[name],
        }
        print(
            f"{name:<55} {median:6.2f} s  spread {rows[name]['spread']:5.0%}"
            f"  {rows[name]['of_import_lightning']:5.2f}x import lightning"
        )
    within = {name: rows[name]["median_s"] < args.target for name in HELP}
    print(f"--help under {args.target:g} s: {'yes' if all(within.values()) else 'NO'} ({within})")
    import torch  # versions for the file name and its head, after the timing

    result = {
        "benchmark": "import_time",
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rounds": args.rounds,
        "target_s": args.target,
        "help_within_target": within,
        "commands": {name: COMMANDS[name] for name in names},
        "results": rows,
    }
    version = torch.__version__.split("+")[0]
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).parent / "results" / f"import-time-cpu-torch{version}-{result['date']}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0 if all(within.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
