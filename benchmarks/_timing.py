"""Shared by the training benchmarks: step timing and the facts of the machine a result came from."""

from __future__ import annotations

import datetime
import time
from typing import Any

import lightning as L
import torch

import lightning_mosaic
from lightning_mosaic.planner import device_name


class StepTimer(L.Callback):
    """Wall time of every training step (forward, backward, optimizer), the GPU synchronised at both ends."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        self.times.append(time.perf_counter() - self._start)


def quiet_trainer(strategy: Any, accelerator: str, precision: str, steps: int, **kwargs: Any) -> L.Trainer:
    """One device, ``steps`` training steps, no logger, checkpoints, progress bar or validation."""
    options: dict[str, Any] = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return L.Trainer(
        strategy=strategy, accelerator=accelerator, devices=1, precision=precision, max_steps=steps, **options
    )


def environment(device: torch.device) -> dict[str, Any]:
    """Date, device and versions, for the head of a result file."""
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "lightning_mosaic": lightning_mosaic.__version__,
    }
    if device.type == "cuda":
        info["sm_count"] = torch.cuda.get_device_properties(device).multi_processor_count
    return info
