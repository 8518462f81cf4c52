#!/usr/bin/env bash
# Every GPU check of the project in one run, sized for under 7 minutes on one H100/H200.
# Writes JSON under $OUT (default benchmarks/results/gpu-check): the environment, the
# performance-model accuracy on a GPU profile of the demo model (and the profile itself), the
# engine check (green-context API, SM grants, quota speed, overlap, numerics), the GPU-marked
# tests, the engine-overhead benchmark and compute-sanitizer's racecheck. Run from a checkout:
#   bash benchmarks/gpu_check.sh
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

timeout 120 python benchmarks/perfmodel_accuracy.py --accelerator gpu --size base --batch-size 16 \
    --max-seconds 50 --out "$OUT/perfmodel_accuracy.json" --profile-out "$OUT/profile.json" || status=1

timeout 90 python benchmarks/engine_check.py --out "$OUT/engine_check.json" || status=1

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

timeout 60 python benchmarks/overhead.py --accelerator gpu --size small --batch-size 32 --steps 30 --rounds 3 \
    --out "$OUT/overhead.json" || status=1

# compute-sanitizer's racecheck on a two-step run of the demo with units on their own streams.
if command -v compute-sanitizer >/dev/null 2>&1; then
    timeout 45 compute-sanitizer --tool racecheck --print-limit 20 \
        python -m lightning_mosaic demo --size tiny --steps 2 --batch-size 2 --accelerator gpu --backend streams \
        > "$OUT/racecheck.log" 2>&1
    code=$?
    python - "$OUT/racecheck.log" "$OUT/racecheck.json" "$code" <<'PY' || status=1
import json, re, sys
text = open(sys.argv[1]).read()
summary = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
hazards = [list(map(int, s)) for s in summary]
json.dump({"exit_code": int(sys.argv[3]), "summary_lines": hazards,
           "hazards": sum(h[0] for h in hazards), "no_hazard_line": "0 hazards displayed" in text,
           "tail": text[-3000:]}, open(sys.argv[2], "w"), indent=2)
print("racecheck:", hazards or "no summary line", "exit", sys.argv[3])
PY
else
    echo '{"skipped": "compute-sanitizer not found"}' > "$OUT/racecheck.json"
fi

echo "gpu_check: results in $OUT (exit $status)"
exit $status
