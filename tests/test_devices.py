"""DeviceSpec: presets, the quotas a plan may use, the device at hand, bad values."""

from __future__ import annotations

import pytest
import torch

from lightning_mosaic.devices import PRESETS, DeviceSpec


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
