"""Every fact the package uses about a device: its name, SMs (threads on a CPU), granularity, memory.

``DeviceSpec`` is plain data with presets for the GPUs plans are usually made for,
``DeviceSpec.from_current()`` for the device at hand and ``DeviceSpec.from_profile()`` for the
device a profile was measured on. No other module reads device properties. torch is imported only
when a real device is read, so planning from files needs no torch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lightning_mosaic.profile import Profile

QUOTA_UNITS = ("sm", "thread")


@dataclass(frozen=True)
class DeviceSpec:
    """A device as the planner sees it: ``sm_count`` SMs (threads on a CPU) in quotas of
    ``sm_granularity`` (at least ``sm_minimum``), and ``memory_bytes`` of memory."""

    name: str
    sm_count: int
    sm_granularity: int
    memory_bytes: int
    sm_minimum: int = 0  # 0: the granularity
    quota_unit: str = "sm"  # "thread" on a CPU

    def __post_init__(self) -> None:
        for field_name in ("sm_count", "sm_granularity", "memory_bytes"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DeviceSpec.{field_name} must be a positive int, got {value!r}")
        if self.sm_granularity > self.sm_count:
            raise ValueError(
                f"DeviceSpec.sm_granularity {self.sm_granularity} exceeds the {self.sm_count} SMs"
                f" of {self.name}"
            )
        if self.quota_unit not in QUOTA_UNITS:
            raise ValueError(f"DeviceSpec.quota_unit={self.quota_unit!r} is not one of {QUOTA_UNITS}")

    @property
    def minimum(self) -> int:
        return max(self.sm_minimum, self.sm_granularity)

    @property
    def unit_label(self) -> str:
        """``"SMs"`` or ``"threads"``: what a quota counts on this device."""
        return unit_label(self.quota_unit)

    def quotas(self) -> list[int]:
        """Every quota a unit may get: multiples of the granularity from the minimum, and the whole device."""
        g = self.sm_granularity
        first = -(-self.minimum // g) * g
        return sorted({*range(first, self.sm_count, g), self.sm_count})

    @classmethod
    def preset(cls, name: str) -> DeviceSpec:
        """``"h100"`` (H100 SXM), ``"h200"`` or ``"a100"`` (case-insensitive)."""
        key = name.lower().replace("-", "").replace(" ", "").replace("_", "")
        if key not in PRESETS:
            raise ValueError(f"unknown device preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[key]

    @classmethod
    def from_current(cls, device: str | torch.device | None = None) -> DeviceSpec:
        """The device at hand: the current CUDA GPU, or the CPU (intra-op threads, physical memory)."""
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            minimum, multiple = granularity((props.major, props.minor))
            return cls(props.name, props.multi_processor_count, multiple, props.total_memory, minimum)
        return cls("cpu", torch.get_num_threads(), 1, _physical_memory(), 1, "thread")

    @classmethod
    def from_profile(cls, profile: Profile) -> DeviceSpec:
        """The device ``profile`` was measured on (a preset when its name and SM count match one).

        A profile does not record memory: a CPU gets this machine's, a GPU that matches no preset an
        unbounded amount (memory is then not a constraint of the plan).
        """
        for spec in PRESETS.values():
            if spec.name == profile.device and spec.sm_count == profile.capacity:
                return spec
        memory = _physical_memory() if profile.device_type == "cpu" else 2**50
        minimum, multiple = profile.granularity
        return cls(profile.device, profile.capacity, multiple, memory, minimum, profile.quota_unit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSpec:
        return cls(**data)

    def describe(self) -> str:
        return (
            f"{self.name}: {self.sm_count} {self.unit_label} in quotas of {self.sm_granularity}"
            f" (min {self.minimum}), {self.memory_bytes / 2**30:.0f} GiB"
        )


PRESETS: dict[str, DeviceSpec] = {
    "h100": DeviceSpec("NVIDIA H100 80GB HBM3", 132, 8, 80 * 10**9, 8),
    "h200": DeviceSpec("NVIDIA H200", 132, 8, 141 * 10**9, 8),
    "a100": DeviceSpec("NVIDIA A100-SXM4-80GB", 108, 2, 80 * 10**9, 4),
}


def granularity(capability: tuple[int, int]) -> tuple[int, int]:
    """``(minimum, multiple)`` of a green context's SM count for a compute capability.

    Hopper and later partition SMs in multiples of 8; Ampere in multiples of 2 from 4; Volta in
    multiples of 2.
    """
    major = capability[0]
    if major >= 9:
        return 8, 8
    if major == 8:
        return 4, 2
    if major == 7:
        return 2, 2
    return 1, 1


def device_name(device: str | torch.device) -> str:
    """How plans and profiles name ``device``: the GPU's product name, or the device type (``cpu``)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def unit_label(quota_unit: str) -> str:
    """``"SMs"`` for ``"sm"``, ``"threads"`` for ``"thread"``."""
    return "SMs" if quota_unit == "sm" else "threads"


def _physical_memory() -> int:
    if hasattr(os, "sysconf"):
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return 1
