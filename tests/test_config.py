"""SessionConfig and ProfileSettings: built and checked once, frozen, the driver's words."""

from __future__ import annotations

import dataclasses

import pytest

from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.plan import temporal_plan
from lightning_mosaic.session import ProfileSettings, SessionConfig, Words


def test_defaults_and_what_quotas_imply():
    config = SessionConfig()
    assert (config.modules, config.plan, config.backend, config.micro_batches) == (None, "auto", "auto", None)
    assert SessionConfig(quotas={"vision": 8}).plan == "concurrent", "quotas by hand are a plan by hand"
    assert SessionConfig(modules=["vision", "llm"]).modules == ("vision", "llm")
    assert SessionConfig(micro_batches="auto").micro_batches is None


def test_a_config_is_frozen_and_replace_checks_again():
    config = SessionConfig(backend="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backend = "none"  # type: ignore[misc]
    again = dataclasses.replace(config, out_dir="runs")
    assert again.backend == "cpu" and again.out_dir == "runs" and again.profile == config.profile
    with pytest.raises(ValueError, match="micro_batches=0 must be 'auto'"):
        dataclasses.replace(config, micro_batches=0)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"backend": "gpu"}, ValueError, "backend='gpu' is not one of"),
        ({"plan": "fast"}, ValueError, "plan='fast' is neither one of auto, temporal, concurrent"),
        (
            {"plan": "concurrent", "plan_choices": ("auto", "temporal")},
            ValueError,
            "plan='concurrent' is neither",
        ),
        ({"plan": "temporal", "quotas": {"vision": 8}}, ValueError, "only goes with plan='concurrent'"),
        ({"modules": "vision"}, TypeError, r"did you mean \['vision'\]"),
        ({"graphs": "yes"}, ValueError, "graphs='yes' is not one of 'auto'"),
        ({"route": 1}, TypeError, "route=1 must be True or False"),
        ({"guard_steps": 0}, ValueError, "guard_steps=0 must be a whole number of steps, 1 or more"),
        ({"profile": {"path": "p.json"}}, TypeError, "must be a ProfileSettings"),
    ],
)
def test_bad_options_are_refused_naming_the_value(options, error, message):
    with pytest.raises(error, match=message):
        SessionConfig(**options)


def test_profile_settings_check_the_grid_once():
    settings = ProfileSettings(batch_fractions=[0.5, 1], quotas=[2, 4])
    assert settings.batch_fractions == (0.5, 1) and settings.quotas == (2, 4)
    with pytest.raises(ValueError, match=r"quotas=\[0\] must be whole numbers of SMs or threads"):
        ProfileSettings(quotas=[0])
    with pytest.raises(ValueError, match="warmup=-1 must be a whole number of runs, 0 or more"):
        ProfileSettings(warmup=-1)


def test_a_plan_given_by_hand_is_kept_as_given():
    plan = temporal_plan(ModuleGraph.from_edges({"a": [], "b": ["a"]}))
    config = SessionConfig(plan=plan)
    assert config.given_plan is plan and SessionConfig().given_plan is None


def test_words_default_to_no_driver():
    words = Words()
    assert "mosaic" in words.plain and words.repeats is None
