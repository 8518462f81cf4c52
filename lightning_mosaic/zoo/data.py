"""Synthetic data of the right shapes for the zoo: images, log-mel frames, padded token ids with labels."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_mosaic.zoo.sizes import ZooSize, zoo_size

KINDS = ("vlm", "avlm", "bind")
PAD = 0


class ZooDataset(Dataset):
    """Deterministic random samples (sample ``i`` is always the same) for one kind of zoo model.

    Every sample has ``pixel_values`` (3 x image x image), token ``input_ids`` of a random length
    padded to ``text_tokens`` with ``attention_mask`` and ``labels`` (-100 on padding); ``avlm`` and
    ``bind`` add ``input_features`` (mels x frames).
    """

    def __init__(self, kind: str, size: str | ZooSize = "tiny", num_samples: int = 64, seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown zoo model {kind!r}; choose one of {', '.join(KINDS)}")
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be at least 1")
        self.kind, self.num_samples, self.seed = kind, num_samples, seed
        self.shapes = size if isinstance(size, ZooSize) else zoo_size(size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        s = self.shapes
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        length = int(torch.randint(max(1, s.text_tokens // 2), s.text_tokens + 1, (1,), generator=g))
        ids = torch.full((s.text_tokens,), PAD, dtype=torch.long)
        ids[:length] = torch.randint(3, s.vocab, (length,), generator=g)
        mask = (torch.arange(s.text_tokens) < length).long()
        sample = {
            "pixel_values": torch.randn(3, s.image, s.image, generator=g),
            "input_ids": ids,
            "attention_mask": mask,
        }
        if self.kind != "bind":
            sample["labels"] = ids.masked_fill(mask == 0, -100)
        else:
            sample["input_ids"][length - 1] = 2  # CLIP's text tower pools at the end-of-text token
        if self.kind in ("avlm", "bind"):
            sample["input_features"] = torch.randn(s.mels, s.frames, generator=g)
        return sample


class ZooDataModule(L.LightningDataModule):
    """Train and validation loaders of :class:`ZooDataset` (different seeds)."""

    def __init__(
        self, kind: str, size: str = "tiny", batch_size: int = 4, num_samples: int = 64, num_workers: int = 0
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.kind, self.size, self.batch_size = kind, size, batch_size
        self.num_samples, self.num_workers = num_samples, num_workers
        ZooDataset(kind, size, 1)  # checks kind and size now

    def train_dataloader(self) -> DataLoader:
        return self._loader(seed=0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(seed=1)

    def _loader(self, seed: int) -> DataLoader:
        data = ZooDataset(self.kind, self.size, self.num_samples, seed=seed)
        return DataLoader(data, batch_size=self.batch_size, num_workers=self.num_workers)
