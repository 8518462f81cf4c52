"""Performance model: a unit's time under any (batch, quota), and its memory, fitted to a profile.

Per unit and pass, time is a non-negative combination of physically shaped features of the batch
``b`` and the quota ``q`` (SMs or threads):

- ``constant``: launch overheads, work that does not depend on either;
- ``batch``: per-sample work that does not speed up with more SMs (host-side work, syncs);
- ``1/quota``: fixed work (weights, reductions) spread over the quota;
- ``batch/quota``: per-sample work spread over the quota — the main term;
- ``saturation``: ``b / min(q, s * b)``: per-sample work that can only use ``s`` SMs per sample,
  so beyond ``s * b`` SMs more quota stops helping (small batches cannot fill the GPU).

The fit is scikit-learn's ``LinearRegression(positive=True)`` weighted by ``1 / time^2`` (relative
error, the error that matters for plans). Three forms compete per curve — only the ``1/quota``
terms, all but saturation, all five — and cross-validation picks the simplest within 2% of the
best, so few or noisy points get a simple curve; the saturation ``s`` is the least-squares best on
a geometric grid, refined by a bounded search. With a single quota measured (no green contexts)
only the ``1/quota`` form is possible: time is assumed to scale inversely with the quota.

:meth:`PerfModel.score` is the mean absolute percentage error on held-out grid points: each point
is predicted by a model fitted without it (K-fold), the choice of form and saturation included.
Memory is ``a + c * b`` bytes per unit.

:meth:`PerfModel.from_function` wraps analytic functions in the same interface, for tests and
what-if planning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_mosaic._files import write_text
from lightning_mosaic.profile import PASSES, QUOTA_UNITS, Profile

FEATURES = ("constant", "batch", "1/quota", "batch/quota", "saturation")
_FORMS = {  # feature columns of each form of curve, simplest first
    "inverse": (2, 3),  # time inversely proportional to the quota
    "linear": (0, 1, 2, 3),
    "saturating": (0, 1, 2, 3, 4),
}
SCHEMA_VERSION = 1
TimeFn = Callable[[str, str, float, float], float]
MemoryFn = Callable[[str, float], float]


@dataclass
class Curve:
    """Fitted time of one unit's pass: ``seconds = sum(coef[i] * FEATURES[i](batch, quota))``."""

    coef: list[float]
    saturation: float | None  # quota per sample beyond which more quota stops helping; None: unused

    def predict(self, batch: Any, quota: Any) -> Any:
        return features(batch, quota, self.saturation) @ np.asarray(self.coef)


def features(batch: Any, quota: Any, saturation: float | None) -> np.ndarray:
    """The feature matrix (n x 5, in :data:`FEATURES` order) of batch and quota arrays."""
    b = np.atleast_1d(np.asarray(batch, dtype=float))
    q = np.atleast_1d(np.asarray(quota, dtype=float))
    b, q = np.broadcast_arrays(b, q)
    sat = b / np.minimum(q, saturation * b) if saturation else np.zeros_like(b)
    return np.stack([np.ones_like(b), b, 1.0 / q, b / q, sat], axis=1)


class PerfModel:
    """Predicts seconds per (unit, pass, batch, quota) and bytes per (unit, batch).

    Fit one with ``PerfModel().fit(profile)``; ``folds`` is the K of the cross-validation behind
    :meth:`score`.
    """

    def __init__(self, folds: int = 5) -> None:
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ValueError(f"folds={folds!r} must be a whole number, at least 2")
        self.folds = folds
        self.modules: list[str] = []
        self.capacity = 0
        self.quota_unit = "sm"
        self.device = ""
        self.curves: dict[str, dict[str, Curve]] = {}
        self.memory_coef: dict[str, list[float]] = {}
        self.backward: dict[str, bool] = {}
        self.calls: dict[str, int] = {}
        self.profile: Profile | None = None
        self._scores: dict[str, float] | None = None
        self._held_out: list[dict[str, Any]] | None = None
        self._time_fn: TimeFn | None = None
        self._memory_fn: MemoryFn | None = None

    # ------------------------------------------------------------------ building

    def fit(self, profile: Profile) -> PerfModel:
        """Fit a time curve per unit and pass and a memory line per unit; returns ``self``."""
        if not isinstance(profile, Profile):
            raise TypeError(f"fit() takes a Profile, got {type(profile).__name__}")
        self.profile = profile
        self.modules = profile.module_names
        self.capacity, self.quota_unit, self.device = profile.capacity, profile.quota_unit, profile.device
        self.curves, self.memory_coef = {}, {}
        self.backward = {m.name: m.backward for m in profile.modules}
        self.calls = {m.name: m.calls for m in profile.modules}
        self._scores = self._held_out = None
        for name in self.modules:
            self.curves[name] = {}
            for pass_ in self._passes(name):
                b, q, y = _arrays(profile, name, pass_)
                if len(y) == 0:
                    raise ValueError(
                        f"the profile has no feasible {pass_} sample of module {name!r}; cannot fit it"
                    )
                self.curves[name][pass_] = self._fit_curve(b, q, y)
            self.memory_coef[name] = _fit_memory(profile, name)
        return self

    @classmethod
    def from_function(
        cls,
        time_fn: TimeFn,
        memory_fn: MemoryFn | None = None,
        *,
        modules: Sequence[str],
        capacity: int,
        quota_unit: str = "sm",
        device: str = "analytic",
        backward: dict[str, bool] | None = None,
    ) -> PerfModel:
        """An analytic model: ``time_fn(module, pass_, batch, quota)`` seconds and
        ``memory_fn(module, batch)`` bytes."""
        if not callable(time_fn) or (memory_fn is not None and not callable(memory_fn)):
            raise TypeError("time_fn (and memory_fn, when given) must be callables")
        if quota_unit not in QUOTA_UNITS:
            raise ValueError(f"quota_unit={quota_unit!r} is not one of {QUOTA_UNITS}")
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} must be a positive whole number of {quota_unit}s")
        model = cls()
        model.modules = list(modules)
        if not model.modules:
            raise ValueError("from_function needs the module names (`modules=`)")
        model.capacity, model.quota_unit, model.device = capacity, quota_unit, device
        model.backward = {m: True for m in model.modules} | dict(backward or {})
        model.calls = {m: 1 for m in model.modules}
        model._time_fn, model._memory_fn = time_fn, memory_fn
        return model

    # ------------------------------------------------------------------ predicting

    def predict(self, module: str, pass_: str, batch: float, quota: float) -> float:
        """Seconds of one ``pass_`` (``"forward"`` / ``"backward"``) of ``module`` on ``batch``
        samples under ``quota`` SMs or threads."""
        self._check(module, batch)
        if pass_ not in PASSES:
            raise ValueError(f"pass_={pass_!r} is not one of {PASSES}")
        if not (isinstance(quota, (int, float)) and 0 < quota <= self.capacity):
            raise ValueError(f"quota={quota!r} must be in (0, {self.capacity}] {self.quota_unit}s")
        if pass_ == "backward" and not self.backward.get(module, True):
            return 0.0  # a frozen unit with no grad-requiring input has no backward pass
        if self._time_fn is not None:
            return float(self._time_fn(module, pass_, batch, quota))
        return max(float(self.curves[module][pass_].predict(batch, quota)[0]), 1e-9)

    def memory(self, module: str, batch: float) -> int:
        """Bytes ``module`` needs for one forward + backward on ``batch`` samples (peak on GPU, saved
        activations on CPU)."""
        self._check(module, batch)
        if self._time_fn is not None:
            return int(self._memory_fn(module, batch)) if self._memory_fn else 0
        a, c = self.memory_coef[module]
        return round(a + c * batch)

    def _check(self, module: str, batch: float) -> None:
        if module not in self.modules:
            raise ValueError(f"module {module!r} is not in the performance model; it has {self.modules}")
        if not (isinstance(batch, (int, float)) and batch > 0):
            raise ValueError(f"batch={batch!r} must be a positive number of samples")

    def _passes(self, module: str) -> tuple[str, ...]:
        return PASSES if self.backward.get(module, True) else ("forward",)

    # ------------------------------------------------------------------ accuracy

    def score(self) -> dict[str, float]:
        """Held-out mean absolute percentage error per unit (a fraction: 0.03 is 3%), both passes together."""
        if self._scores is None:
            rows = self.held_out()
            self._scores = {
                m: float(np.mean([r["error"] for r in rows if r["module"] == m]))
                for m in self.modules
                if any(r["module"] == m for r in rows)
            }
        return dict(self._scores)

    def held_out(self) -> list[dict[str, Any]]:
        """Every feasible grid point with its measured time and the time predicted without it."""
        if self._held_out is not None:
            return list(self._held_out)
        if self.profile is None:
            if self._time_fn is not None:
                raise ValueError("an analytic model (from_function) has no measured points to score")
            raise ValueError(
                "this model was loaded without its profile; score() needs the profile it was fit on"
            )
        rows = []
        for name in self.modules:
            for pass_ in self._passes(name):
                b, q, y = _arrays(self.profile, name, pass_)
                predicted = self._cross_predict(b, q, y)
                for bi, qi, yi, pi in zip(b, q, y, predicted, strict=True):
                    rows.append(
                        {
                            "module": name,
                            "pass": pass_,
                            "batch": int(bi),
                            "quota": int(qi),
                            "measured": float(yi),
                            "predicted": float(pi),
                            "error": abs(float(pi) - float(yi)) / float(yi),
                        }
                    )
        self._held_out = rows
        return list(rows)

    # ------------------------------------------------------------------ fitting internals

    def _fit_curve(self, b: np.ndarray, q: np.ndarray, y: np.ndarray) -> Curve:
        """Choose a form by cross-validated relative error (the simplest within 2% of the best), fit it.

        Forms, simplest first: ``inverse`` (only the ``1/quota`` terms; the only one a single
        measured quota supports), ``linear`` (all but saturation), ``saturating`` (all five, the
        saturation estimated on the training points). Few points favour the simple forms: a
        flexible one fitted to four points predicts the fifth badly, and the cross-validation sees it.
        """
        forms = [_FORMS["inverse"]]
        if len(np.unique(q)) > 1 and len(y) >= 4:
            forms += [_FORMS["linear"], _FORMS["saturating"]]
        columns = forms[0]
        if len(forms) > 1:
            errors = [self._form_error(b, q, y, form) for form in forms]
            columns = next(f for f, e in zip(forms, errors, strict=True) if e <= min(errors) * 1.02)
        saturation = _best_saturation(b, q, y, self.capacity) if 4 in columns else None
        return _solve(b, q, y, columns, saturation)

    def _form_error(self, b: np.ndarray, q: np.ndarray, y: np.ndarray, columns: tuple[int, ...]) -> float:
        errors = []
        for train, test in _folds(len(y), self.folds):
            bt, qt, yt = b[train], q[train], y[train]
            saturation = _best_saturation(bt, qt, yt, self.capacity) if 4 in columns else None
            coef, _ = _nnls(bt, qt, yt, columns, saturation)
            predicted = features(b[test], q[test], saturation) @ coef
            errors.extend(np.abs(predicted - y[test]) / y[test])
        return float(np.mean(errors))

    def _cross_predict(self, b: np.ndarray, q: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.full_like(y, np.nan)  # a lone point cannot be held out
        if len(y) < 2:
            return out
        for train, test in _folds(len(y), self.folds):
            out[test] = self._fit_curve(b[train], q[train], y[train]).predict(b[test], q[test])
        return out

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        if self._time_fn is not None:
            raise TypeError(
                "an analytic PerfModel (from_function) holds Python functions and cannot be saved"
            )
        scores = self.score() if self.profile is not None else self._scores
        return {
            "kind": "lightning_mosaic.PerfModel",
            "schema_version": SCHEMA_VERSION,
            "features": list(FEATURES),
            "device": self.device,
            "quota_unit": self.quota_unit,
            "capacity": self.capacity,
            "modules": self.modules,
            "backward": self.backward,
            "calls": self.calls,
            "curves": {
                m: {p: {"coef": c.coef, "saturation": c.saturation} for p, c in passes.items()}
                for m, passes in self.curves.items()
            },
            "memory": self.memory_coef,
            "scores": scores,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerfModel:
        if not isinstance(data, dict) or data.get("kind") != "lightning_mosaic.PerfModel":
            raise ValueError("not a saved PerfModel (no 'kind': 'lightning_mosaic.PerfModel')")
        if data.get("schema_version") != SCHEMA_VERSION or data.get("features") != list(FEATURES):
            raise ValueError(
                f"saved PerfModel has schema_version {data.get('schema_version')!r} and features"
                f" {data.get('features')!r}; this version reads {SCHEMA_VERSION} with {list(FEATURES)}"
            )
        model = cls()
        try:
            model.device, model.quota_unit, model.capacity = (
                data["device"],
                data["quota_unit"],
                data["capacity"],
            )
            model.modules, model.backward, model.calls = data["modules"], data["backward"], data["calls"]
            model.curves = {
                m: {p: Curve(list(c["coef"]), c["saturation"]) for p, c in passes.items()}
                for m, passes in data["curves"].items()
            }
            model.memory_coef = {m: list(v) for m, v in data["memory"].items()}
        except (KeyError, TypeError) as err:
            raise ValueError(f"saved PerfModel is missing or has a malformed field: {err}") from err
        model._scores = data.get("scores")
        return model

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PerfModel:
        path = os.fspath(path)
        try:
            with open(path) as f:
                data = json.load(f)
            return cls.from_dict(data)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load performance model {path}: {err}") from err

    def describe(self) -> str:
        unit = "SMs" if self.quota_unit == "sm" else "threads"
        if self._time_fn is not None:
            return f"analytic performance model of {self.modules} ({self.capacity} {unit})"
        scores = self._scores or {}
        lines = [
            f"performance model of {len(self.modules)} modules on {self.device} ({self.capacity} {unit})"
        ]
        for name in self.modules:
            mape = f"held-out MAPE {scores[name]:.1%}" if name in scores else "not scored"
            terms = []
            for pass_, curve in self.curves[name].items():
                sat = f", saturates at {curve.saturation:.3g} {unit}/sample" if curve.saturation else ""
                terms.append(f"{pass_}{sat}")
            lines.append(f"  {name}: {mape}; {'; '.join(terms)}")
        return "\n".join(lines)


def _arrays(profile: Profile, module: str, pass_: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    samples = profile.samples_of(module, pass_)
    b = np.array([s.batch for s in samples], dtype=float)
    q = np.array([s.quota for s in samples], dtype=float)
    y = np.array([s.seconds for s in samples], dtype=float)
    return b, q, y


def _solve(
    b: np.ndarray, q: np.ndarray, y: np.ndarray, columns: tuple[int, ...], saturation: float | None
) -> Curve:
    from sklearn.linear_model import LinearRegression

    x = features(b, q, saturation)[:, list(columns)]
    reg = LinearRegression(fit_intercept=False, positive=True)
    reg.fit(x, y, sample_weight=1.0 / np.maximum(y, 1e-12) ** 2)
    coef = [0.0] * len(FEATURES)
    for column, value in zip(columns, reg.coef_, strict=True):
        coef[column] = float(value)
    return Curve(coef, saturation)


def _nnls(
    b: np.ndarray, q: np.ndarray, y: np.ndarray, columns: tuple[int, ...], saturation: float | None
) -> tuple[np.ndarray, float]:
    """Coefficients (all five, zeros outside ``columns``) and relative squared error of the
    non-negative least-squares fit: scipy's NNLS, the solver behind scikit-learn's
    ``positive=True``, called directly because model selection runs it many times."""
    from scipy.optimize import nnls

    x = features(b, q, saturation)
    found, residual = nnls(x[:, list(columns)] / y[:, None], np.ones_like(y))
    coef = np.zeros(len(FEATURES))
    coef[list(columns)] = found
    return coef, float(residual**2)


def _best_saturation(b: np.ndarray, q: np.ndarray, y: np.ndarray, capacity: int) -> float:
    """The saturation (quota per sample) of the best saturating fit: a geometric grid from 1/64 of
    the device to twice it at the largest batch, refined between the best point's neighbours."""
    from scipy.optimize import minimize_scalar

    columns = _FORMS["saturating"]
    grid = capacity * np.geomspace(1 / 64, 2.0, 22) / float(np.max(b))
    errors = [_nnls(b, q, y, columns, float(s))[1] for s in grid]
    i = int(np.argmin(errors))
    low, high = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    found = minimize_scalar(
        lambda log_s: _nnls(b, q, y, columns, math.exp(log_s))[1],
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-3},
    )
    return math.exp(float(found.x)) if found.fun < errors[i] else float(grid[i])


def _folds(n: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits of ``n`` points, shuffled with a fixed seed (each point held out exactly once)."""
    order = np.random.default_rng(0).permutation(n)
    k = min(k, n)
    out = []
    for i in range(k):
        test = np.sort(order[i::k])
        train = np.setdiff1d(np.arange(n), test)
        out.append((train, test))
    return out


def _fit_memory(profile: Profile, module: str) -> list[float]:
    points = [
        (m.batch, m.peak_bytes if m.peak_bytes is not None else m.activation_bytes)
        for m in profile.memory
        if m.module == module and m.feasible
    ]
    points = [(b, v) for b, v in points if v is not None]
    if not points:
        return [0.0, 0.0]
    batches = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    if len(np.unique(batches)) == 1:
        return [0.0, float(values.mean() / batches[0])]
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression(positive=True).fit(batches[:, None], values)
    return [max(0.0, float(reg.intercept_)), float(reg.coef_[0])]


def mape(predicted: Any, measured: Any) -> float:
    """Mean absolute percentage error (a fraction) of ``predicted`` against ``measured``."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p - m) / m)) if len(m) else math.nan
