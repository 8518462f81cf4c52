"""Shared by the training benchmarks: step timing and the facts of the machine a result came from."""

from __future__ import annotations

import datetime
import time
from typing import Any

import lightning as L
import torch

import lightning_mosaic
from lightning_mosaic.devices import device_name


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


class GpuMonitor(L.Callback):
    """GPU utilisation and memory while training: NVML samples every ``interval`` s, torch's peak.

    ``summary()`` gives the mean and max NVML utilisation (%), the most device memory NVML saw in
    use (bytes, all processes) and torch's peak allocated memory; None where there is no GPU or no
    NVML (``nvidia-ml-py``), with the reason in ``note``.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[int] = []
        self.used = 0
        self.peak_allocated: int | None = None
        self.note = ""
        self._stop: Any = None
        self._thread: Any = None

    def on_train_start(self, trainer, pl_module) -> None:
        import threading

        device = trainer.strategy.root_device
        if device.type != "cuda":
            self.note = "no GPU"
            return
        torch.cuda.reset_peak_memory_stats(device)
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception as err:  # no nvidia-ml-py, or no driver access
            self.note = f"NVML unavailable: {err}"
            return
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                self.used = max(self.used, pynvml.nvmlDeviceGetMemoryInfo(handle).used)

        self._thread = threading.Thread(target=sample, name="nvml-sampler", daemon=True)
        self._thread.start()

    def on_train_end(self, trainer, pl_module) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self.peak_allocated = torch.cuda.max_memory_allocated(device)
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        samples = self.samples
        return {
            "gpu_util_mean": sum(samples) / len(samples) if samples else None,
            "gpu_util_max": max(samples) if samples else None,
            "memory_used_bytes": self.used or None,
            "peak_allocated_bytes": self.peak_allocated,
            "note": self.note,
        }


def training_precision(accelerator: str, asked: str | None) -> str:
    """The precision to measure in: ``asked``, else bf16-mixed on a GPU (what users train in) and
    32-true on a CPU. fp32 matmuls use TF32 where the GPU has it (``set_float32_matmul_precision``)."""
    torch.set_float32_matmul_precision("high")
    if asked is not None:
        return asked
    return "bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"


def quiet_trainer(strategy: Any, accelerator: str, precision: str, steps: int, **kwargs: Any) -> L.Trainer:
    """One device (unless ``devices=`` says otherwise), ``steps`` training steps, no logger,
    checkpoints, progress bar or validation."""
    options: dict[str, Any] = dict(
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return L.Trainer(
        strategy=strategy, accelerator=accelerator, precision=precision, max_steps=steps, **options
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
