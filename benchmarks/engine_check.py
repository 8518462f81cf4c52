"""What the engine does on this GPU: green-context API, SM grants, quota speed, overlap, numerics.

GPU only. Measures, in one process:

- the ``torch.cuda.green_contexts`` API this torch exposes and the SM granularity of the GPU;
- SM counts requested vs granted for a range of quotas (created for real where the API allows);
- a compute-bound kernel (bf16 matmul) on a green context of a quarter of the SMs vs the full GPU,
  as a ratio next to the ratio of SM counts;
- two independent GPU-underusing encoders run through the engine with each backend: their
  kernels' intervals (CUDA events, with the whole step queued behind a sleep kernel so launch
  speed does not decide the order) and the step time;
- the demo model trained 10 steps under plain Lightning and under mosaic with each backend:
  the largest parameter difference, next to that of two plain runs (GPU kernels such as
  attention and embedding backward are not deterministic run to run).

    python benchmarks/engine_check.py --out engine_check.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from torch import nn


def _events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def matmul_ms(stream: torch.cuda.Stream, n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.stream(stream):
        for _ in range(3):
            a @ a
        start, end = _events()
        start.record()
        for _ in range(repeats):
            a @ a
        end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


class TimedEncoder(nn.Module):
    def __init__(self, width: int = 256, depth: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.events: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start, end = _events()
        start.record()
        for layer in self.layers:
            x = torch.relu(layer(x))
        end.record()
        self.events.append((start, end))
        return x


class TwoEncoders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = TimedEncoder(), TimedEncoder()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.a(x) + self.b(y)).sum()


def overlap(backend_name: str, quotas: dict[str, int] | None = None, steps: int = 20) -> dict:
    from lightning_mosaic.engine import Engine, make_backend
    from lightning_mosaic.selection import select_modules

    model = TwoEncoders().cuda()
    engine = Engine()
    device = torch.device("cuda")
    engine.attach(
        select_modules(model), backend=make_backend(backend_name, device), quotas=quotas, device=device
    )
    x, y = torch.randn(8, 256, device="cuda"), torch.randn(8, 256, device="cuda")
    for _ in range(3):
        with engine.step():
            model(x, y).backward()
    torch.cuda.synchronize()
    start, end = _events()
    start.record()
    for _ in range(steps):
        with engine.step():
            model(x, y).backward()
    end.record()
    # Hold the GPU busy while one more step is launched, so every kernel of both encoders is queued
    # before any runs: the placement then shows what the GPU does with them, not how fast the CPU
    # launches (tiny kernels otherwise finish as soon as they are launched, one encoder after the other).
    torch.cuda._sleep(50_000_000)
    reference = torch.cuda.Event(enable_timing=True)
    reference.record()  # on the caller's stream, before the step whose kernels we place
    with engine.step():
        model(x, y).backward()
    torch.cuda.synchronize()
    (a0, a1), (b0, b1) = model.a.events[-1], model.b.events[-1]
    a = (reference.elapsed_time(a0), reference.elapsed_time(a1))
    b = (reference.elapsed_time(b0), reference.elapsed_time(b1))
    result = {
        "backend": engine.backend.name,
        "step_ms": start.elapsed_time(end) / steps,
        "encoder_a_ms": list(a),
        "encoder_b_ms": list(b),
        "overlapping": b[0] < a[1] and a[0] < b[1],
        "grants": {k: vars(g) for k, g in engine.backend.grants.items()},
        "notes": engine.backend.notes,
    }
    engine.detach()
    return result


def numerics(backend_name: str) -> dict:
    import lightning as L

    from lightning_mosaic import MosaicStrategy
    from lightning_mosaic.demo import DemoDataModule, DemoMultimodalModel

    def fit(strategy):
        L.seed_everything(0, verbose=False)
        model = DemoMultimodalModel("small")
        quiet = dict(
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
        trainer = L.Trainer(
            strategy=strategy, accelerator="gpu", devices=1, max_steps=10, limit_val_batches=0, **quiet
        )
        trainer.fit(model, DemoDataModule("small", batch_size=8, num_samples=80))
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    plain, again, mosaic = (
        fit("auto"),
        fit("auto"),
        fit(MosaicStrategy(backend=backend_name, plan="concurrent")),
    )
    diff = max((plain[k] - mosaic[k]).abs().max().item() for k in plain)
    reference = max((plain[k] - again[k]).abs().max().item() for k in plain)
    close = all(torch.allclose(plain[k], mosaic[k], rtol=1e-5, atol=1e-6) for k in plain)
    return {
        "backend": backend_name,
        "max_abs_diff": diff,
        "plain_vs_plain_max_abs_diff": reference,  # the GPU's own run-to-run nondeterminism
        "allclose_rtol1e-5_atol1e-6": close,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file (default: print only)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine_check needs a CUDA GPU", file=sys.stderr)
        raise SystemExit(2)

    from lightning_mosaic.devices import granularity
    from lightning_mosaic.engine import green

    props = torch.cuda.get_device_properties(0)
    minimum, multiple = granularity((props.major, props.minor))
    api = green.detect()
    result: dict = {
        "benchmark": "engine_check",
        "date": datetime.date.today().isoformat(),
        "gpu": props.name,
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "green_context_api": api.describe() if api else None,
        "green_context_usable": bool(api and api.usable),
        "granularity": {"minimum": minimum, "multiple": multiple},
    }
    sms = props.multi_processor_count
    requests = sorted({8, 16, 32, 33, 64, sms // 4, sms // 2, sms - 4})
    grants = green.grant({str(r): r for r in requests}, sms, minimum, multiple)
    result["grants_rounded"] = {k: vars(g) for k, g in grants.items()}
    if api and api.usable:
        created = {}
        for request in requests:
            single = green.grant({"unit": request}, sms, minimum, multiple)
            try:
                _, _, notes = green.make_streams(api, single, torch.device("cuda", 0))
                created[str(request)] = {**vars(single["unit"]), "notes": notes}
            except Exception as err:  # report, keep measuring
                created[str(request)] = {"error": f"{type(err).__name__}: {err}"}
        result["grants_created"] = created
        quarter = green.grant({"quarter": sms // 4}, sms, minimum, multiple)
        streams, contexts, _ = green.make_streams(api, quarter, torch.device("cuda", 0))
        full_ms, quarter_ms = matmul_ms(torch.cuda.Stream()), matmul_ms(streams["quarter"])
        result["quota_speed"] = {
            "full_gpu_ms": full_ms,
            "quarter_ms": quarter_ms,
            "quarter_sms": quarter["quarter"].granted,
            "time_ratio": quarter_ms / full_ms,
            "sm_ratio": sms / quarter["quarter"].granted,
        }
        del contexts
    result["overlap"] = [overlap("none"), overlap("streams")]
    if api and api.usable:
        half = sms // 2 // multiple * multiple
        result["overlap"].append(overlap("green_context", {"a": half, "b": half}))
    result["numerics"] = [numerics(name) for name in ("none", "streams", "auto")]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
