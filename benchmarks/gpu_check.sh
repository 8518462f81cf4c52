#!/usr/bin/env bash
# Every GPU check of the project. On a lent GPU run the proof first of all, alone:
#   bash benchmarks/gpu_check.sh proof
# (about 5 minutes, never more than 7: benchmarks/proof.py keeps a 390 s budget; every result in ONE
# file, $OUT/proof.json, its log in $OUT/proof.log).
# Writes JSON under $OUT (default benchmarks/results/gpu-check): the environment, the proof (vlm, avlm
# and bind at edge size in bf16-mixed, two batch sizes: temporal vs naive streams vs mosaic; CUDA
# graphs on vs off at the first batch size, and graphs_check.py: numerics fp32/bf16, host times), the
# performance-model accuracy on a GPU profile of the demo model (and the profile itself), a plan
# and its timeline from a quick GPU profile, the
# engine check (green-context API, SM grants, quota speed, overlap, numerics), the GPU-marked
# tests, the engine-overhead benchmark (temporal plan vs plain Lightning), the closed loop's
# throughput (temporal vs naive streams vs mosaic's own plan, on the demo model at "medium" size,
# whose encoders leave the GPU underused at small batches) and compute-sanitizer's racecheck.
# Every section together takes more than 7 minutes; pick sections to stay within a budget:
#   bash benchmarks/gpu_check.sh                      # every section
#   bash benchmarks/gpu_check.sh tests overhead train # only these sections (about 6 minutes)
# Sections: environment proof accuracy plan engine tests overhead train zoo racecheck (environment always runs).
# After committing a results folder under benchmarks/results/, run python benchmarks/results_table.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SECTIONS=${*:-proof accuracy plan engine tests overhead train zoo racecheck}
wanted() { [[ " $SECTIONS " == *" $1 "* ]]; }
status=0

python - "$OUT/environment.json" <<'PY' || status=1
import json, sys
import torch, lightning
info = {"torch": torch.__version__, "lightning": lightning.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, sm_count=p.multi_processor_count, memory_bytes=p.total_memory,
                capability=f"{p.major}.{p.minor}", device_count=torch.cuda.device_count())
gc = getattr(torch.cuda, "green_contexts", None)
info["green_contexts_api"] = sorted(n for n in dir(gc) if not n.startswith("_")) if gc else None
if gc is not None and hasattr(gc, "GreenContext"):
    info["green_context_members"] = sorted(n for n in dir(gc.GreenContext) if not n.startswith("_"))
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PY

# The proof: MosaicStrategy() profiles, plans and guards each zoo model as a user's run would, then
# temporal / naive streams / mosaic train interleaved; one JSON with everything (see proof.py).
if wanted proof; then
    timeout 420 python benchmarks/proof.py --out "$OUT/proof.json" > "$OUT/proof.log" 2>&1 || status=1
    tail -n 12 "$OUT/proof.log"
fi

if wanted accuracy; then
    timeout 130 python benchmarks/perfmodel_accuracy.py --accelerator gpu --size base --batch-size 16 \
        --max-seconds 60 --out "$OUT/perfmodel_accuracy.json" --profile-out "$OUT/profile.json" || status=1
fi

# A plan from a GPU profile of the demo model (small, quick): the profile carries the traced graph.
if wanted plan; then
    timeout 90 python benchmarks/perfmodel_accuracy.py --accelerator gpu --size small --batch-size 32 \
        --max-seconds 20 --out "$OUT/plan_profile_accuracy.json" --profile-out "$OUT/plan_profile.json" || status=1
    timeout 60 python -m lightning_mosaic plan "$OUT/plan_profile.json" --batch-size 32 --out "$OUT/plan.json" \
        --timeline "$OUT/plan.png" || status=1
fi

if wanted engine; then
    timeout 90 python benchmarks/engine_check.py --out "$OUT/engine_check.json" || status=1
fi

if wanted tests; then
    timeout 120 python -m pytest -m gpu tests -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" || status=1
    python - "$OUT/gpu_tests.xml" "$OUT/gpu_tests.json" <<'PY' || status=1
import json, sys, xml.etree.ElementTree as ET
cases = []
for case in ET.parse(sys.argv[1]).iter("testcase"):
    outcome = "passed"
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
            message = (node.get("message") or "")[:2000]
            break
    else:
        message = ""
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "seconds": float(case.get("time", 0)), "message": message})
summary = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "error", "skipped")}
json.dump({"summary": summary, "cases": cases}, open(sys.argv[2], "w"), indent=2)
print(summary)
PY
fi

if wanted overhead; then
    timeout 60 python benchmarks/overhead.py --accelerator gpu --size small --batch-size 32 --steps 30 --rounds 3 \
        --out "$OUT/overhead.json" || status=1
fi

# The closed loop: MosaicStrategy() profiles and plans, then temporal / naive streams / mosaic train
# interleaved in one process. Two batch sizes of the medium demo model, each in its own folder.
if wanted train; then
    for batch in 8 32; do
        mkdir -p "$OUT/train-medium-b$batch"
        timeout 150 python benchmarks/bench_train.py --size medium --batch-size "$batch" --steps 15 --rounds 3 \
            --profile-seconds 40 --out "$OUT/train-medium-b$batch/bench.json" || status=1
    done
fi

# The zoo at edge size: the same comparison per model (shorter rounds), one folder each.
if wanted zoo; then
    for model in vlm avlm bind; do
        mkdir -p "$OUT/zoo-$model-edge-b8"
        timeout 150 python benchmarks/bench_train.py --model "$model" --size edge --batch-size 8 --steps 10 \
            --rounds 2 --profile-seconds 30 --out "$OUT/zoo-$model-edge-b8/bench.json" || status=1
    done
fi

# compute-sanitizer's racecheck reports shared-memory hazards inside kernels (it does not see
# cross-stream ordering, which the recording backend's tests check). The demo runs with units on
# their own streams and, for comparison, inline: hazards in both come from the kernels themselves.
if wanted racecheck && command -v compute-sanitizer >/dev/null 2>&1; then
    for backend in streams none; do
        timeout 45 compute-sanitizer --tool racecheck --print-limit 20 \
            python -m lightning_mosaic demo --size tiny --steps 2 --batch-size 2 --accelerator gpu \
            --plan concurrent --backend "$backend" --out "$OUT/racecheck-demo" > "$OUT/racecheck-$backend.log" 2>&1
        echo $? > "$OUT/racecheck-$backend.code"
    done
    python - "$OUT" <<'PY' || status=1
import json, re, sys
out = {}
for backend in ("streams", "none"):
    text = open(f"{sys.argv[1]}/racecheck-{backend}.log").read()
    summary = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    kernels = sorted(set(re.findall(r"Race reported between \w+ access at (\w+)", text)))
    out[backend] = {"exit_code": int(open(f"{sys.argv[1]}/racecheck-{backend}.code").read()),
                    "hazards": sum(int(s[0]) for s in summary), "kernels": kernels}
json.dump(out, open(f"{sys.argv[1]}/racecheck.json", "w"), indent=2)
print("racecheck:", out)
PY
elif wanted racecheck; then
    echo '{"skipped": "compute-sanitizer not found"}' > "$OUT/racecheck.json"
fi

echo "gpu_check: results in $OUT (exit $status)"
exit $status
