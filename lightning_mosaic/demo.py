"""A small vision + audio + language model trained with ``strategy="mosaic"``.

Run ``lightning-mosaic demo`` (or ``python -m lightning_mosaic.demo``): it trains on synthetic
data, on the CPU by default, and prints the traced module graph and the plan in use. The model is
written the way users write theirs: two encoders, user code that concatenates their outputs, a
projector and a causal language model that reads the projected tokens before the text.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_mosaic.engine import BACKENDS
from lightning_mosaic.lightning import MosaicStrategy


@dataclass(frozen=True)
class DemoSize:
    """Shapes of the demo model and its data."""

    image: int  # image side, pixels
    patch: int  # ViT patch side
    mels: int  # log-mel bins
    frames: int  # audio frames
    width: int  # encoder width
    layers: int  # encoder layers
    heads: int  # attention heads of the encoders
    llm_width: int
    llm_layers: int
    vocab: int
    text: int  # text tokens per sample
    llm_heads: int = 0  # attention heads of the language model (0: as many as the encoders')

    def __post_init__(self) -> None:
        llm_heads = self.llm_heads or self.heads
        for width, heads, what in ((self.width, self.heads, "encoder"), (self.llm_width, llm_heads, "LLM")):
            if width % heads:
                raise ValueError(f"{what} width {width} is not divisible by its {heads} attention heads")
        if self.image % self.patch:
            raise ValueError(f"image side {self.image} is not a multiple of the patch side {self.patch}")


SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        image=16,
        patch=4,
        mels=8,
        frames=16,
        width=32,
        layers=1,
        heads=2,
        llm_width=32,
        llm_layers=1,
        vocab=64,
        text=8,
    ),
    "small": DemoSize(
        image=32,
        patch=4,
        mels=32,
        frames=64,
        width=64,
        layers=2,
        heads=4,
        llm_width=96,
        llm_layers=2,
        vocab=256,
        text=16,
    ),
    "medium": DemoSize(  # encoders that leave an H100 underused at small batches
        image=224,
        patch=16,
        mels=80,
        frames=400,
        width=512,
        layers=6,
        heads=8,
        llm_width=768,
        llm_heads=12,
        llm_layers=6,
        vocab=8000,
        text=64,
    ),
    "base": DemoSize(
        image=224,
        patch=16,
        mels=80,
        frames=1000,
        width=768,
        layers=12,
        heads=12,
        llm_width=1024,
        llm_heads=16,
        llm_layers=12,
        vocab=32000,
        text=128,
    ),
}


def _size(size: str | DemoSize) -> DemoSize:
    if isinstance(size, DemoSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def _blocks(width: int, layers: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        dim_feedforward=4 * width,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class VisionEncoder(nn.Module):
    """A ViT: patch embedding, transformer blocks; returns one token per patch."""

    def __init__(self, s: DemoSize) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, s.width, kernel_size=s.patch, stride=s.patch)
        self.pos = nn.Parameter(torch.randn(1, (s.image // s.patch) ** 2, s.width) * 0.02)
        self.blocks = _blocks(s.width, s.layers, s.heads)
        self.norm = nn.LayerNorm(s.width)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x))


class AudioEncoder(nn.Module):
    """A Whisper-style encoder: strided convolution over log-mel frames, transformer blocks."""

    def __init__(self, s: DemoSize) -> None:
        super().__init__()
        self.conv = nn.Conv1d(s.mels, s.width, kernel_size=3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.randn(1, (s.frames + 1) // 2, s.width) * 0.02)
        self.blocks = _blocks(s.width, s.layers, s.heads)
        self.norm = nn.LayerNorm(s.width)

    def forward(self, mels: Tensor) -> Tensor:
        x = F.gelu(self.conv(mels)).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x))


class Projector(nn.Module):
    """Maps encoder tokens into the language model's embedding space (LLaVA's MLP projector)."""

    def __init__(self, s: DemoSize) -> None:
        super().__init__()
        self.fc1 = nn.Linear(s.width, s.llm_width)
        self.fc2 = nn.Linear(s.llm_width, s.llm_width)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(tokens)))


class CausalLM(nn.Module):
    """A decoder-only language model that reads a prefix of embeddings before its text tokens."""

    def __init__(self, s: DemoSize, prefix_tokens: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.llm_width)
        self.pos = nn.Parameter(torch.randn(1, prefix_tokens + s.text, s.llm_width) * 0.02)
        self.blocks = _blocks(s.llm_width, s.llm_layers, s.llm_heads or s.heads)
        self.norm = nn.LayerNorm(s.llm_width)
        self.head = nn.Linear(s.llm_width, s.vocab, bias=False)

    def forward(self, prefix: Tensor, input_ids: Tensor) -> Tensor:
        x = torch.cat([prefix, self.embed(input_ids)], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        x = self.norm(self.blocks(x, mask=mask, is_causal=True))
        return self.head(x[:, prefix.shape[1] :])


class DemoMultimodalModel(L.LightningModule):
    """Vision and audio encoders, a projector and a causal LM, trained on next-token prediction."""

    def __init__(self, size: str = "small", lr: float = 1e-3, freeze_vision: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        s = _size(size)
        prefix = (s.image // s.patch) ** 2 + (s.frames + 1) // 2
        self.vision = VisionEncoder(s)
        self.audio = AudioEncoder(s)
        self.projector = Projector(s)
        self.llm = CausalLM(s, prefix)
        if freeze_vision:
            self.vision.requires_grad_(False)

    def forward(self, pixels: Tensor, mels: Tensor, input_ids: Tensor) -> Tensor:
        tokens = torch.cat([self.vision(pixels), self.audio(mels)], dim=1)
        return self.llm(self.projector(tokens), input_ids)

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self(batch["pixels"], batch["mels"], batch["input_ids"])
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("test_loss", loss)
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch["pixels"], batch["mels"], batch["input_ids"]).argmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=self.hparams.lr)


class SyntheticMultimodal(Dataset):
    """Deterministic random images, log-mel frames and token ids (sample ``i`` is always the same)."""

    def __init__(self, size: str | DemoSize = "small", num_samples: int = 256, seed: int = 0) -> None:
        self.s = _size(size)
        self.num_samples = num_samples
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        s = self.s
        pixels = torch.randn(3, s.image, s.image, generator=g)
        # Text that depends on the image, so there is something to learn.
        first = int(pixels.mean().abs().mul(1e4).item()) % s.vocab
        ids = (first + torch.arange(s.text) * (1 + index % 3)) % s.vocab
        return {"pixels": pixels, "mels": torch.randn(s.mels, s.frames, generator=g), "input_ids": ids}


class DemoDataModule(L.LightningDataModule):
    """Train / val / test / predict loaders over :class:`SyntheticMultimodal`."""

    def __init__(
        self, size: str = "small", batch_size: int = 8, num_samples: int = 256, seed: int = 0
    ) -> None:
        super().__init__()
        self.size, self.batch_size, self.num_samples, self.seed = size, batch_size, num_samples, seed

    def _loader(self, offset: int) -> DataLoader:
        data = SyntheticMultimodal(self.size, self.num_samples, self.seed + offset)
        return DataLoader(data, batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(3)


def _parse_quotas(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, int] | None:
    quotas = {}
    for item in items:
        name, _, sms = item.partition("=")
        if not name or not sms.isdigit():
            parser.error(f"--quota takes MODULE=SMS with a whole number of SMs, got {item!r}")
        quotas[name] = int(sms)
    return quotas or None


def main(argv: Sequence[str] | None = None) -> int:
    """Train the demo model under ``strategy="mosaic"`` and print the module graph and the plan."""
    parser = argparse.ArgumentParser(prog="lightning-mosaic demo", description=main.__doc__)
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="small", help="model and data size (default: small)"
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default: 8)")
    parser.add_argument("--accelerator", default="cpu", help="cpu (default), gpu or auto")
    parser.add_argument("--devices", default="1", help="number of devices (default: 1)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision (default: 32-true)")
    parser.add_argument("--freeze-vision", action="store_true", help="freeze the vision encoder")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="where units run (default: auto)")
    parser.add_argument(
        "--plan",
        default="auto",
        help="auto (profile during warmup, then plan; default), temporal, concurrent, or a plan JSON file",
    )
    parser.add_argument(
        "--micro-batches",
        default="auto",
        help="micro-batches per step: auto (the plan's; default) or a number",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=3, help="plain steps before profiling (default: 3)"
    )
    parser.add_argument(
        "--out",
        default="mosaic_demo",
        help="folder for the profile, plan and timeline (default: mosaic_demo)",
    )
    parser.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="MODULE=SMS",
        help="SM quota of a module on a GPU, e.g. --quota vision=32 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    micro_batches = int(args.micro_batches) if args.micro_batches.isdigit() else args.micro_batches

    L.seed_everything(args.seed, verbose=False)
    model = DemoMultimodalModel(args.size, freeze_vision=args.freeze_vision)
    data = DemoDataModule(args.size, batch_size=args.batch_size, num_samples=args.steps * args.batch_size)
    quotas = _parse_quotas(parser, args.quota)
    try:
        strategy = MosaicStrategy(
            plan="concurrent" if quotas and args.plan == "auto" else args.plan,
            micro_batches=micro_batches,
            backend=args.backend,
            quotas=quotas,
            warmup_steps=args.warmup_steps,
        )
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    trainer = L.Trainer(
        strategy=strategy,
        accelerator=args.accelerator,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        precision=args.precision,
        max_steps=args.steps,
        default_root_dir=args.out,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    elapsed = time.perf_counter() - start
    if not trainer.is_global_zero:
        return 0
    loss = trainer.callback_metrics.get("train_loss")
    print(f"\nTrained the demo model ({args.size}: {asdict(_size(args.size))})")
    print(f"{trainer.global_step} steps in {elapsed:.1f} s, final train_loss {float(loss):.4f}")
    assert strategy.graph is not None and strategy.plan is not None
    print(strategy.graph.describe())
    print(strategy.plan.describe())
    print(strategy.engine.backend.describe())
    print(f"routed calls per module: {dict(strategy.engine.calls)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
