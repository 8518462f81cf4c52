#!/usr/bin/env bash
# Every GPU check of the project in one run, sized for under 7 minutes on one H100/H200.
# Writes JSON under $OUT (default benchmarks/results/gpu-check): the environment, the GPU-marked
# tests, and the engine-overhead benchmark. Run from a checkout: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
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
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PY

timeout 300 python -m pytest -m gpu tests -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" || status=1
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

timeout 150 python benchmarks/overhead.py --accelerator gpu --size small --batch-size 32 --steps 40 --rounds 4 \
    --out "$OUT/overhead.json" || status=1

echo "gpu_check: results in $OUT (exit $status)"
exit $status
