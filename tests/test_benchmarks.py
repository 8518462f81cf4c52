"""The benchmark scripts run (tiny settings) and write the JSON they promise."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_overhead_benchmark_writes_json(tmp_path):
    main = runpy.run_path(str(BENCHMARKS / "overhead.py"))["main"]
    out = tmp_path / "overhead.json"
    result = main(["--size", "tiny", "--steps", "3", "--warmup", "1", "--rounds", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["device"] == "cpu" and len(saved["rounds"]) == 2
    assert saved["plain_step_s"] > 0 and saved["mosaic_step_s"] > 0
    assert abs(saved["ratio_mosaic_over_plain"] - saved["mosaic_step_s"] / saved["plain_step_s"]) < 1e-12
