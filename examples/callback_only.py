"""An existing Lightning project adds one callback and gets a plan report, without changing its strategy.

    pip install ".[zoo,plot]"
    python examples/callback_only.py --tiny

``MosaicProfiler`` profiles every module during warmup (the training numbers stay those of plain
Lightning); after ``fit`` the profile is planned for this device and for an H100, and the report
shows what ``strategy="mosaic"`` would do and the predicted speedup.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from lightning_mosaic import MosaicProfiler
from lightning_mosaic.devices import DeviceSpec
from lightning_mosaic.planner import plan
from lightning_mosaic.zoo import build, data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--model", default="avlm", choices=("vlm", "avlm", "bind"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--root", default="callback_runs")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "edge"
    gpu = torch.cuda.is_available() and not args.tiny

    L.seed_everything(0)
    profiler = MosaicProfiler(warmup_steps=2, max_seconds=20 if args.tiny else 60)
    trainer = L.Trainer(
        accelerator="gpu" if gpu else "cpu",  # your strategy, unchanged
        devices=1,
        max_steps=4,
        default_root_dir=args.root,
        callbacks=[profiler],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(build(args.model, size), data(args.model, size, batch_size=args.batch_size, num_samples=64))

    profile = profiler.profile
    graph = profile.graph  # the module graph traced in the profiled step
    report = {}
    here = DeviceSpec.from_profile(profile)  # the device, as it was when profiled
    for device in (here, DeviceSpec.preset("h100")) if gpu else (here,):
        if device.sm_count != profiler.perf_model.capacity:
            continue  # a what-if for another device: lightning-mosaic plan --what-if
        chosen = plan(graph, profiler.perf_model, device, profile.batch_size)
        report[device.name] = chosen
        print(chosen.describe())
    print(profiler.perf_model.describe())
    return report


if __name__ == "__main__":
    main()
