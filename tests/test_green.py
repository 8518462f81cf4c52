"""Green contexts: API detection by feature, grants, quota validation, stream creation."""

from __future__ import annotations

import types

import pytest
import torch

from lightning_mosaic.engine import green
from lightning_mosaic.engine.green import Grant, check_quotas, detect, grant, make_streams


class FakeStream:
    def __init__(self, ctx):
        self.ctx = ctx


def fake_api(version: str):
    """Stand-ins with the shape of torch.cuda.green_contexts in a given release."""
    created = []

    class GreenContext210:  # create(num_sms, device_id=0), set_context/pop_context, no Stream()
        def __init__(self, num_sms=None, device_id=None, sm_partition=None):
            self.num_sms = num_sms if sm_partition is None else sm_partition.sm_count
            self.sm_partition = sm_partition
            created.append(self)

        @staticmethod
        def create(num_sms, device_id=0):
            return GreenContext210(num_sms=num_sms, device_id=device_id)

        def set_context(self):
            pass

        def pop_context(self):
            pass

    class GreenContext212(GreenContext210):  # keyword-only create, Stream()
        @staticmethod
        def create(*, num_sms=None, workqueue_scope=None, device_id=None):
            return GreenContext212(num_sms=num_sms, device_id=device_id)

        def Stream(self):
            return FakeStream(self)

    class Partition:
        def __init__(self, sm_count):
            self.sm_count = sm_count

        @classmethod
        def from_device(cls, device_id=None):
            return cls(132)

        def split(self, *, num_sms=0):
            parts = tuple(Partition(n) for n in num_sms)
            return parts, Partition(self.sm_count - sum(num_sms))

    module = types.SimpleNamespace(created=created)
    if version == "2.10":
        module.GreenContext = GreenContext210
    else:
        module.GreenContext = GreenContext212
    if version == "2.15":
        module.SMPartition = Partition
    return module


@pytest.mark.parametrize(
    ("version", "stream", "split"), [("2.10", False, False), ("2.13", True, False), ("2.15", True, True)]
)
def test_detect_by_feature(version, stream, split):
    api = detect(fake_api(version))
    assert (api.has_stream, api.has_split, api.usable) == (stream, split, stream)
    assert ("SMPartition.split (disjoint partitions)" in api.describe()) == split


def test_detect_absent_or_unsupported():
    assert detect(types.SimpleNamespace()) is None
    assert detect(types.SimpleNamespace(SUPPORTED=False, GreenContext=object)) is None
    from torch.cuda import green_contexts

    supported = getattr(green_contexts, "SUPPORTED", True)  # False in a CPU build of torch
    assert (detect() is None) == (not supported)


def test_grant_rounds_and_fits_on_an_h100():
    grants = grant({"vision": 32, "audio": 16, "llm": 84}, sm_count=132, minimum=8, multiple=8)
    assert grants == {
        "vision": Grant(32, 32, True),
        "audio": Grant(16, 16, True),
        "llm": Grant(84, 80, True),  # 84 rounds to 88; 32 + 16 + 88 > 132, so the largest gives back 8
    }


def test_grant_minimum_whole_device_and_overlap():
    grants = grant({"a": 3, "b": None, "c": 132, "d": 130}, sm_count=132, minimum=8, multiple=8)
    assert grants["a"] == Grant(3, 8, True), "never below the minimum partition"
    assert grants["b"] == Grant(None, 132, False) and grants["c"] == Grant(132, 132, False)
    assert grants["d"] == Grant(130, 132, False), "at or above the largest partition: the whole device"
    tight = grant({"a": 8, "b": 8, "c": 8}, sm_count=16, minimum=8, multiple=8)
    assert [g.granted for g in tight.values()] == [8, 8, 8], "cannot fit at the minimum: they overlap"


def test_check_quotas():
    assert check_quotas(None) == {}
    assert check_quotas({"vision": 32}, ["vision", "llm"], 132) == {"vision": 32}
    with pytest.raises(ValueError, match=r"quota of 'vision' is 0 SMs; a quota must be at least 1 SM"):
        check_quotas({"vision": 0})
    with pytest.raises(ValueError, match=r"quota of 'audio' is -8 SMs"):
        check_quotas({"audio": -8})
    with pytest.raises(ValueError, match=r"quota of 'llm' is 200 SMs but NVIDIA H100 has 132 SMs"):
        check_quotas({"llm": 200}, ["llm"], 132, "NVIDIA H100")
    with pytest.raises(
        ValueError, match=r"`quotas` names unknown modules \['text'\]; the modules are \['vision'\]"
    ):
        check_quotas({"text": 8}, ["vision"])
    with pytest.raises(TypeError, match=r"quota of 'vision' must be a whole number of SMs, got float: 2.5"):
        check_quotas({"vision": 2.5})
    with pytest.raises(TypeError, match=r"`quotas` must map module names to SM counts, got list"):
        check_quotas([("vision", 8)])


def test_make_streams_with_split_gives_disjoint_partitions(monkeypatch):
    module = fake_api("2.15")
    monkeypatch.setattr(green, "_device_sms", lambda index: 132)
    grants = grant({"vision": 32, "audio": 16, "llm": None}, 132, 8, 8)
    streams, contexts, notes = make_streams(detect(module), grants, torch.device("cuda", 0))
    assert set(streams) == {"vision", "audio"}, "a unit without a quota keeps the whole GPU"
    assert [c.sm_partition.sm_count for c in contexts] == [32, 16]
    assert streams["vision"].ctx is contexts[0]
    assert notes == ["disjoint SM partitions from one split: vision, audio"]


def test_make_streams_without_split_creates_contexts_one_by_one():
    module = fake_api("2.13")
    grants = grant({"vision": 32, "audio": 16}, 132, 8, 8)
    streams, contexts, notes = make_streams(detect(module), grants, torch.device("cuda", 0))
    assert [streams["vision"].ctx, streams["audio"].ctx] == contexts
    assert [c.num_sms for c in contexts] == [32, 16]
    assert "the driver may place them on overlapping SMs" in notes[0]


def test_a_failing_split_falls_back_to_contexts_one_by_one(monkeypatch):
    module = fake_api("2.15")

    def too_old(self, *, num_sms=0):
        raise RuntimeError("Green Context disjoint SM splits require user mode driver 13.1+")

    monkeypatch.setattr(module.SMPartition, "split", too_old)
    monkeypatch.setattr(green, "_device_sms", lambda index: 132)
    grants = grant({"vision": 32, "audio": 16}, 132, 8, 8)
    streams, contexts, notes = make_streams(detect(module), grants, torch.device("cuda", 0))
    assert set(streams) == {"vision", "audio"} and [c.num_sms for c in contexts] == [32, 16]
    assert notes[0].startswith("SMPartition.split failed (Green Context disjoint SM splits require")
    assert "overlapping SMs" in notes[1]


def test_grant_fits_each_phase_of_a_plan_on_its_own():
    phases = [["vision", "audio"], ["llm"]]
    grants = grant({"vision": 64, "audio": 64, "llm": 104}, 132, 8, 8, groups=phases)
    assert [grants[u].granted for u in ("vision", "audio", "llm")] == [64, 64, 104], (
        "units of different phases do not run together, so 64 + 64 + 104 > 132 is fine"
    )
    together = grant({"vision": 64, "audio": 64, "llm": 104}, 132, 8, 8)
    assert sum(g.granted for g in together.values()) <= 132, "one group: they all fit together"


def test_make_streams_splits_each_phase_disjointly(monkeypatch):
    module = fake_api("2.15")
    monkeypatch.setattr(green, "_device_sms", lambda index: 132)
    phases = [["vision", "audio"], ["projector", "llm"]]
    grants = grant({"vision": 64, "audio": 64, "projector": 32, "llm": 96}, 132, 8, 8, groups=phases)
    streams, contexts, notes = make_streams(detect(module), grants, torch.device("cuda", 0), groups=phases)
    assert set(streams) == {"vision", "audio", "projector", "llm"}
    assert [c.sm_partition.sm_count for c in contexts] == [64, 64, 32, 96]
    assert notes == [
        "disjoint SM partitions from one split: vision, audio",
        "disjoint SM partitions from one split: projector, llm",
    ]
