"""Projects that ``import pytorch_lightning as pl``: the mirror of the Lightning layer serves them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lightning_mosaic._mirror import MIRROR, source_file, translate

pl = pytest.importorskip("pytorch_lightning")


def run(code: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class TwoTowers(pl.LightningModule):
    """A pytorch_lightning module with two encoders read by a head, as public code writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 16))
        self.text = nn.Sequential(nn.Embedding(20, 16), nn.Flatten(), nn.Linear(5 * 16, 16))
        self.head = nn.Linear(32, 3)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.image(images), self.text(tokens)], dim=-1))

    def training_step(self, batch, batch_idx):
        images, tokens, labels = batch
        loss = nn.functional.cross_entropy(self(images, tokens), labels)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(
            torch.randn(64, 12, generator=g),
            torch.randint(0, 20, (64, 5), generator=g),
            torch.randint(0, 3, (64,), generator=g),
        )
        return torch.utils.data.DataLoader(data, batch_size=8)


def fit(strategy, max_steps: int = 8, **kwargs) -> tuple[pl.Trainer, TwoTowers]:
    pl.seed_everything(0, verbose=False)
    model = TwoTowers()
    options = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t = pl.Trainer(strategy=strategy, **{**options, **kwargs})
    t.fit(model)
    return t, model


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_translate_renames_the_imports_and_nothing_else():
    source = (
        "from lightning.pytorch.strategies import DDPStrategy\n"
        "from lightning.fabric.plugins import CheckpointIO\n"
        "import lightning.pytorch as pl\n"
        "from lightning_mosaic.lightning.callback import MosaicProfiler\n"
        "from lightning_mosaic.plan import Plan\n"
        "x = my.lightning.pytorch  # not an import of Lightning\n"
        "'plain Lightning trains'\n"
    )
    assert translate(source) == (
        "from pytorch_lightning.strategies import DDPStrategy\n"
        "from lightning_fabric.plugins import CheckpointIO\n"
        "import pytorch_lightning as pl\n"
        f"from {MIRROR}.callback import MosaicProfiler\n"
        "from lightning_mosaic.plan import Plan\n"
        "x = my.lightning.pytorch  # not an import of Lightning\n"
        "'plain Lightning trains'\n"
    )
    assert source_file(MIRROR).name == "__init__.py"
    assert source_file(f"{MIRROR}.strategy").name == "strategy.py"
    assert source_file(f"{MIRROR}.nosuch") is None and source_file("lightning_mosaic.plan") is None


def test_the_mirror_is_a_pytorch_lightning_strategy_and_leaves_lightning_alone():
    import lightning.pytorch
    from lightning_mosaic.pytorch_lightning import MosaicProfiler as PLProfiler
    from lightning_mosaic.pytorch_lightning import MosaicStrategy as PLStrategy

    from lightning_mosaic.lightning import MosaicStrategy

    assert PLStrategy is not MosaicStrategy
    assert issubclass(PLStrategy, pl.strategies.Strategy)
    assert isinstance(PLStrategy(), pl.strategies.DDPStrategy), "a DDP strategy until the devices are known"
    assert not issubclass(PLStrategy, lightning.pytorch.strategies.Strategy)
    assert not isinstance(PLStrategy(), lightning.pytorch.strategies.Strategy)
    assert isinstance(MosaicStrategy(), lightning.pytorch.strategies.DDPStrategy)
    assert issubclass(PLProfiler, pl.Callback)
    assert PLStrategy.__module__ == f"{MIRROR}.strategy"
    assert pl.strategies.StrategyRegistry["mosaic"]["strategy"] is PLStrategy
    assert lightning.pytorch.strategies.StrategyRegistry["mosaic"]["strategy"] is MosaicStrategy


def test_pl_trainer_with_strategy_mosaic_trains_bitwise_equal_to_plain():
    from lightning_mosaic.pytorch_lightning import MosaicStrategy

    _, plain = fit("auto")
    t, ours = fit("mosaic")
    assert isinstance(t.strategy, MosaicStrategy) and t.global_step == 8
    assert set(t.strategy.units) == {"image", "text", "head"}
    initial = parameters(fit("auto", max_steps=0)[1])
    assert all(not torch.equal(initial[name], p) for name, p in parameters(plain).items())
    assert all(torch.equal(p, parameters(ours)[name]) for name, p in parameters(plain).items())


def test_pl_trainer_runs_the_whole_loop_profile_plan_apply(tmp_path):
    from lightning_mosaic.pytorch_lightning import MosaicStrategy

    from lightning_mosaic.plan import Plan

    _, plain = fit("auto")
    strategy = MosaicStrategy(backend="cpu", warmup_steps=2, profile_seconds=20)
    _, ours = fit(strategy, default_root_dir=tmp_path, logger=pl.loggers.CSVLogger(tmp_path))
    assert strategy.planned and strategy.session.profile is not None
    assert Plan.load(tmp_path / "lightning_logs" / "version_0" / "mosaic_plan.json") == strategy.plan
    assert all(torch.equal(p, parameters(ours)[name]) for name, p in parameters(plain).items())


def test_the_profiler_callback_serves_pl_trainers_beside_their_strategy(tmp_path):
    from lightning_mosaic.pytorch_lightning import MosaicProfiler

    from lightning_mosaic.profile import Profile

    _, plain = fit("auto")
    profiler = MosaicProfiler(warmup_steps=2, warmup=1, repeats=2, max_seconds=30, progress=False)
    _, ours = fit("auto", callbacks=[profiler], default_root_dir=tmp_path)
    assert profiler.profile.module_names == ["image", "text", "head"]
    assert Profile.load(tmp_path / "mosaic_profile.json") == profiler.profile
    assert all(torch.equal(p, parameters(ours)[name]) for name, p in parameters(plain).items())


@pytest.mark.parametrize("first", ["lightning_mosaic", "pytorch_lightning", "the mirror's strategy class"])
def test_mosaic_is_registered_with_pytorch_lightning_whichever_is_imported_first(first):
    imports = {
        "lightning_mosaic": "import lightning_mosaic\nimport pytorch_lightning",
        "pytorch_lightning": "import pytorch_lightning\nimport lightning_mosaic",
        "the mirror's strategy class": "from lightning_mosaic.pytorch_lightning import MosaicStrategy\n"
        "import pytorch_lightning",
    }[first]
    done = run(
        imports
        + textwrap.dedent(
            """
            from pytorch_lightning import Trainer
            from pytorch_lightning.strategies import StrategyRegistry
            from lightning_mosaic.pytorch_lightning import MosaicStrategy
            assert StrategyRegistry["mosaic"]["strategy"] is MosaicStrategy
            assert StrategyRegistry["mosaic_spawn"]["init_params"] == {"start_method": "spawn"}
            trainer = Trainer(strategy="mosaic", accelerator="cpu", devices=1, logger=False)
            assert isinstance(trainer.strategy, MosaicStrategy)
            """
        )
    )
    assert "could not be registered" not in done.stderr


def test_the_mirror_without_pytorch_lightning_says_what_to_install():
    done = run(
        """
        import sys
        sys.modules["pytorch_lightning"] = None  # not installed
        try:
            import lightning_mosaic.pytorch_lightning
        except ModuleNotFoundError as err:
            print(err)
        else:
            raise AssertionError("imported")
        """
    )
    assert "pip install pytorch-lightning" in done.stdout
