"""What the planner needs to know about a device: SMs, their granularity, memory.

``DeviceSpec`` is plain data with presets for the GPUs plans are usually made for, and
``from_current()`` for the device at hand. On a CPU the "SMs" are intra-op threads.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lightning_mosaic.engine import green


@dataclass(frozen=True)
class DeviceSpec:
    """A device as the planner sees it: ``sm_count`` SMs (threads on a CPU) in quotas of
    ``sm_granularity`` (at least ``sm_minimum``), and ``memory_bytes`` of memory."""

    name: str
    sm_count: int
    sm_granularity: int
    memory_bytes: int
    sm_minimum: int = 0  # 0: the granularity

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

    @property
    def minimum(self) -> int:
        return max(self.sm_minimum, self.sm_granularity)

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
        """The device at hand: the current CUDA GPU, or the CPU (threads, physical memory)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            minimum, multiple = green.granularity((props.major, props.minor))
            return cls(props.name, props.multi_processor_count, multiple, props.total_memory, minimum)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 1
        return cls("cpu", torch.get_num_threads(), 1, int(memory), 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSpec:
        return cls(**data)

    def describe(self) -> str:
        return (
            f"{self.name}: {self.sm_count} SMs in quotas of {self.sm_granularity} (min {self.minimum}),"
            f" {self.memory_bytes / 2**30:.0f} GiB"
        )


PRESETS: dict[str, DeviceSpec] = {
    "h100": DeviceSpec("NVIDIA H100 80GB HBM3", 132, 8, 80 * 10**9, 8),
    "h200": DeviceSpec("NVIDIA H200", 132, 8, 141 * 10**9, 8),
    "a100": DeviceSpec("NVIDIA A100-SXM4-80GB", 108, 2, 80 * 10**9, 4),
}
