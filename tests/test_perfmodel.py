"""The performance model: fit to a profile, held-out accuracy, interpolation, analytic models, JSON."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_mosaic.perfmodel import AnalyticModel, CostModel, PerfModel, cross_val_predict, mape
from lightning_mosaic.profile import MemorySample, ModuleInfo, Profile, Sample
from lightning_mosaic.profiler import quota_grid

SMS = 132
# per module: fixed time, per-sample work, SMs per sample beyond which more SMs stop helping
SHAPES = {"vision": (2e-4, 3e-3, 1.5), "llm": (5e-4, 9e-3, 6.0)}


def truth(module: str, pass_: str, batch: float, quota: float) -> float:
    """A physically shaped time: launch overhead + per-sample work over min(quota, saturation)."""
    fixed, work, per_sample = SHAPES[module]
    scale = 2.0 if pass_ == "backward" else 1.0
    return scale * (fixed + work * batch / min(quota, per_sample * batch) + 1e-5 * batch)


def synthetic_profile(seed: int, batches=(4, 8, 16, 24, 32), quotas=None, noise=0.03) -> Profile:
    rng = np.random.default_rng(seed)
    quotas = quotas or quota_grid(SMS, 8, 8, steps=8)
    samples = [
        Sample(m, p, b, q, truth(m, p, b, q) * (1 + noise * rng.standard_normal()), True, 5, 0.0)
        for m in SHAPES
        for p in ("forward", "backward")
        for b in batches
        for q in quotas
    ]
    memory = [MemorySample(m, b, activation_bytes=1000 + 250 * b) for m in SHAPES for b in batches]
    return Profile(
        fingerprint={"digest": "synthetic", "modules": {}},
        device="synthetic GPU",
        device_type="cuda",
        quota_unit="sm",
        capacity=SMS,
        granularity=[8, 8],
        torch_version="-",
        batch_size=max(batches),
        batch_fractions=[b / max(batches) for b in batches],
        quotas=list(quotas),
        modules=[ModuleInfo(m, 1000, True, True, max(batches)) for m in SHAPES],
        samples=samples,
        memory=memory,
    )


@pytest.mark.parametrize("seed", range(3))
def test_fit_to_noisy_synthetic_profile_is_accurate_held_out_and_between_grid_points(seed):
    model = PerfModel(held_out=True).fit(synthetic_profile(seed))
    scores = model.held_out_mape_
    assert set(scores) == set(SHAPES)
    assert all(value < 0.05 for value in scores.values()), scores  # held-out MAPE under 5% with 3% noise
    # points that are not on the grid: batches and quotas between the measured ones
    errors = {
        (m, p, b, q): abs(model.predict(m, p, b, q) / truth(m, p, b, q) - 1)
        for m in SHAPES
        for p in ("forward", "backward")
        for b in (6, 10, 12, 20, 28)
        for q in (12, 20, 32, 48, 72, 100, 120)
    }
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.05, (worst, errors[worst])


def test_held_out_errors_are_held_out_and_score_is_in_sample():
    profile = synthetic_profile(0)
    model = PerfModel(held_out=True).fit(profile)
    rows = model.held_out_
    assert rows == cross_val_predict(profile, folds=5)
    assert len(rows) == len(profile.samples)
    in_sample = [
        abs(model.predict(r["module"], r["pass"], r["batch"], r["quota"]) / r["measured"] - 1) for r in rows
    ]
    held_out = [r["error"] for r in rows]
    assert np.mean(held_out) > np.mean(in_sample)  # a point predicted without it is predicted worse
    assert model.held_out_mape_["vision"] == pytest.approx(
        np.mean([r["error"] for r in rows if r["module"] == "vision"])
    )
    # score() follows scikit-learn: on the data given, higher is better (the negative MAPE)
    assert model.score(profile) == pytest.approx(-np.mean(in_sample))
    assert model.score(profile) > model.score(synthetic_profile(1, noise=0.2))


def test_noiseless_fit_is_nearly_exact():
    model = PerfModel(held_out=True).fit(synthetic_profile(0, noise=0.0))
    assert max(model.held_out_mape_.values()) < 0.01


def test_single_quota_profile_assumes_inverse_scaling():
    profile = synthetic_profile(0, quotas=[SMS], noise=0.0)
    model = PerfModel().fit(profile)
    full = model.predict("vision", "forward", 20, SMS)  # vision's time is linear in the batch at 132 SMs
    assert full == pytest.approx(truth("vision", "forward", 20, SMS), rel=0.01)
    assert model.predict("vision", "forward", 20, SMS / 4) == pytest.approx(4 * full, rel=1e-6)


def test_memory_is_linear_in_the_batch():
    model = PerfModel().fit(synthetic_profile(0))
    assert model.memory("vision", 8) == 3000
    assert model.memory("vision", 12) == 4000  # between grid points
    profile = synthetic_profile(0)
    profile.memory = [MemorySample("vision", 32, activation_bytes=100, peak_bytes=6400)]
    assert PerfModel().fit(profile).memory("vision", 16) == 3200  # peak bytes win; one point: proportional


def test_host_time_is_a_line_in_the_batch_on_a_gpu_and_the_time_itself_on_a_cpu():
    profile = synthetic_profile(0, noise=0.0)
    for s in profile.samples:
        s.host_seconds = 2e-4 + 1e-5 * s.batch  # issuing costs the same on any number of SMs
    model = PerfModel().fit(profile)
    assert model.predict_host("vision", "forward", 20, 8) == pytest.approx(4e-4, rel=1e-6)
    assert model.predict_host("vision", "forward", 20, 132) == model.predict_host("vision", "forward", 20, 8)
    assert "host time not measured" not in model.describe()
    assert PerfModel.from_dict(model.to_dict()).predict_host("llm", "backward", 6, 64) == pytest.approx(
        2.6e-4
    )
    unmeasured = PerfModel().fit(synthetic_profile(0))  # no host times: kernels assumed issued ahead
    assert unmeasured.predict_host("vision", "forward", 20, 8) == 0.0
    assert "host time not measured (an older profile)" in unmeasured.describe()
    cpu = synthetic_profile(0, noise=0.0)
    cpu.quota_unit = "thread"  # threads: the host runs the work
    threads = PerfModel().fit(cpu)
    assert threads.predict_host("llm", "forward", 8, 40) == threads.predict("llm", "forward", 8, 40)


def test_frozen_module_has_no_backward_time():
    profile = synthetic_profile(0)
    profile.modules[0].backward = False
    profile.samples = [s for s in profile.samples if not (s.module == "vision" and s.pass_ == "backward")]
    model = PerfModel().fit(profile)
    assert model.predict("vision", "backward", 8, 64) == 0.0
    assert model.predict("vision", "forward", 8, 64) > 0


def test_infeasible_points_are_ignored_by_the_fit():
    profile = synthetic_profile(0)
    for s in profile.samples[:5]:
        s.feasible, s.seconds, s.error = False, None, "out of memory"
    model = PerfModel(held_out=True).fit(profile)
    assert len(model.held_out_) == len(profile.samples) - 5


def test_a_module_without_feasible_points_cannot_be_fitted():
    profile = synthetic_profile(0)
    for s in profile.samples:
        if s.module == "llm" and s.pass_ == "backward":
            s.feasible, s.seconds = False, None
    with pytest.raises(ValueError, match="no feasible backward sample of module 'llm'"):
        PerfModel().fit(profile)


def test_save_load_round_trip(tmp_path):
    model = PerfModel(held_out=True).fit(synthetic_profile(1))
    path = tmp_path / "model.json"
    model.save(path)
    loaded = PerfModel.load(path)
    for args in [("vision", "forward", 7, 33), ("llm", "backward", 30, 131)]:
        assert loaded.predict(*args) == model.predict(*args)
    assert loaded.memory("llm", 9) == model.memory("llm", 9)
    assert loaded.held_out_mape_ == model.held_out_mape_
    assert "held-out MAPE" in loaded.describe()
    path.write_text('{"kind": "something else"}')
    with pytest.raises(ValueError, match=f"cannot load performance model {path}: not a saved PerfModel"):
        PerfModel.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"performance model {path} is not valid JSON: .* line 1, column 2"):
        PerfModel.load(path)


def test_the_analytic_model_answers_like_a_fitted_one():
    model = AnalyticModel(
        truth, lambda m, b: 10 * b, modules=list(SHAPES), capacity=SMS, backward={"vision": False}
    )
    fitted = PerfModel().fit(synthetic_profile(0))
    assert isinstance(model, CostModel) and isinstance(fitted, CostModel)  # the planner's one protocol
    assert model.predict("llm", "forward", 8, 66) == truth("llm", "forward", 8, 66)
    assert model.predict("vision", "backward", 8, 66) == 0.0, "no backward pass"
    assert model.memory("vision", 4) == 40
    assert model.calls == {"vision": 1, "llm": 1} and model.backward == {"vision": False, "llm": True}
    assert "analytic" in model.describe()
    with pytest.raises(TypeError, match="must be callables"):
        AnalyticModel(42, modules=["a"], capacity=8)
    with pytest.raises(ValueError, match="needs the module names"):
        AnalyticModel(truth, modules=[], capacity=8)


def test_scikit_learn_conventions():
    from sklearn.exceptions import NotFittedError

    model = PerfModel(folds=3)
    assert model.get_params() == {"folds": 3, "held_out": False}
    with pytest.raises(NotFittedError):
        model.predict("llm", "forward", 4, 8)
    with pytest.raises(NotFittedError):
        _ = model.modules
    assert model.fit(synthetic_profile(0)) is model
    assert model.modules_ == ["vision", "llm"] and model.capacity == model.capacity_ == SMS
    assert not hasattr(model, "held_out_"), "held-out predictions only when asked for"
    with pytest.raises(ValueError, match="folds=1 must be a whole number, at least 2"):
        PerfModel(folds=1).fit(synthetic_profile(0))
    with pytest.raises(TypeError, match="fit\\(\\) takes a Profile, got dict"):
        PerfModel().fit({})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("audio", "forward", 4, 8),
            r"module 'audio' is not in the performance model; it has \['vision', 'llm'\]",
        ),
        (("llm", "sideways", 4, 8), "pass_='sideways' is not one of"),
        (("llm", "forward", 0, 8), "batch=0 must be a positive number of samples"),
        (("llm", "forward", 4, 0), r"quota=0 must be in \(0, 132\] sms"),
        (("llm", "forward", 4, 200), r"quota=200 must be in \(0, 132\]"),
    ],
)
def test_bad_queries(args, message):
    for model in (
        AnalyticModel(truth, modules=list(SHAPES), capacity=SMS),
        PerfModel().fit(synthetic_profile(0)),
    ):
        with pytest.raises(ValueError, match=message):
            model.predict(*args)


def test_mape():
    assert mape([1.1, 0.9], [1.0, 1.0]) == pytest.approx(0.1)
