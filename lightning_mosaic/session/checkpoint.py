"""A session's state in checkpoints: the final plan and the profile, as plain data, read back checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_mosaic._logging import get_logger
from lightning_mosaic.plan import Plan
from lightning_mosaic.profile import Profile

log = get_logger("lightning_mosaic.session")
STATE_VERSION = 1


def state_dict(plan: Plan | None, profile: Profile | None) -> dict[str, Any]:
    """The final ``plan`` and the ``profile`` of a session, as plain data."""
    return {
        "version": STATE_VERSION,
        "plan": plan.to_dict() if plan is not None else None,
        "profile": profile.to_dict() if profile is not None else None,
    }


def stored_state(state: Any, source: str) -> dict[str, Any]:
    """A session state from a checkpoint as ``{"plan": Plan | None, "profile": Profile | None}``; a
    malformed entry is left out with a warning naming ``source``."""
    if not isinstance(state, Mapping):
        log.warning(
            f"{source}'s mosaic state is not a mapping but {type(state).__name__}; it is ignored (the plan"
            " and the profile are made again)"
        )
        return {}
    out: dict[str, Any] = {}
    for key, parse in (("plan", Plan.from_dict), ("profile", Profile.from_dict)):
        value = state.get(key)
        if value is None:
            continue
        try:
            out[key] = parse(value) if not isinstance(value, (Plan, Profile)) else value
        except ValueError as err:
            log.warning(f"{source}'s mosaic {key} is not valid ({err}); it is ignored and made again")
    return out
