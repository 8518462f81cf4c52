"""Per-unit parallel layouts: FSDP2-sharded units beside replicated ones, on PyTorch device meshes.

A multimodal model's backbone is often too large to hold replicated with its optimizer state, while
its encoders are small enough that sharding them only adds communication. So each unit gets its own
layout (as in heterogeneous-parallelism training of multimodal LLMs):

- **sharded**: ``torch.distributed.fsdp.fully_shard`` over every rank, each transformer block apart
  (the children of the unit's largest ``nn.ModuleList``) and then the unit, so one block's
  parameters are gathered at a time;
- **replicated**: ``fully_shard`` on a ``(world, 1)`` mesh (FSDP2's hybrid layout with shards of
  one rank): every rank holds the whole unit and gradients are all-reduced, as under DDP.

Whatever no unit holds stays with the root module, replicated the same way. Everything is PyTorch's
FSDP2 and device meshes; this module only decides who gets which layout and applies it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

SHARDED = "sharded"
REPLICATED = "replicated"
# Bytes a trainable parameter costs in training, in parameter bytes: itself, its gradient, two AdamW moments.
TRAINING_FACTOR = 4
AUTO_BUDGET = 0.5  # "auto" keeps the replicated training state within this share of device memory


@dataclass(frozen=True)
class Layout:
    """Which units are sharded over ``world`` ranks (plain data)."""

    world: int
    units: Mapping[str, str] = field(default_factory=dict)  # unit -> "sharded" | "replicated"
    blocks: Mapping[str, int] = field(default_factory=dict)  # sharded unit -> blocks sharded apart
    bytes_per_rank: Mapping[str, int] = field(default_factory=dict)  # unit -> parameter bytes on a rank

    @property
    def sharded(self) -> list[str]:
        return [name for name, how in self.units.items() if how == SHARDED]

    def describe(self) -> str:
        parts = []
        for name, how in self.units.items():
            size = (
                f", {self.bytes_per_rank[name] / 2**20:.1f} MiB per rank"
                if name in self.bytes_per_rank
                else ""
            )
            if how == SHARDED:
                blocks = self.blocks.get(name, 0)
                apart = f", {blocks} blocks apart" if blocks else ""
                parts.append(f"{name} sharded over {self.world} ranks (FSDP2{apart}{size})")
            else:
                parts.append(f"{name} replicated{size}")
        return "layout: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "units": dict(self.units),
            "blocks": dict(self.blocks),
            "bytes_per_rank": dict(self.bytes_per_rank),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(
            int(data["world"]),
            dict(data.get("units", {})),
            dict(data.get("blocks", {})),
            dict(data.get("bytes_per_rank", {})),
        )


def check_shard(shard: Any) -> str | tuple[str, ...] | None:
    """``None``, ``"auto"`` or unit names; anything else is a ``ValueError``/``TypeError`` naming it."""
    if shard is None or shard == "auto":
        return shard
    if isinstance(shard, str):
        raise ValueError(f"shard={shard!r} is not 'auto' nor a list of unit names (e.g. shard=['llm'])")
    if not isinstance(shard, Sequence) or not all(isinstance(n, str) and n for n in shard):
        raise TypeError(f"shard={shard!r} must be None, 'auto' or a list of unit names")
    if len(set(shard)) != len(shard):
        raise ValueError(f"shard={list(shard)!r} names a unit twice")
    return tuple(shard)


def training_bytes(module: nn.Module) -> int:
    """What holding ``module`` replicated costs in training: trainable parameters with their gradient
    and two optimizer moments, frozen ones once."""
    total = 0
    for p in module.parameters():
        size = p.numel() * p.element_size()
        total += size * TRAINING_FACTOR if p.requires_grad else size
    return total


def choose(
    units: Mapping[str, nn.Module],
    shard: str | Sequence[str] | None,
    world: int,
    memory_bytes: int | None = None,
    budget: float = AUTO_BUDGET,
) -> dict[str, str]:
    """The layout of each unit: the named ones sharded, or with ``"auto"`` the largest units until the
    training state per rank fits ``budget`` of ``memory_bytes`` (none when all fit replicated)."""
    if shard is None or world < 2:
        return dict.fromkeys(units, REPLICATED)
    if shard != "auto":
        unknown = [n for n in shard if n not in units]
        if unknown:
            raise ValueError(f"shard names unknown units {unknown}; the units are {list(units)}")
        return {n: SHARDED if n in shard else REPLICATED for n in units}
    if memory_bytes is None:
        raise ValueError("shard='auto' needs the device's memory to decide; name the units instead")
    sizes = {n: training_bytes(m) for n, m in units.items()}
    layout = dict.fromkeys(units, REPLICATED)
    for name in sorted(sizes, key=sizes.get, reverse=True):
        per_rank = sum(s / world if layout[n] == SHARDED else s for n, s in sizes.items())
        if per_rank <= budget * memory_bytes:
            break
        layout[name] = SHARDED
    return layout


def resident_bytes(units: Mapping[str, nn.Module], layout: Mapping[str, str], world: int) -> int:
    """Training state one rank holds under ``layout``: replicated units whole, sharded ones 1/world
    (the planner's ``resident_bytes``)."""
    return round(
        sum(training_bytes(m) / (world if layout.get(n) == SHARDED else 1) for n, m in units.items())
    )


def blocks_of(unit: nn.Module) -> list[nn.Module]:
    """The unit's transformer blocks: the children of its ``nn.ModuleList`` with the most parameters
    (none when it has no such list)."""
    best, most = [], 0
    for module in unit.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            size = sum(p.numel() for p in module.parameters())
            if size > most:
                best, most = list(module), size
    return best


def local_bytes(module: nn.Module) -> int:
    """Parameter bytes this rank holds of ``module`` (a sharded parameter's local shard)."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


def apply(
    root: nn.Module,
    units: Mapping[str, nn.Module],
    layout: Mapping[str, str],
    world: int,
    device_type: str,
    mp_policy: Any = None,
) -> Layout:
    """Shard or replicate each unit of ``root`` with ``fully_shard`` as ``layout`` says, then the root.

    Needs the default process group (``world`` ranks). Returns the :class:`Layout` applied.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    options: dict[str, Any] = {} if mp_policy is None else {"mp_policy": mp_policy}
    shard_mesh = init_device_mesh(device_type, (world,))
    replicate_mesh = init_device_mesh(device_type, (world, 1), mesh_dim_names=("replicate", "shard"))
    blocks: dict[str, int] = {}
    for name, unit in units.items():
        if layout.get(name) == SHARDED:
            parts = blocks_of(unit)
            for block in parts:
                fully_shard(block, mesh=shard_mesh, **options)
            fully_shard(unit, mesh=shard_mesh, **options)
            blocks[name] = len(parts)
        else:
            fully_shard(unit, mesh=replicate_mesh, **options)
    fully_shard(root, mesh=replicate_mesh, **options)
    sizes = {name: local_bytes(unit) for name, unit in units.items()}
    return Layout(world, {n: layout.get(n, REPLICATED) for n in units}, blocks, sizes)
