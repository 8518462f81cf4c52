"""Run by tests/test_sharding.py as a script (Lightning re-runs it once per process).

    python tests/shard_script.py OUT_DIR DEVICES

Trains the tiny demo model on CPU processes (gloo) under DDP, under mosaic with the backbone sharded
(checkpointing at step 2), resumed from that checkpoint, under Lightning's own FSDP2 path
(ModelParallelStrategy with ``fully_shard`` in ``configure_model``), each resumed from the other's
checkpoint, with the engine routing units through the recording backend (races checked), and with
FSDP2's bf16 mixed precision; every rank saves what it ends with.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from helpers import RecordRank, demo_data, demo_model, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.fsdp import MixedPrecisionPolicy

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.demo import DemoMultimodalModel
from lightning_mosaic.engine import RecordingBackend, find_races
from lightning_mosaic.engine.recording import memory_key


class LightningFSDP2(DemoMultimodalModel):
    """The demo model as a Lightning user shards it with ``fully_shard`` in ``configure_model``: the
    backbone apart, then the rest with the root (everything sharded over the data-parallel mesh)."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        fully_shard(self.llm, mesh=mesh)
        fully_shard(self, mesh=mesh)


def lightning_fsdp2(seed: int = 0) -> LightningFSDP2:
    import lightning as L

    L.seed_everything(seed, verbose=False)
    return LightningFSDP2("tiny")


def main() -> None:
    import lightning as L

    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    rank = int(os.environ.get("LOCAL_RANK", 0))
    # two steps per epoch on each rank: the step-2 checkpoint is the last batch of epoch 0
    steps, data = 4, lambda: demo_data(batch_size=4, steps_per_epoch=2 * devices)

    def run(name, strategy, model, ckpt_path=None, every=None):
        L.seed_everything(0, verbose=False)  # every run from the same global seed
        (out / name).mkdir(parents=True, exist_ok=True)
        callbacks = [RecordRank(str(out / name))]
        if every:
            callbacks.append(
                ModelCheckpoint(dirpath=out / name / "ckpt", every_n_train_steps=every, save_top_k=-1)
            )
        t = trainer(
            strategy, devices=devices, max_steps=steps, callbacks=callbacks, enable_checkpointing=bool(every)
        )
        t.fit(model, train_dataloaders=data(), ckpt_path=ckpt_path)

    run("ddp", DDPStrategy(), demo_model(), every=2)
    run("ddp_resumed", DDPStrategy(), demo_model(seed=1), out / "ddp/ckpt/epoch=0-step=2.ckpt")
    run("mosaic", MosaicStrategy(shard=["llm"]), demo_model(), every=2)
    ours, theirs = out / "mosaic/ckpt/epoch=0-step=2.ckpt", out / "lightning/ckpt/epoch=0-step=2.ckpt"
    run("mosaic_resumed", MosaicStrategy(shard=["llm"]), demo_model(seed=1), ours)
    run(
        "lightning",
        ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
        lightning_fsdp2(),
        every=2,
    )
    # each loads the other's sharded checkpoint (different initial weights: all must come from it)
    run(
        "lightning_resumed",
        ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
        lightning_fsdp2(seed=1),
        theirs,
    )
    run(
        "lightning_from_mosaic",
        ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1),
        lightning_fsdp2(seed=1),
        ours,
    )
    run("mosaic_from_lightning", MosaicStrategy(shard=["llm"]), demo_model(seed=1), theirs)
    # the engine routing units side by side through the recording backend, next to FSDP2's hooks
    backend, model = RecordingBackend(keep_alive=True), demo_model()
    with backend.recording():
        run("recorded", MosaicStrategy(shard=["llm"], plan="concurrent", backend=backend), model)
    # What the engine launched on each unit's stream, and the races the checker finds in it. Recorded
    # with keep_alive: on a CPU freed memory is reused across fake streams (CUDA's allocator keeps a
    # freed block to its stream), which would show as races of address reuse, not of the program.
    streams: dict[str, int] = {}
    for entry in backend.log:
        if entry.kind == "launch":
            streams[entry.stream] = streams.get(entry.stream, 0) + 1
    keys = {memory_key(p.to_local() if hasattr(p, "to_local") else p) for p in model.parameters()} - {None}
    races = [race.describe(backend.log) for race in find_races(backend.log, keys)]
    record = {"launches": streams, "races": races}
    (out / "recorded" / f"streams{rank}.json").write_text(json.dumps(record))
    # FSDP2's own mixed precision: bf16 compute and all-gathers, fp32 gradient reduction and master weights
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    run("bf16", MosaicStrategy(shard=["llm"], mp_policy=policy), demo_model())
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
