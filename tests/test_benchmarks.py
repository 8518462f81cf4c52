"""The benchmark scripts run (tiny settings) and write the JSON they promise."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

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


def test_perfmodel_accuracy_benchmark_writes_json_and_the_profile(tmp_path):
    from lightning_mosaic.profile import Profile

    main = runpy.run_path(str(BENCHMARKS / "perfmodel_accuracy.py"))["main"]
    out, profile = tmp_path / "accuracy.json", tmp_path / "profile.json"
    args = ["--size", "tiny", "--batch-size", "4", "--repeats", "2", "--max-seconds", "20"]
    assert main([*args, "--out", str(out), "--profile-out", str(profile)]) == 0
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu" and saved["quota_unit"] == "thread" and saved["target"] == 0.10
    assert set(saved["mape"]) == {"vision", "audio", "projector", "llm"}
    assert saved["within_target"] == {name: value <= 0.10 for name, value in saved["mape"].items()}
    assert Profile.load(profile).module_names == list(saved["mape"])


def test_planner_quality_benchmark_writes_json(tmp_path):
    main = runpy.run_path(str(BENCHMARKS / "planner_quality.py"))["main"]
    out = tmp_path / "planner.json"
    result = main(["--instances", "4", "--sms", "12", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    ratios = saved["comparison"]["ratio_heuristic_over_exhaustive"]
    assert 1.0 - 1e-12 <= ratios["min"] <= ratios["median"] <= ratios["max"]  # exhaustive is the optimum
    assert saved["speed_8_modules_h100"]["seconds_median"] > 0
    assert saved["speed_8_modules_h100"]["plan"]["device"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("model", ["demo", "avlm"])
def test_bench_train_smoke_profiles_plans_and_compares_three_variants(tmp_path, model):
    main = runpy.run_path(str(BENCHMARKS / "bench_train.py"))["main"]
    result = main(["--smoke", "--model", model, "--out", str(tmp_path / "bench.json")])
    assert result["config"]["model"] == model
    assert set(result["samples_per_s"]) == {"temporal", "naive", "mosaic"}
    assert all(v > 0 for v in result["samples_per_s"].values())
    assert result["plan"]["micro_batches"] >= 1 and result["predicted_step_s"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["benchmark"] == "bench_train"
    assert {"mosaic_plan.json", "mosaic_profile.json"} <= {p.name for p in tmp_path.iterdir()}
