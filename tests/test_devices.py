"""DeviceSpec: presets, the quotas a plan may use, the device at hand, bad values."""

from __future__ import annotations

import pytest
import torch

from lightning_mosaic.devices import PRESETS, DeviceSpec, device_name, granularity, unit_label


def test_presets():
    h100 = DeviceSpec.preset("H100")
    assert (h100.sm_count, h100.sm_granularity, h100.minimum) == (132, 8, 8)
    assert h100.quotas() == [*range(8, 132, 8), 132]
    assert DeviceSpec.preset("h200").memory_bytes > h100.memory_bytes
    a100 = DeviceSpec.preset("a100")
    assert a100.quotas()[:3] == [4, 6, 8] and a100.quotas()[-1] == 108
    assert set(PRESETS) == {"h100", "h200", "a100"}
    with pytest.raises(ValueError, match="unknown device preset 'v100'; choose one of h100, h200, a100"):
        DeviceSpec.preset("v100")


def test_from_current_on_the_cpu_counts_threads():
    spec = DeviceSpec.from_current("cpu")
    assert spec.name == "cpu" and spec.sm_count == torch.get_num_threads() and spec.sm_granularity == 1
    assert spec.memory_bytes > 2**20
    assert DeviceSpec.from_dict(spec.to_dict()) == spec
    assert "cpu:" in spec.describe()


@pytest.mark.gpu
def test_from_current_on_a_gpu():
    spec = DeviceSpec.from_current("cuda")
    props = torch.cuda.get_device_properties(0)
    assert spec.sm_count == props.multi_processor_count and spec.memory_bytes == props.total_memory


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sm_count": 0}, "DeviceSpec.sm_count must be a positive int, got 0"),
        ({"sm_granularity": 200}, "sm_granularity 200 exceeds the 132 SMs"),
        ({"memory_bytes": -1}, "DeviceSpec.memory_bytes must be a positive int"),
    ],
)
def test_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeviceSpec(**({"name": "x", "sm_count": 132, "sm_granularity": 8, "memory_bytes": 10**9} | kwargs))


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), (8, 8)), ((10, 0), (8, 8)), ((8, 0), (4, 2)), ((7, 0), (2, 2)), ((6, 1), (1, 1))],
)
def test_granularity(capability, expected):
    assert granularity(capability) == expected


def test_a_cpu_counts_threads_and_says_so():
    spec = DeviceSpec.from_current("cpu")
    assert spec.quota_unit == "thread" and spec.unit_label == "threads"
    assert f"{spec.sm_count} threads in quotas of 1" in spec.describe()
    assert DeviceSpec.preset("h100").unit_label == "SMs" and unit_label("sm") == "SMs"
    assert device_name("cpu") == "cpu" and device_name(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match=r"quota_unit='core' is not one of \('sm', 'thread'\)"):
        DeviceSpec("x", 4, 1, 10**9, quota_unit="core")


def test_from_profile_is_a_preset_when_name_and_sms_match():
    from types import SimpleNamespace

    def profile(device, capacity, device_type="cuda", quota_unit="sm", granularity=(8, 8)):
        return SimpleNamespace(
            device=device,
            capacity=capacity,
            device_type=device_type,
            quota_unit=quota_unit,
            granularity=list(granularity),
        )

    assert DeviceSpec.from_profile(profile("NVIDIA H200", 132)) is PRESETS["h200"]
    mig = DeviceSpec.from_profile(profile("NVIDIA H200", 60))  # a MIG slice: another SM count, no preset
    assert (mig.name, mig.sm_count, mig.sm_granularity, mig.minimum) == ("NVIDIA H200", 60, 8, 8)
    assert mig.memory_bytes == 2**50, "unknown memory is no constraint"
    cpu = DeviceSpec.from_profile(profile("cpu", 2, "cpu", "thread", (1, 1)))
    assert cpu.quota_unit == "thread" and cpu.memory_bytes == DeviceSpec.from_current("cpu").memory_bytes
