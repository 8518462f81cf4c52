"""Profile data: JSON round-trip, schema validation, files, fingerprints and reuse decisions."""

from __future__ import annotations

import json

import pytest
from torch import nn

from lightning_mosaic.profile import (
    MemorySample,
    ModuleInfo,
    Profile,
    ProfileError,
    Sample,
    batch_grid,
    fingerprint,
    validate,
)


def make_profile() -> Profile:
    return Profile(
        fingerprint={"digest": "abc", "modules": {"enc": [["w", [2, 2], "float32", True]]}},
        device="cpu",
        device_type="cpu",
        quota_unit="thread",
        capacity=2,
        granularity=[1, 1],
        torch_version="2.13.0",
        batch_size=4,
        batch_fractions=[0.5, 1.0],
        quotas=[1, 2],
        modules=[ModuleInfo("enc", 4, True, True, 4), ModuleInfo("frozen", 4, False, False, 4)],
        samples=[
            Sample("enc", "forward", 4, 2, 0.01, True, 5, 0.1),
            Sample("enc", "backward", 4, 2, 0.02, True, 5, 0.1),
            Sample("enc", "forward", 2, 1, None, False, 0, 0.0, "out of memory"),
            Sample("frozen", "forward", 4, 2, 0.005, True, 5, 0.0),
        ],
        memory=[MemorySample("enc", 4, 1024, None), MemorySample("enc", 2, None, None, False)],
        created="2026-11-27T00:00:00+00:00",
    )


def test_json_round_trip_keeps_everything_including_infeasible_points():
    profile = make_profile()
    again = Profile.from_json(profile.to_json())
    assert again == profile
    assert json.loads(profile.to_json())["samples"][0]["pass"] == "forward"
    infeasible = again.samples_of("enc", "forward", feasible_only=False)
    assert [s.feasible for s in infeasible] == [True, False]
    assert again.samples_of("enc", "forward") == [profile.samples[0]]


def test_a_profile_without_host_times_still_reads():
    data = make_profile().to_dict()
    for sample in data["samples"]:
        sample.pop("host_seconds")  # written before host times were measured
    assert all(s.host_seconds is None for s in Profile.from_dict(data).samples)


def test_file_round_trip(tmp_path):
    path = tmp_path / "sub" / "profile.json"
    make_profile().save(path)
    assert Profile.load(path) == make_profile()
    assert not list((tmp_path / "sub").glob("*.tmp"))
    assert validate(json.loads(path.read_text())) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("samples"), "profile misses ['samples']"),
        (lambda d: d.update(capacity="2"), "profile.capacity must be an integer, got a string: '2'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d["samples"][0].update(pass_="sideways"), "unknown fields ['pass_']"),
        (lambda d: d["samples"][0].update({"pass": "sideways"}), "pass 'sideways' is not one of"),
        (lambda d: d["samples"][0].update(module="ghost"), "module 'ghost' is not one of"),
        (lambda d: d["samples"][0].update(seconds=None), "a feasible sample needs positive seconds"),
        (lambda d: d["samples"][0].update(quota=3), "quota 3 must be in 1..2"),
        (
            lambda d: d["samples"][0].update(feasible=1),
            "samples[0].feasible must be true or false, got an integer: 1",
        ),
        (lambda d: d.update(quota_unit="cores"), "quota_unit 'cores' is not one of"),
        (lambda d: d["samples"][0].update(host_seconds=-1.0), "host_seconds must be a finite number >= 0"),
        (
            lambda d: d["samples"][0].update(host_seconds="1"),
            "samples[0].host_seconds must be a number or null, got a string",
        ),
    ],
)
def test_invalid_data_is_an_error_naming_the_field(edit, message):
    data = make_profile().to_dict()
    edit(data)
    with pytest.raises(ProfileError, match="not a valid profile") as info:
        Profile.from_dict(data)
    assert message in str(info.value)


def test_corrupt_and_unreadable_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": 1, "device": ')
    with pytest.raises(ProfileError, match=f"profile {broken} is not valid JSON"):
        Profile.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2, 3]")
    with pytest.raises(
        ProfileError, match=f"profile {wrong} is not a valid profile: profile must be an object"
    ):
        Profile.load(wrong)
    with pytest.raises(ProfileError, match=f"cannot read profile {tmp_path / 'missing.json'}"):
        Profile.load(tmp_path / "missing.json")


def test_fingerprint_follows_names_shapes_dtypes_and_trainability():
    a = {"enc": nn.Linear(4, 4)}
    assert fingerprint(a) == fingerprint({"enc": nn.Linear(4, 4)})  # values do not matter
    assert fingerprint(a)["modules"]["enc"][0] == ["weight", [4, 4], "float32", True]
    others = [
        {"enc": nn.Linear(4, 5)},
        {"other": nn.Linear(4, 4)},
        {"enc": nn.Linear(4, 4).double()},
        {"enc": nn.Linear(4, 4).requires_grad_(False)},
    ]
    assert all(fingerprint(o)["digest"] != fingerprint(a)["digest"] for o in others)
    bf16 = fingerprint(a, "bf16-mixed, float32 matmul highest")
    assert bf16["precision"] == "bf16-mixed, float32 matmul highest"
    assert bf16["digest"] != fingerprint(a, "32-true, float32 matmul highest")["digest"]


def test_mismatch_reasons():
    profile = make_profile()
    same = profile.fingerprint
    assert profile.mismatch(same, "cpu", 2) is None
    assert "measured on 'cpu', this run is on 'NVIDIA H100'" in profile.mismatch(same, "NVIDIA H100")
    assert "measured with 2 threads, this run has 8" in profile.mismatch(same, "cpu", 8)
    changed = {"digest": "xyz", "modules": {"enc": [["w", [3, 3], "float32", True]]}}
    assert "modules with other parameters: ['enc']" in profile.mismatch(changed, "cpu")
    other = dict(same, precision="bf16-mixed, float32 matmul high")
    assert profile.mismatch(other, "cpu") == (
        "it was measured in an unrecorded precision, this run trains in bf16-mixed, float32 matmul high"
    )


def test_describe_and_queries():
    profile = make_profile()
    text = profile.describe()
    assert "profile of 2 modules on cpu (2 threads)" in text
    assert (
        "enc: 4 parameters (trainable); full batch on the whole device: forward 10 ms, backward 20 ms" in text
    )
    assert "1 infeasible points" in text
    assert profile.batches == [2, 4]
    assert batch_grid(10, [0.25, 0.5, 1.0]) == [2, 5, 10]
    assert batch_grid(2, [0.1, 0.25, 1.0]) == [1, 2]
    with pytest.raises(KeyError, match="module 'x' is not in the profile; it has \\['enc', 'frozen'\\]"):
        profile.module("x")


def test_graphed_samples_are_checked_and_optional():
    from dataclasses import replace as copy_with

    profile = make_profile()
    data = profile.to_dict()
    del data["graphed"]
    assert Profile.from_dict(data).graphed == [], "profiles written before graphs read as none"
    sample = copy_with(profile.samples[0], module="nosuch")
    data = copy_with(profile, graphed=[sample]).to_dict()
    assert any("graphed[0].module 'nosuch'" in p for p in validate(data))
