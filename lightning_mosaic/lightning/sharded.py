"""Checkpoints of a model whose units FSDP2 shards, in the format of Lightning's ``ModelParallelStrategy``.

The model's and optimizers' states are DTensors: they are gathered or kept sharded through
``torch.distributed.checkpoint`` exactly as ``ModelParallelStrategy`` does (a directory of shards
plus a metadata file, or one full file), so its checkpoints and ours load into each other. These
are the only places where the strategy borrows that behaviour.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.model_parallel import (
    _distributed_checkpoint_save,
    _is_sharded_checkpoint,
    _load_checkpoint,
)
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn


def model_state(model: nn.Module, distributed: bool) -> dict[str, Any]:
    """The model's state: each rank's shards (``distributed``), or the full state on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=not distributed, cpu_offload=True)
    )


def optimizer_state(model: nn.Module, optimizer: Any, distributed: bool, rank: int) -> dict[str, Any]:
    """An optimizer's state, sharded (``distributed``) or full and keyed by parameter index on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

    if isinstance(optimizer, LightningOptimizer):
        optimizer = optimizer._optimizer
    options = StateDictOptions(full_state_dict=not distributed, cpu_offload=True)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    if not distributed and rank == 0:
        state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, model)
    return state


def save(
    checkpoint: dict[str, Any],
    path: Path,
    distributed: bool,
    rank: int,
    save_file: Callable[[dict[str, Any], Path], None],
) -> None:
    """Write ``checkpoint`` to ``path``: a directory of shards every rank writes (``distributed``), or
    one full file through ``save_file`` (the strategy's checkpoint IO)."""
    if distributed:
        if path.is_file():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        converted = {"state_dict": checkpoint.pop("state_dict")}
        converted.update(
            {f"optimizer_{i}": state for i, state in enumerate(checkpoint.pop("optimizer_states", []))}
        )
        _distributed_checkpoint_save(converted, path)
        if rank == 0:
            torch.save(checkpoint, path / _METADATA_FILENAME)
        return
    if path.is_dir():
        if not _is_sharded_checkpoint(path):
            raise IsADirectoryError(f"The checkpoint path exists and is a directory: {path}")
        shutil.rmtree(path)
    save_file(checkpoint, path)


def load(
    path: Path, model: nn.Module, optimizers: Sequence[Any], strict: bool, weights_only: bool | None
) -> dict[str, Any]:
    """Load a sharded directory or a full file into ``model`` and ``optimizers`` in place; the rest of
    the checkpoint is returned."""
    state = {"state_dict": model, **{f"optimizer_{i}": o for i, o in enumerate(optimizers)}}
    return _load_checkpoint(
        path=path, state=state, strict=strict, optimizer_states_from_list=True, weights_only=weights_only
    )
