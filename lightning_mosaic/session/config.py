"""What a driver asks of a session, checked once: :class:`SessionConfig` and :class:`ProfileSettings`.

Each driver (the Lightning strategy, the ``MosaicProfiler`` callback, Accelerate's ``prepare``)
builds one frozen :class:`SessionConfig` from its own arguments; the checks run when it is built
(and again, unchanged, on :func:`dataclasses.replace`, since every check accepts what it returns).
The session reads it and never changes it. :class:`Words` carries the driver's names for what a
message may advise, so the core speaks each driver's vocabulary without knowing it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lightning_mosaic.engine import Backend, check_backend
from lightning_mosaic.engine.graphs import check_graphs
from lightning_mosaic.engine.green import check_quotas
from lightning_mosaic.guard import STEPS
from lightning_mosaic.plan import Plan
from lightning_mosaic.profiler import DEFAULT_FRACTIONS, check_grid, whole
from lightning_mosaic.selection import check_names

PLAN_SOURCES = ("auto", "temporal", "concurrent")
PROFILE_FILE = "mosaic_profile.json"
CAP = "mosaic_max_micro_batches"


@dataclass(frozen=True)
class ProfileSettings:
    """What to profile and how: the file, the warmup, the grid and the time budget, checked at once.

    ``path`` is the profile file (None: the driver's default, next to the logs); ``warmup_steps`` the
    plain optimizer steps before the captured one; ``batch_fractions`` and ``quotas`` the grid (SM
    or thread counts besides the whole device; None: a grid from the smallest the hardware allows);
    ``warmup`` and ``repeats`` the untimed and timed runs per point; ``max_seconds`` the budget of
    the whole profile; ``progress`` a progress bar.
    """

    path: str | None = None
    warmup_steps: int = 3
    batch_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    quotas: tuple[int, ...] | None = None
    warmup: int = 2
    repeats: int = 5
    max_seconds: float = 60.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)):
                raise TypeError(
                    f"the profile path must be a file path (str or os.PathLike) or None, got"
                    f" {type(self.path).__name__}: {self.path!r}"
                )
            object.__setattr__(self, "path", os.fspath(self.path))
            if not self.path or os.path.isdir(self.path):
                raise ValueError(
                    f"the profile path {self.path!r} must name a file (not empty, not a directory)"
                )
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress={self.progress!r} must be True or False")
        whole("warmup_steps", self.warmup_steps, 0, "steps")
        fractions, quotas = check_grid(
            self.batch_fractions, self.quotas, self.warmup, self.repeats, self.max_seconds
        )
        object.__setattr__(self, "batch_fractions", fractions)
        object.__setattr__(self, "quotas", quotas)

    def in_directory(self, directory: str | os.PathLike) -> ProfileSettings:
        """These settings with the default file in ``directory`` when no path is set."""
        if self.path is not None:
            return self
        return replace(self, path=os.path.join(os.fspath(directory), PROFILE_FILE))

    def grid(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_mosaic.profiler.profile_units` for the grid."""
        return {
            "batch_fractions": self.batch_fractions,
            "quotas": self.quotas,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "max_seconds": self.max_seconds,
            "progress": self.progress,
        }


@dataclass(frozen=True)
class Words:
    """How the driver names what the session's messages refer to.

    ``plain`` is the run without mosaic ("plain Lightning"); ``budget`` the option that sets the
    profile's time budget; ``repeats`` the option that sets the timed runs per grid point (None:
    the driver has none, so a message advises the budget instead).
    """

    plain: str = "the same training without mosaic"
    budget: str = "the profile's time budget"
    repeats: str | None = None


@dataclass(frozen=True)
class SessionConfig:
    """Everything a session is asked to do, checked when built.

    Attributes:
        modules: the units as dotted paths (None: chosen automatically from the model).
        plan: ``"auto"`` (profile during warmup, then plan), ``"temporal"``, ``"concurrent"`` (every
            unit on its own stream under ``quotas``) or a :class:`~lightning_mosaic.plan.Plan`; a path
            is read when the configuration is built. Quotas given with ``"auto"`` make it ``"concurrent"``.
        plan_choices: the names ``plan`` may take in this driver.
        backend: where units run when the plan puts them side by side (a name of
            :data:`~lightning_mosaic.engine.BACKENDS` or a backend instance).
        quotas: SMs per unit for ``plan="concurrent"``.
        micro_batches: a fixed number of micro-batches per training step (None: the plan's).
        allow_lookahead: whether plans may compute frozen units one step ahead (the driver runs
            :class:`~lightning_mosaic.lightning.lookahead.Lookahead` for it).
        graphs: per-unit CUDA graphs: ``"auto"``, ``True`` or ``False``.
        profile: the :class:`ProfileSettings`.
        profile_requested: profile during warmup even when the plan will not need it.
        route: route the units' calls through an engine under the plan; False only profiles and fits.
        out_dir: where the plan made from a profile is written with the profile and a timeline.
        notes: notes added to every plan the session applies.
        precision: the precision the model trains in (the driver's name); a profile measured in
            another is not reused.
        guard_steps: steps timed under a plan made from a profile before the guard judges it.
        unprofilable: why the units cannot be profiled in this run (None: they can).
        resident_bytes: training state a process holds besides activations (the planner's budget).
        words: the driver's :class:`Words`.
    """

    modules: tuple[str, ...] | None = None
    plan: str | Plan = "auto"
    plan_choices: tuple[str, ...] = PLAN_SOURCES
    backend: str | Backend = "auto"
    quotas: Mapping[str, int] = field(default_factory=dict)
    micro_batches: int | None = None
    allow_lookahead: bool = True
    graphs: str | bool = "auto"
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    profile_requested: bool = False
    route: bool = True
    out_dir: str | None = None
    notes: tuple[str, ...] = ()
    precision: str = "32-true"
    guard_steps: int = STEPS
    unprofilable: str | None = None
    resident_bytes: int = 0
    words: Words = field(default_factory=Words)

    def __post_init__(self) -> None:
        names = check_names(self.modules)
        object.__setattr__(self, "modules", tuple(names) if names is not None else None)
        object.__setattr__(self, "backend", check_backend(self.backend))
        object.__setattr__(self, "quotas", check_quotas(self.quotas))
        object.__setattr__(self, "plan", check_plan_source(self.plan, bool(self.quotas), self.plan_choices))
        object.__setattr__(self, "micro_batches", check_micro_batches(self.micro_batches))
        object.__setattr__(self, "graphs", check_graphs(self.graphs))
        if not isinstance(self.profile, ProfileSettings):
            raise TypeError(f"profile={self.profile!r} must be a ProfileSettings")
        for name in ("allow_lookahead", "profile_requested", "route"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r} must be True or False")
        whole("guard_steps", self.guard_steps, 1, "steps")
        whole("resident_bytes", self.resident_bytes, 0, "bytes")
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", os.fspath(self.out_dir))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def given_plan(self) -> Plan | None:
        """The plan given by hand, if one was."""
        return self.plan if isinstance(self.plan, Plan) else None


def check_plan_source(
    plan: Any, quotas_given: bool = False, choices: Sequence[str] = PLAN_SOURCES
) -> str | Plan:
    """``plan`` as one of ``choices`` or a :class:`Plan` (a path is read now and may raise).

    Quotas given by hand make ``"auto"`` a ``"concurrent"`` plan; with any other source they are an
    error.
    """
    if isinstance(plan, Plan):
        source: str | Plan = plan
    elif isinstance(plan, str) and plan in choices:
        source = plan
    elif isinstance(plan, (str, os.PathLike)):
        path = os.fspath(plan)
        if not os.path.exists(path):
            raise ValueError(
                f"plan={path!r} is neither one of {', '.join(choices)} nor an existing plan file"
            )
        source = Plan.load(path)
    else:
        raise TypeError(
            f"plan must be one of {', '.join(choices)}, a Plan or the path of a plan file, got"
            f" {type(plan).__name__}: {plan!r}"
        )
    if quotas_given:
        if source == "auto":
            return "concurrent"  # quotas by hand are a plan by hand
        if source != "concurrent":
            raise ValueError(
                f"quotas= sets the SM quotas by hand, which only goes with plan='concurrent', not"
                f" plan={plan!r}; put the quotas in the plan instead"
            )
    return source


def check_micro_batches(value: Any) -> int | None:
    """A fixed micro-batch count (a whole number, 1 or more), or None for ``"auto"``: the plan's."""
    if value is None or value == "auto":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(
        f"micro_batches={value!r} must be 'auto' (the plan's count) or a whole number, 1 or more"
    )


def micro_batch_cap(model: Any) -> tuple[int | None, str]:
    """The most micro-batches ``model`` allows per step (None: no limit) and why, checked.

    A model whose loss couples the samples of a batch (contrastive losses, batch statistics) sets
    ``mosaic_max_micro_batches = 1``: micro-batches would change its numbers. A model that calls
    backward itself (``automatic_optimization = False``) cannot be split at all.
    """
    cap = getattr(model, CAP, None)
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"{type(model).__name__}.{CAP} = {cap!r}; it must be a whole number >= 1")
    if getattr(model, "automatic_optimization", True) is False:  # its training_step steps itself
        return 1, "sets automatic_optimization = False (its training_step calls backward itself)"
    return cap, (
        f"sets {CAP} = {cap} (its loss couples the samples of a batch, so splitting it would change the"
        " numbers)"
    )
