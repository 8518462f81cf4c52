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


def test_import_time_benchmark_writes_json(tmp_path):
    main = runpy.run_path(str(BENCHMARKS / "import_time.py"))["main"]
    out = tmp_path / "import.json"
    assert main(["--rounds", "1", "--out", str(out)]) in (0, 1)  # 1: a --help above the target
    saved = json.loads(out.read_text())
    results = saved["results"]
    assert set(results) == set(saved["commands"]) and saved["rounds"] == 1
    assert set(saved["help_within_target"]) == {n for n in results if n.endswith("--help")}
    assert all(r["median_s"] > 0 and len(r["runs_s"]) == 1 for r in results.values())
    assert results["import lightning"]["of_import_lightning"] == 1.0


def test_the_proof_writes_one_file_with_every_result(tmp_path):
    main = runpy.run_path(str(BENCHMARKS / "proof.py"))["main"]
    out = tmp_path / "proof.json"
    args = ["--accelerator", "cpu", "--size", "tiny", "--models", "vlm", "--batch-sizes", "4"]
    args += [
        "--rounds",
        "1",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--profile-warmup",
        "1",
        "--profile-seconds",
        "5",
    ]
    document = main([*args, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(document))
    (result,) = document["results"]
    assert result["config"]["model"] == "vlm" and result["config"]["precision"] == "bf16-mixed"
    assert set(result["host_vs_device"]) == set(result["profile"]["fingerprint"]["modules"])
    assert all(t["host_s"] > 0 for passes in result["host_vs_device"].values() for t in passes.values())
    assert document["goals"] == {"measured": False}, "one round: no ratio, so no goal is judged"
    assert set(result["samples_per_s"]) == {"temporal", "naive", "mosaic", "temporal_graphs", "mosaic_eager"}
    graphs = document["graphs"]
    assert [n["precision"] for n in graphs["numerics"]] == ["32-true", "bf16-mixed"]
    assert all(n["allclose"] and n["bitwise_equal"] for n in graphs["numerics"]), "emulated on a CPU: bitwise"
    assert set(graphs["host"]["forward_host_ratio"]) == {"vision", "audio", "projector", "llm"}
    import lightning_mosaic.session
    from lightning_mosaic.engine.graphs import capture_for

    assert lightning_mosaic.session.capture_for is capture_for, "the CPU rehearsal put the capture back"
    skipped = main([*args, "--budget-seconds", "1", "--no-graphs", "--out", str(out)])
    assert skipped["results"][0]["skipped"].startswith("budget: ") and skipped["graphs"] is None


@pytest.mark.parametrize("model", ["demo", "avlm"])
def test_bench_train_smoke_profiles_plans_and_compares_three_variants(tmp_path, model):
    main = runpy.run_path(str(BENCHMARKS / "bench_train.py"))["main"]
    result = main(["--smoke", "--model", model, "--out", str(tmp_path / "bench.json")])
    assert result["config"]["model"] == model
    assert set(result["samples_per_s"]) == {"temporal", "naive", "mosaic"}
    assert all(v > 0 for v in result["samples_per_s"].values())
    assert result["plan"]["micro_batches"] >= 1
    # On a CPU the tiny models' times are noisy: a model too wrong to plan from predicts nothing.
    assert (result["measured_over_predicted"] is None) == (result["predicted_step_s"] is None)
    assert result["smoke"] and result["speedup_vs_temporal"] is None and result["mosaic_over_naive"] is None
    assert json.loads((tmp_path / "bench.json").read_text())["benchmark"] == "bench_train"
    assert {"mosaic_plan.json", "mosaic_profile.json"} <= {p.name for p in tmp_path.iterdir()}


def test_results_table_is_built_from_gpu_results_only(tmp_path):
    main = runpy.run_path(str(BENCHMARKS / "results_table.py"))["main"]
    results = tmp_path / "benchmarks" / "results"
    (results / "run").mkdir(parents=True)
    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- results-table:start -->\nold\n<!-- results-table:end -->\nrest\n")
    assert main(["--results", str(results), "--files", str(page)]) == 0
    assert "not yet measured on GPU" in page.read_text() and page.read_text().endswith("rest\n")
    row = {
        "benchmark": "bench_train",
        "device": "NVIDIA H100 80GB HBM3",
        "torch": "2.11.0",
        "date": "2026-11-27",
        "config": {"model": "avlm", "size": "edge", "batch_size": 8},
        "samples_per_s": {"temporal": 100.0, "naive": 110.0, "mosaic": 130.0},
        "speedup_vs_temporal": {"temporal": 1.0, "naive": 1.1, "mosaic": 1.3},
        "mosaic_over_naive": 130 / 110,
        "bound_speedup": 1.5,
    }
    (results / "run" / "bench.json").write_text(json.dumps(row))
    (results / "cpu.json").write_text(json.dumps({**row, "device": "cpu"}))
    assert main(["--results", str(results), "--files", str(page), "--check"]) == 1
    main(["--results", str(results), "--files", str(page)])
    text = page.read_text()
    assert (
        "| avlm edge, batch 8 | NVIDIA H100 80GB HBM3 | 2.11.0 | 100.0 / 110.0 / 130.0 | 1.30x | 1.18x"
        in text
    )
    assert "not yet measured" not in text and text.count("| avlm") == 1  # the CPU result is left out


def test_committed_results_tables_are_up_to_date():
    main = runpy.run_path(str(BENCHMARKS / "results_table.py"))["main"]
    assert main(["--check"]) == 0, "run python benchmarks/results_table.py"
