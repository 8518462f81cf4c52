"""Per-unit CUDA graphs on a GPU: same numbers as eager, and the host time they save.

1. Numerics: the demo model trains 10 steps under plain Lightning and under
   ``MosaicStrategy(plan="temporal", graphs=True)``, in fp32 and in bf16-mixed; the parameters must
   be allclose (graphs replay the same kernels; bitwise equality is not promised on a GPU). Which
   units were captured, and why any was not, is recorded.
2. Host time per unit: the demo model's training loop through the engine, eager vs every unit
   graphed: the host's time inside each unit's forward call (hooks around it, no synchronisation),
   the host's time of a whole step until ``backward()`` returns, and the device's step time; and
   the runner's bookkeeping per graphed call (signature, parameter checks), which a replay adds.

    python benchmarks/graphs_check.py --out graphs.json                    # on a GPU
    python benchmarks/graphs_check.py --accelerator cpu --size tiny --out g.json   # CPU: emulated graphs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_mosaic import MosaicStrategy
from lightning_mosaic.demo import DemoDataModule, DemoMultimodalModel
from lightning_mosaic.engine import Engine
from lightning_mosaic.engine.graphable import signature
from lightning_mosaic.engine.graphs import CudaCapture, EmulatedCapture, GraphedCall, device_type_of
from lightning_mosaic.inputs import InputCapture
from lightning_mosaic.selection import select_modules

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, quiet_trainer

TOLERANCE = {"32-true": dict(rtol=1e-4, atol=1e-5), "bf16-mixed": dict(rtol=1e-2, atol=1e-3)}


class _Graphs(L.Callback):
    """What the engine's graph runner says at the last training step (it is detached after fit)."""

    def __init__(self) -> None:
        self.described, self.dropped = "", {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        runner = getattr(getattr(trainer.strategy, "engine", None), "graphs", None)
        if runner is not None:
            self.described, self.dropped = runner.describe(), dict(runner.dropped)


def numerics(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    results = {}
    for name in ("eager", "graphs"):
        L.seed_everything(0, verbose=False)
        model = DemoMultimodalModel(args.size)
        strategy: Any = "auto" if name == "eager" else MosaicStrategy(plan="temporal", graphs=True)
        seen = _Graphs()
        with tempfile.TemporaryDirectory() as root:
            trainer = quiet_trainer(strategy, args.accelerator, precision, args.steps, default_root_dir=root)
            trainer.callbacks.append(seen)
            trainer.fit(model, DemoDataModule(args.size, batch_size=args.batch_size, num_samples=1000))
        results[name] = ({n: p.detach().float().cpu() for n, p in model.named_parameters()}, seen)
    (eager, _), (graphed, seen) = results["eager"], results["graphs"]
    gaps = {n: (eager[n] - graphed[n]).abs().max().item() for n in eager}
    close = all(torch.allclose(graphed[n], eager[n], **TOLERANCE[precision]) for n in eager)
    return {
        "precision": precision,
        "steps": args.steps,
        "allclose": close,
        "tolerance": TOLERANCE[precision],
        "max_abs_difference": max(gaps.values()),
        "bitwise_equal": all(g == 0 for g in gaps.values()),
        "graphs": seen.described,
        "eager_units": seen.dropped,
    }


def _start(starts: dict, unit: str) -> None:
    starts[unit] = time.perf_counter()


def _stop(starts: dict, spent: dict, unit: str) -> None:
    spent[unit].append(time.perf_counter() - starts[unit])


def bookkeeping(args: argparse.Namespace, device: torch.device, calls: int = 2000) -> dict[str, float]:
    """Microseconds the runner spends per graphed call before the replay: the call's signature and
    the check that parameters and buffers are where they were captured (median of 5 x ``calls``)."""
    model = DemoMultimodalModel(args.size).to(device)
    data = DemoDataModule(args.size, batch_size=args.batch_size, num_samples=args.batch_size)
    data.setup("fit")
    batch = {k: v.to(device) for k, v in next(iter(data.train_dataloader())).items()}
    units = select_modules(model)
    with InputCapture(units) as recorded:
        model._loss(batch)
    out = {}
    for unit, call in recorded.captured.items():
        module, a, k = units[unit], call.args, call.kwargs
        graphed = GraphedCall(module, module.forward, a, k, EmulatedCapture())
        rounds = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(calls):
                signature(module, a, k, device_type_of(module, a, k))
                graphed.valid()
            rounds.append((time.perf_counter() - began) / calls * 1e6)
        out[unit] = statistics.median(rounds)
    return out


def host_times(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per unit: host seconds inside its forward call, eager vs graphed; per step: host until
    backward returns, and device time."""
    out: dict[str, Any] = {}
    for name in ("eager", "graphs"):
        L.seed_everything(0, verbose=False)
        model = DemoMultimodalModel(args.size).to(device)
        units = select_modules(model)
        capture = (
            (CudaCapture(device) if device.type == "cuda" else EmulatedCapture())
            if name == "graphs"
            else None
        )
        engine = Engine()
        engine.attach(units, device=device, graphs=list(units) if capture else [], capture=capture)
        spent: dict[str, list[float]] = {u: [] for u in units}
        starts: dict[str, float] = {}
        handles = []
        for unit, module in units.items():
            handles.append(module.register_forward_pre_hook(lambda m, a, u=unit, t=starts: _start(t, u)))
            handles.append(
                module.register_forward_hook(lambda m, a, o, u=unit, t=starts, s=spent: _stop(t, s, u))
            )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        data = DemoDataModule(
            args.size, batch_size=args.batch_size, num_samples=args.batch_size * (args.steps + 3)
        )
        data.setup("fit")
        host, device_s = [], []
        for step, batch in enumerate(data.train_dataloader()):
            batch = {k: v.to(device) for k, v in batch.items()}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            with engine.step(train=True):
                loss = model._loss(batch)
            loss.backward()
            issued = time.perf_counter() - began
            engine.join()
            optimizer.step()
            optimizer.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= 3:  # the first steps capture the graphs
                host.append(issued)
                device_s.append(time.perf_counter() - began)
        for handle in handles:
            handle.remove()
        dropped = dict(engine.graphs.dropped) if engine.graphs is not None else {}
        engine.detach()
        out[name] = {
            "unit_forward_host_s": {u: statistics.median(t[3:]) for u, t in spent.items() if len(t) > 3},
            "step_host_s": statistics.median(host),
            "step_s": statistics.median(device_s),
            "eager_units": dropped,
        }
    out["bookkeeping_us"] = bookkeeping(args, device)
    out["forward_host_ratio"] = {
        u: out["eager"]["unit_forward_host_s"][u] / g
        for u, g in out["graphs"]["unit_forward_host_s"].items()
        if g > 0
    }
    out["step_speedup"] = out["eager"]["step_s"] / out["graphs"]["step_s"]
    return out


@contextmanager
def _emulated_on_cpu(device: torch.device) -> Iterator[None]:
    """On a CPU (a rehearsal), sessions capture with EmulatedCapture: replays run eagerly and the
    numbers stay bitwise. Put back afterwards."""
    if device.type != "cpu":
        yield
        return
    import lightning_mosaic.session as session

    saved = session.capture_for
    session.capture_for = lambda _: EmulatedCapture()
    try:
        yield
    finally:
        session.capture_for = saved


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--size", default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    started = time.perf_counter()
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict[str, Any] = {"benchmark": "graphs_check", **environment(device), "config": config}
    if device.type == "cpu":
        result["note"] = (
            "CPU rehearsal: graphs are emulated (a replay runs the unit again eagerly), so the host and"
            " step times say nothing about CUDA graphs; the numerics and the bookkeeping per call are"
            " what it measures"
        )
    with _emulated_on_cpu(device):
        result["numerics"] = [numerics(args, precision) for precision in ("32-true", "bf16-mixed")]
    result["host"] = host_times(args, device)
    result["wall_s"] = time.perf_counter() - started
    for n in result["numerics"]:
        print(
            f"numerics {n['precision']}: allclose {n['allclose']} (max |diff| {n['max_abs_difference']:.2e});"
            f" eager units {n['eager_units'] or 'none'}"
        )
    h = result["host"]
    for unit, ratio in h["forward_host_ratio"].items():
        print(
            f"host time of {unit}'s forward: eager/graphed {ratio:.2f}x;"
            f" bookkeeping per graphed call {h['bookkeeping_us'][unit]:.1f} us"
        )
    print(
        f"step: host {h['eager']['step_host_s'] * 1e3:.2f} -> {h['graphs']['step_host_s'] * 1e3:.2f} ms,"
        f" device {h['eager']['step_s'] * 1e3:.2f} -> {h['graphs']['step_s'] * 1e3:.2f} ms"
        f" ({h['step_speedup']:.2f}x)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
