"""``LightningCLI`` with a config file: any zoo model and ``strategy: mosaic`` from YAML.

    pip install ".[zoo]"
    python examples/lightning_cli.py fit --config examples/config_avlm.yaml
    python examples/lightning_cli.py fit --config examples/config_avlm.yaml --tiny   # CPU, seconds

``--tiny`` is this script's shortcut for the tiny sizes on the CPU with a few steps.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

import lightning_mosaic  # noqa: F401  (registers strategy="mosaic")
from lightning_mosaic.zoo import ZooDataModule, ZooModule

TINY = [
    "--model.init_args.size=tiny",
    "--data.size=tiny",
    "--data.batch_size=4",
    "--data.num_samples=16",
    "--trainer.accelerator=cpu",
    "--trainer.precision=32-true",
    "--trainer.max_steps=3",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=3",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
]


def main(argv: list[str] | None = None) -> LightningCLI:
    args = list(sys.argv[1:] if argv is None else argv)
    tiny = "--tiny" in args
    if tiny:
        args.remove("--tiny")
        args += TINY
    options = {"save_config_callback": None} if tiny else {}  # a quick run leaves no config.yaml behind
    return LightningCLI(ZooModule, ZooDataModule, subclass_mode_model=True, args=args, **options)


if __name__ == "__main__":
    main()
