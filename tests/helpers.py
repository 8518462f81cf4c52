"""Models, data and assertions shared by the tests."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_mosaic.demo import DemoDataModule, DemoMultimodalModel
from lightning_mosaic.graph import ModuleGraph
from lightning_mosaic.profile import MemorySample, ModuleInfo, Profile, Sample, fingerprint, precision_of

TINY = "tiny"


def demo_model(seed: int = 0, **kwargs: Any) -> DemoMultimodalModel:
    """The pure-torch two-encoder model (user code concatenates the encoders' outputs)."""
    L.seed_everything(seed, verbose=False)
    return DemoMultimodalModel(TINY, **kwargs)


def demo_data(batch_size: int = 4, steps_per_epoch: int = 10) -> DemoDataModule:
    return DemoDataModule(TINY, batch_size=batch_size, num_samples=batch_size * steps_per_epoch)


def trainer(strategy: Any = "auto", **kwargs: Any) -> L.Trainer:
    """A quiet CPU Trainer for comparisons."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return L.Trainer(strategy=strategy, **options)


def parameters(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter, whole (a sharded one gathered from every rank: all ranks must call this)."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }


def assert_bitwise_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"parameters differ: {different}"


def assert_trained(before: dict[str, Tensor], model: nn.Module) -> None:
    """Training moved every trainable parameter of ``model`` and no frozen one.

    Guards the equality checks: two runs that both did nothing would be equal too.
    """
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == p.requires_grad, f"{name}: moved={moved}, requires_grad={p.requires_grad}"


# ---------------------------------------------------------------- Hugging Face model from tiny configs


class TinyHFMultimodal(L.LightningModule):
    """CLIPVisionModel (frozen) + WhisperEncoder + projectors + Qwen2ForCausalLM fed through inputs_embeds."""

    def __init__(self, freeze_vision: bool = True, lr: float = 1e-3, optimizer: str = "adamw") -> None:
        super().__init__()
        from transformers import (
            CLIPVisionConfig,
            CLIPVisionModel,
            Qwen2Config,
            Qwen2ForCausalLM,
            WhisperConfig,
        )
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.lr, self.optimizer = lr, optimizer
        self.vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            )
        )
        self.audio = WhisperEncoder(
            WhisperConfig(
                d_model=32,
                encoder_layers=2,
                encoder_attention_heads=4,
                encoder_ffn_dim=64,
                num_mel_bins=8,
                max_source_positions=8,
            )
        )
        self.vision_proj = nn.Linear(32, 48)
        self.audio_proj = nn.Linear(32, 48)
        self.llm = Qwen2ForCausalLM(
            Qwen2Config(
                hidden_size=48,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=128,
                max_position_embeddings=128,
                tie_word_embeddings=False,
            )
        )
        if freeze_vision:
            self.vision.requires_grad_(False)

    def forward(self, pixel_values: Tensor, input_features: Tensor, input_ids: Tensor) -> Any:
        vision = self.vision(pixel_values=pixel_values).last_hidden_state
        audio = self.audio(input_features).last_hidden_state
        text = self.llm.get_input_embeddings()(input_ids)
        embeds = torch.cat([self.vision_proj(vision), self.audio_proj(audio), text], dim=1)
        ignore = torch.full(
            (input_ids.shape[0], vision.shape[1] + audio.shape[1]), -100, dtype=input_ids.dtype
        )
        labels = torch.cat([ignore.to(input_ids.device), input_ids], dim=1)
        return self.llm(inputs_embeds=embeds, labels=labels)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = (p for p in self.parameters() if p.requires_grad)
        if self.optimizer == "sgd":
            return torch.optim.SGD(trainable, lr=self.lr)
        return torch.optim.AdamW(trainable, lr=self.lr)


class HFSynthetic(Dataset):
    def __init__(self, num_samples: int = 40) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(index)
        return {
            "pixel_values": torch.randn(3, 32, 32, generator=g),
            "input_features": torch.randn(8, 16, generator=g),
            "input_ids": torch.randint(0, 128, (6,), generator=g),
        }


def hf_model(seed: int = 0, **kwargs: Any) -> TinyHFMultimodal:
    L.seed_everything(seed, verbose=False)
    return TinyHFMultimodal(**kwargs)


def hf_loader(batch_size: int = 4, num_samples: int = 40) -> DataLoader:
    return DataLoader(HFSynthetic(num_samples), batch_size=batch_size)


# ---------------------------------------------------------------- small building blocks for graph tests


class Encoder(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(x))


class RecordRank(L.Callback):
    """Saves each rank's parameters and module graph at the end of fit (ranks are separate processes)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning_mosaic.sharding import local_bytes

        graph = getattr(trainer.strategy, "graph", None)
        plan = getattr(trainer.strategy, "plan", None)
        layout = getattr(trainer.strategy, "layout", None)
        torch.save(
            {
                "params": parameters(pl_module),
                "graph": graph.to_dict() if graph is not None else None,
                "plan": plan.to_dict() if plan is not None else None,
                "layout": layout.to_dict() if layout is not None else None,
                "local_bytes": {n: local_bytes(m) for n, m in pl_module.named_children()},
            },
            f"{self.directory}/rank{trainer.global_rank}.pt",
        )


# ---------------------------------------------------------------- the engine with the recording fake


def demo_batch(seed: int = 0, batch_size: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixels": torch.randn(batch_size, 3, 16, 16, generator=g),
        "mels": torch.randn(batch_size, 8, 16, generator=g),
        "input_ids": torch.randint(0, 64, (batch_size, 8), generator=g),
    }


def long_lived(model: nn.Module) -> set[int]:
    """Memory keys of the parameters and buffers (checked for write-after-read races)."""
    from lightning_mosaic.engine.recording import memory_key

    keys = {memory_key(t) for t in [*model.parameters(), *model.buffers()]}
    keys.discard(None)
    return keys


def train_recorded(
    model: nn.Module, loss_fn: Any, steps: int = 2, engine: Any = None, after_step: Any = None, **attach: Any
) -> Any:
    """Train ``model`` for ``steps`` under the engine with a RecordingBackend; returns the engine.

    ``after_step()``, if given, runs after each optimizer step (user code between steps).
    """
    from lightning_mosaic.engine import Engine, RecordingBackend
    from lightning_mosaic.selection import select_modules

    backend = RecordingBackend()
    engine = engine or Engine()
    engine.attach(attach.pop("units", None) or select_modules(model), backend=backend, **attach)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with backend.recording():
        for step in range(steps):
            with engine.step(train=True):
                loss = loss_fn(step)
            engine.before_backward(loss)
            loss.backward()
            engine.join()
            optimizer.step()
            optimizer.zero_grad()
            if after_step is not None:
                after_step()
    return engine


# ---------------------------------------------------------------- timing and profiles made up for tests


class FakeClock:
    """Marks are whatever ``now`` is: the test moves time forward itself."""

    def __init__(self) -> None:
        self.now = 0.0

    def mark(self) -> float:
        return self.now

    def seconds(self, a: float, b: float) -> float:
        return b - a


def side_by_side_profile(units: dict, capacity: int, noisy: str | None = None) -> Profile:
    """A profile of ``vision``, ``audio`` -> ``head`` on which the planner puts the two encoders side by
    side: neither gains from more than one SM of ``capacity`` (an "sm" device that is this CPU), the
    head uses them all. The times of unit ``noisy`` jump around (a model cannot predict them)."""
    samples, memory = [], []
    for name in units:
        for batch in (4, 8):
            memory.append(MemorySample(name, batch, activation_bytes=1000 * batch))
            for quota in range(1, capacity + 1):
                for pass_ in ("forward", "backward"):
                    seconds = 0.01 * batch if name != "head" else 0.004 * batch / quota
                    if name == noisy:
                        seconds *= random.Random(len(samples)).choice((0.2, 1.0, 5.0))
                    samples.append(Sample(name, pass_, batch, quota, seconds, True, 3, 0.0, "", 1e-6))
    graph = ModuleGraph.from_edges({"vision": [], "audio": [], "head": ["vision", "audio"]})
    return Profile(
        fingerprint=fingerprint(units, precision_of("32-true")),
        device="cpu",
        device_type="cpu",
        quota_unit="sm",
        capacity=capacity,
        granularity=[1, 1],
        torch_version=str(torch.__version__),
        batch_size=8,
        batch_fractions=[0.5, 1.0],
        quotas=list(range(1, capacity + 1)),
        modules=[ModuleInfo(n, 100, True, True, 8) for n in units],
        samples=samples,
        memory=memory,
        graph=graph,
    )
