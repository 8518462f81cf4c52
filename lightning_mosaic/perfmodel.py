"""Performance models: a unit's time under any (batch, quota), and its memory.

:class:`PerfModel` is fitted to a profile with scikit-learn's conventions (``fit`` returns the
model, fitted state ends in ``_``, an unfitted model raises ``NotFittedError``). Per unit and pass,
time is a non-negative combination of physically shaped features of the batch ``b`` and the quota
``q`` (SMs or threads):

- ``constant``: launch overheads, work that does not depend on either;
- ``batch``: per-sample work that does not speed up with more SMs (host-side work, syncs);
- ``1/quota``: fixed work (weights, reductions) spread over the quota;
- ``batch/quota``: per-sample work spread over the quota — the main term;
- ``saturation``: ``b / min(q, s * b)``: per-sample work that can only use ``s`` SMs per sample,
  so beyond ``s * b`` SMs more quota stops helping (small batches cannot fill the GPU).

The fit is scikit-learn's ``LinearRegression(positive=True)`` weighted by ``1 / time^2`` (relative
error, the error that matters for plans). Three forms compete per curve — only the ``1/quota``
terms, all but saturation, all five — and cross-validation (``sklearn.model_selection.KFold``)
picks the simplest within 2% of the best, so few or noisy points get a simple curve; the saturation
``s`` is the least-squares best on a geometric grid, refined by a bounded search. With a single
quota measured (no green contexts) only the ``1/quota`` form is possible: time is assumed to scale
inversely with the quota. Memory is ``a + c * b`` bytes per unit.

Host time — what the one Python thread takes to issue a pass's kernels — is ``a + c * b`` seconds
per unit and pass on a GPU, whatever the quota (:meth:`PerfModel.predict_host`); on a CPU the thread
that issues an operation runs it, so host time is the time itself. A profile without host times (an
older one) predicts none, as if kernels were always issued ahead of the device.

Accuracy: :meth:`PerfModel.score` is the negative mean absolute percentage error on a profile's
points (higher is better, as scikit-learn scores are); :func:`cross_val_predict` predicts every
point of a profile by a model fitted without it (K-fold, the choice of form and saturation
included), and ``PerfModel(held_out=True)`` keeps those rows and the held-out MAPE per unit.

:class:`AnalyticModel` answers the same questions from functions, for tests and what-if planning.
Both follow :class:`CostModel`, which is all the simulator and the planner use.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator

from lightning_mosaic._files import read_json, write_text
from lightning_mosaic.devices import QUOTA_UNITS, unit_label
from lightning_mosaic.profile import PASSES, Profile

if TYPE_CHECKING:
    from lightning_mosaic.graph import ModuleGraph

FEATURES = ("constant", "batch", "1/quota", "batch/quota", "saturation")
_FORMS = {  # feature columns of each form of curve, simplest first
    "inverse": (2, 3),  # time inversely proportional to the quota
    "linear": (0, 1, 2, 3),
    "saturating": (0, 1, 2, 3, 4),
}
SCHEMA_VERSION = 1
MAX_MAPE = 0.25  # a unit on the critical path predicted worse than this (held out) is not planned from
TimeFn = Callable[[str, str, float, float], float]
MemoryFn = Callable[[str, float], float]


@runtime_checkable
class CostModel(Protocol):
    """What the simulator and the planner ask of a performance model: seconds and bytes per unit."""

    @property
    def modules(self) -> list[str]: ...

    @property
    def capacity(self) -> int: ...  # SMs or threads of the whole device

    @property
    def backward(self) -> Mapping[str, bool]: ...  # unit -> has a backward pass

    @property
    def calls(self) -> Mapping[str, int]: ...  # unit -> calls per step

    def predict(self, module: str, pass_: str, batch: float, quota: float) -> float: ...  # device seconds

    def predict_host(self, module: str, pass_: str, batch: float, quota: float) -> float: ...  # issuing

    def memory(self, module: str, batch: float) -> int: ...


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


class PerfModel(BaseEstimator):
    """Seconds per (unit, pass, batch, quota) and bytes per (unit, batch), fitted to a profile.

    Args:
        folds: the K of the K-fold cross-validation that chooses each curve's form (and of the
            held-out predictions).
        held_out: also predict every profiled point from a model fitted without it when fitting,
            kept as ``held_out_`` (rows) and ``held_out_mape_`` (MAPE per unit); costs a few fits
            more per curve.

    Fitted attributes: ``modules_``, ``capacity_``, ``quota_unit_``, ``device_``, ``backward_``,
    ``calls_``, ``curves_``, ``host_coef_`` (None where the profile has no host times),
    ``memory_coef_``, ``graphed_`` (unit -> pass -> ``[device ratio, host seconds]`` of its CUDA
    graphs' replays, where the profile timed them: :meth:`graph_cost`) (and ``held_out_``,
    ``held_out_mape_``). The
    :class:`CostModel` properties (``modules``, ``capacity``, ``backward``, ``calls``) read them.
    """

    def __init__(self, folds: int = 5, held_out: bool = False) -> None:
        self.folds = folds
        self.held_out = held_out

    # ------------------------------------------------------------------ fitting

    def fit(self, profile: Profile) -> PerfModel:
        """Fit a time curve per unit and pass and a memory line per unit; returns ``self``."""
        if not isinstance(profile, Profile):
            raise TypeError(f"fit() takes a Profile, got {type(profile).__name__}")
        folds = _check_folds(self.folds)
        self.modules_ = profile.module_names
        self.capacity_, self.quota_unit_, self.device_ = profile.capacity, profile.quota_unit, profile.device
        self.backward_ = {m.name: m.backward for m in profile.modules}
        self.calls_ = {m.name: m.calls for m in profile.modules}
        self.curves_: dict[str, dict[str, Curve]] = {}
        self.host_coef_: dict[str, dict[str, list[float] | None]] = {}
        self.memory_coef_: dict[str, list[float]] = {}
        for name in self.modules_:
            self.curves_[name], self.host_coef_[name] = {}, {}
            for pass_ in _passes(self.backward_, name):
                b, q, y = _arrays(profile, name, pass_)
                if len(y) == 0:
                    raise ValueError(
                        f"the profile has no feasible {pass_} sample of module {name!r}; cannot fit it"
                    )
                self.curves_[name][pass_] = _fit_curve(b, q, y, folds, self.capacity_)
                self.host_coef_[name][pass_] = _fit_host(profile, name, pass_)
            self.memory_coef_[name] = _fit_memory(profile, name)
        self.graphed_ = _graph_costs(profile)
        if self.held_out:
            self.held_out_ = cross_val_predict(profile, folds)
            self.held_out_mape_ = _mape_by_module(self.held_out_, self.modules_)
        return self

    # ------------------------------------------------------------------ the CostModel interface

    @property
    def modules(self) -> list[str]:
        _check_fitted(self)
        return self.modules_

    @property
    def capacity(self) -> int:
        _check_fitted(self)
        return self.capacity_

    @property
    def quota_unit(self) -> str:
        _check_fitted(self)
        return self.quota_unit_

    @property
    def backward(self) -> Mapping[str, bool]:
        _check_fitted(self)
        return self.backward_

    @property
    def calls(self) -> Mapping[str, int]:
        _check_fitted(self)
        return self.calls_

    def predict(self, module: str, pass_: str, batch: float, quota: float) -> float:
        """Seconds of one ``pass_`` (``"forward"`` / ``"backward"``) of ``module`` on ``batch``
        samples under ``quota`` SMs or threads."""
        _check_fitted(self)
        if not _check_query(self, module, pass_, batch, quota):
            return 0.0  # a frozen unit with no grad-requiring input has no backward pass
        return max(float(self.curves_[module][pass_].predict(batch, quota)[0]), 1e-9)

    def predict_host(self, module: str, pass_: str, batch: float, quota: float) -> float:
        """Seconds the calling thread takes to issue one ``pass_`` of ``module`` on ``batch`` samples
        (on a CPU, to run it: :meth:`predict`); 0 where the profile measured no host time."""
        _check_fitted(self)
        if self.quota_unit_ == "thread":
            return self.predict(module, pass_, batch, quota)
        if not _check_query(self, module, pass_, batch, quota):
            return 0.0
        coef = self.host_coef_.get(module, {}).get(pass_)
        return max(coef[0] + coef[1] * batch, 0.0) if coef is not None else 0.0

    def graph_cost(self, module: str, pass_: str) -> tuple[float, float] | None:
        """What the profile measured of ``module``'s ``pass_`` replayed as a CUDA graph at the full
        batch on the whole device: (graphed device time over eager device time, host seconds per
        replay); None where it was not measured."""
        _check_fitted(self)
        cost = getattr(self, "graphed_", {}).get(module, {}).get(pass_)
        return (cost[0], cost[1]) if cost is not None else None

    def memory(self, module: str, batch: float) -> int:
        """Bytes ``module`` needs for one forward + backward on ``batch`` samples (peak on GPU, saved
        activations on CPU)."""
        _check_fitted(self)
        _check_unit(self, module, batch)
        a, c = self.memory_coef_[module]
        return round(a + c * batch)

    # ------------------------------------------------------------------ accuracy

    def score(self, profile: Profile) -> float:
        """The negative mean absolute percentage error of the model on ``profile``'s feasible points.

        Higher is better, as scikit-learn scores are (0.0 is perfect); in-sample on the profile the
        model was fitted to. For held-out accuracy see :func:`cross_val_predict` and ``held_out=True``.
        """
        _check_fitted(self)
        rows = [
            (self.predict(s.module, s.pass_, s.batch, s.quota), s.seconds)
            for s in profile.samples
            if s.feasible and s.module in self.modules_ and s.pass_ in _passes(self.backward_, s.module)
        ]
        if not rows:
            raise ValueError("the profile has no feasible point of this model's modules to score")
        predicted, measured = zip(*rows, strict=True)
        return -mape(predicted, measured)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        _check_fitted(self)
        return {
            "kind": "lightning_mosaic.PerfModel",
            "schema_version": SCHEMA_VERSION,
            "features": list(FEATURES),
            "folds": self.folds,
            "device": self.device_,
            "quota_unit": self.quota_unit_,
            "capacity": self.capacity_,
            "modules": self.modules_,
            "backward": self.backward_,
            "calls": self.calls_,
            "curves": {
                m: {p: {"coef": c.coef, "saturation": c.saturation} for p, c in passes.items()}
                for m, passes in self.curves_.items()
            },
            "host": self.host_coef_,
            "graphed": getattr(self, "graphed_", {}),
            "memory": self.memory_coef_,
            "scores": getattr(self, "held_out_mape_", None),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerfModel:
        """A fitted model from :meth:`to_dict` data (its held-out rows are not saved; the MAPE is)."""
        if not isinstance(data, dict) or data.get("kind") != "lightning_mosaic.PerfModel":
            raise ValueError("not a saved PerfModel (no 'kind': 'lightning_mosaic.PerfModel')")
        if data.get("schema_version") != SCHEMA_VERSION or data.get("features") != list(FEATURES):
            raise ValueError(
                f"saved PerfModel has schema_version {data.get('schema_version')!r} and features"
                f" {data.get('features')!r}; this version reads {SCHEMA_VERSION} with {list(FEATURES)}"
            )
        model = cls(folds=data.get("folds", 5))
        try:
            model.device_, model.quota_unit_, model.capacity_ = (
                data["device"],
                data["quota_unit"],
                data["capacity"],
            )
            model.modules_, model.backward_, model.calls_ = data["modules"], data["backward"], data["calls"]
            model.curves_ = {
                m: {p: Curve(list(c["coef"]), c["saturation"]) for p, c in passes.items()}
                for m, passes in data["curves"].items()
            }
            model.memory_coef_ = {m: list(v) for m, v in data["memory"].items()}
            model.host_coef_ = {
                m: {p: list(c) if c is not None else None for p, c in passes.items()}
                for m, passes in data.get("host", {}).items()
            }
            model.graphed_ = {
                m: {p: [float(c[0]), float(c[1])] for p, c in passes.items()}
                for m, passes in data.get("graphed", {}).items()
            }
        except (KeyError, TypeError) as err:
            raise ValueError(f"saved PerfModel is missing or has a malformed field: {err}") from err
        if data.get("scores") is not None:
            model.held_out_mape_ = dict(data["scores"])
        return model

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PerfModel:
        path = os.fspath(path)
        data = read_json(path, "performance model")  # a FormatError (a ValueError) names the file
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"cannot load performance model {path}: {err}") from err

    def describe(self) -> str:
        _check_fitted(self)
        unit = unit_label(self.quota_unit_)
        scores = getattr(self, "held_out_mape_", {})
        lines = [
            f"performance model of {len(self.modules_)} modules on {self.device_} ({self.capacity_} {unit})"
        ]
        measured_host = any(c is not None for passes in self.host_coef_.values() for c in passes.values())
        if self.quota_unit_ == "sm" and not measured_host:
            lines.append("  host time not measured (an older profile): kernels assumed issued ahead")
        for name in self.modules_:
            mape_text = f"held-out MAPE {scores[name]:.1%}" if name in scores else "not scored"
            terms = []
            for pass_, curve in self.curves_[name].items():
                sat = f", saturates at {curve.saturation:.3g} {unit}/sample" if curve.saturation else ""
                graph = self.graph_cost(name, pass_)
                if graph is not None:
                    sat += f", as a CUDA graph x{graph[0]:.2f} device time, {graph[1] * 1e6:.0f} us host"
                terms.append(f"{pass_}{sat}")
            lines.append(f"  {name}: {mape_text}; {'; '.join(terms)}")
        return "\n".join(lines)


class AnalyticModel:
    """Seconds and bytes from functions, with the :class:`CostModel` interface: tests and what-ifs.

    ``time_fn(module, pass_, batch, quota)`` gives device seconds, ``host_fn`` (same arguments)
    the seconds to issue the pass (0 when not given: kernels issued ahead), ``memory_fn(module,
    batch)`` bytes (0 when not given). ``backward`` marks units without a backward pass
    (``False``), ``calls`` the calls per step (default 1).
    """

    def __init__(
        self,
        time_fn: TimeFn,
        memory_fn: MemoryFn | None = None,
        *,
        modules: Sequence[str],
        capacity: int,
        quota_unit: str = "sm",
        device: str = "analytic",
        backward: Mapping[str, bool] | None = None,
        calls: Mapping[str, int] | None = None,
        host_fn: TimeFn | None = None,
    ) -> None:
        if any(f is not None and not callable(f) for f in (time_fn, memory_fn, host_fn)) or time_fn is None:
            raise TypeError("time_fn (and memory_fn, host_fn, when given) must be callables")
        if quota_unit not in QUOTA_UNITS:
            raise ValueError(f"quota_unit={quota_unit!r} is not one of {QUOTA_UNITS}")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} must be a positive whole number of {quota_unit}s")
        self.modules = list(modules)
        if not self.modules:
            raise ValueError("an AnalyticModel needs the module names (`modules=`)")
        self.capacity, self.quota_unit, self.device = capacity, quota_unit, device
        self.backward = {m: True for m in self.modules} | dict(backward or {})
        self.calls = {m: 1 for m in self.modules} | dict(calls or {})
        self.time_fn, self.memory_fn, self.host_fn = time_fn, memory_fn, host_fn

    def predict(self, module: str, pass_: str, batch: float, quota: float) -> float:
        """Seconds of one pass, from ``time_fn`` (0 for the backward of a unit without one)."""
        if not _check_query(self, module, pass_, batch, quota):
            return 0.0
        return float(self.time_fn(module, pass_, batch, quota))

    def predict_host(self, module: str, pass_: str, batch: float, quota: float) -> float:
        """Seconds to issue one pass, from ``host_fn`` (0 without one)."""
        if not _check_query(self, module, pass_, batch, quota) or self.host_fn is None:
            return 0.0
        return float(self.host_fn(module, pass_, batch, quota))

    def memory(self, module: str, batch: float) -> int:
        """Bytes from ``memory_fn`` (0 without one)."""
        _check_unit(self, module, batch)
        return int(self.memory_fn(module, batch)) if self.memory_fn else 0

    def describe(self) -> str:
        return f"analytic performance model of {self.modules} ({self.capacity} {unit_label(self.quota_unit)})"


def cross_val_predict(profile: Profile, folds: int = 5) -> list[dict[str, Any]]:
    """Every feasible point of ``profile`` with its measured time and the time predicted without it.

    Each unit's curve is fitted K times (``sklearn.model_selection.KFold``), each time without one
    fold, choosing its form and saturation on the rest, and predicts the fold held out. A curve with
    a single point has no held-out prediction (NaN).
    """
    folds = _check_folds(folds)
    rows = []
    backward = {m.name: m.backward for m in profile.modules}
    for name in profile.module_names:
        for pass_ in _passes(backward, name):
            b, q, y = _arrays(profile, name, pass_)
            predicted = np.full_like(y, np.nan)
            if len(y) >= 2:
                for train, test in _folds(len(y), folds):
                    curve = _fit_curve(b[train], q[train], y[train], folds, profile.capacity)
                    predicted[test] = curve.predict(b[test], q[test])
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
    return rows


def critical_units(model: CostModel, graph: ModuleGraph, batch_size: int) -> list[str]:
    """``graph``'s critical path, each unit weighted by its time alone on the whole device."""
    weights = {
        m: sum(model.predict(m, p, batch_size, model.capacity) for p in PASSES) * model.calls.get(m, 1)
        for m in graph.modules
        if m in model.modules
    }
    return graph.critical_path(weights)


def too_wrong(
    model: PerfModel, graph: ModuleGraph, batch_size: int, limit: float = MAX_MAPE
) -> dict[str, float]:
    """The units on the critical path (:func:`critical_units`) whose held-out MAPE is above
    ``limit``: a plan made from such a model is not to be trusted.

    Empty when the model was fitted without held-out predictions (nothing to judge by).
    """
    scores = getattr(model, "held_out_mape_", None) or {}
    return {m: scores[m] for m in critical_units(model, graph, batch_size) if scores.get(m, 0.0) > limit}


def _mape_by_module(rows: list[dict[str, Any]], modules: Sequence[str]) -> dict[str, float]:
    """The mean held-out error per unit (units whose points have no held-out prediction are left out)."""
    out = {}
    for name in modules:
        errors = [r["error"] for r in rows if r["module"] == name and not math.isnan(r["error"])]
        if errors:
            out[name] = float(np.mean(errors))
    return out


# ---------------------------------------------------------------------- checks


def _check_fitted(model: PerfModel) -> None:
    """``NotFittedError`` (scikit-learn's) unless ``model`` was fitted or loaded."""
    if not hasattr(model, "curves_"):  # the cheap test first: this runs on every query
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(model, "curves_")


def _check_folds(folds: Any) -> int:
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"folds={folds!r} must be a whole number, at least 2")
    return folds


def _check_unit(model: Any, module: str, batch: float) -> None:
    if module not in model.modules:
        raise ValueError(f"module {module!r} is not in the performance model; it has {model.modules}")
    if not (isinstance(batch, (int, float)) and batch > 0):
        raise ValueError(f"batch={batch!r} must be a positive number of samples")


def _check_query(model: Any, module: str, pass_: str, batch: float, quota: float) -> bool:
    """Validate a time query; False when the pass does not exist (a unit without backward)."""
    _check_unit(model, module, batch)
    if pass_ not in PASSES:
        raise ValueError(f"pass_={pass_!r} is not one of {PASSES}")
    if not (isinstance(quota, (int, float)) and 0 < quota <= model.capacity):
        raise ValueError(f"quota={quota!r} must be in (0, {model.capacity}] {model.quota_unit}s")
    return pass_ == "forward" or model.backward.get(module, True)


# ---------------------------------------------------------------------- fitting


def _passes(backward: Mapping[str, bool], module: str) -> tuple[str, ...]:
    return PASSES if backward.get(module, True) else ("forward",)


def _fit_curve(b: np.ndarray, q: np.ndarray, y: np.ndarray, folds: int, capacity: int) -> Curve:
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
        errors = [_form_error(b, q, y, form, folds, capacity) for form in forms]
        columns = next(f for f, e in zip(forms, errors, strict=True) if e <= min(errors) * 1.02)
    saturation = _best_saturation(b, q, y, capacity) if 4 in columns else None
    return _solve(b, q, y, columns, saturation)


def _form_error(
    b: np.ndarray, q: np.ndarray, y: np.ndarray, columns: tuple[int, ...], folds: int, capacity: int
) -> float:
    errors = []
    for train, test in _folds(len(y), folds):
        bt, qt, yt = b[train], q[train], y[train]
        saturation = _best_saturation(bt, qt, yt, capacity) if 4 in columns else None
        coef, _ = _nnls(bt, qt, yt, columns, saturation)
        predicted = features(b[test], q[test], saturation) @ coef
        errors.extend(np.abs(predicted - y[test]) / y[test])
    return float(np.mean(errors))


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
    """K-fold splits of ``n`` points (each held out exactly once), shuffled with a fixed seed."""
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=min(k, n), shuffle=True, random_state=0).split(np.arange(n)))


def _fit_memory(profile: Profile, module: str) -> list[float]:
    """Bytes ``a + c * b`` (one batch measured: proportional to the batch)."""
    points = [
        (m.batch, m.peak_bytes if m.peak_bytes is not None else m.activation_bytes)
        for m in profile.memory
        if m.module == module and m.feasible
    ]
    points = [(b, v) for b, v in points if v is not None]
    if not points:
        return [0.0, 0.0]
    return _line(points, proportional=True)


def _graph_costs(profile: Profile) -> dict[str, dict[str, list[float]]]:
    """Per unit and pass, [graphed over eager device seconds, graphed host seconds] at the full batch
    on the whole device, from the profile's graphed samples and the eager ones at the same point."""
    eager = {
        (s.module, s.pass_): s.seconds
        for s in profile.samples
        if s.feasible and s.seconds and s.batch == profile.batch_size and s.quota == profile.capacity
    }
    costs: dict[str, dict[str, list[float]]] = {}
    for s in profile.graphed:
        base = eager.get((s.module, s.pass_))
        if s.feasible and s.seconds and base and s.host_seconds is not None:
            costs.setdefault(s.module, {})[s.pass_] = [s.seconds / base, s.host_seconds]
    return costs


def _fit_host(profile: Profile, module: str, pass_: str) -> list[float] | None:
    """Host seconds ``a + c * b`` over every quota (one batch measured: constant); None if unmeasured."""
    points = [
        (s.batch, s.host_seconds) for s in profile.samples_of(module, pass_) if s.host_seconds is not None
    ]
    return _line(points, proportional=False) if points else None


def _line(points: list[tuple[float, float]], proportional: bool) -> list[float]:
    """``[a, c]`` of ``value = a + c * batch`` (both >= 0) through ``points``."""
    batches = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    if len(np.unique(batches)) == 1:
        return [0.0, float(values.mean() / batches[0])] if proportional else [float(values.mean()), 0.0]
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression(positive=True).fit(batches[:, None], values)
    return [max(0.0, float(reg.intercept_)), float(reg.coef_[0])]


def mape(predicted: Any, measured: Any) -> float:
    """Mean absolute percentage error (a fraction) of ``predicted`` against ``measured``."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p - m) / m)) if len(m) else math.nan
