#!/usr/bin/env bash
# The same benchmark on a GPU host (unmeasured so far: no GPU was lent to the task that wrote
# it). Every system runs ORT's CUDA execution provider: convserve via CONVSERVE_PROVIDERS=cuda
# (refuses to start without it), the ceiling and the baselines via BENCH_PROVIDERS=cuda.
#
#   bench/gpu.sh [compare.py flags]          # e.g. --models resnet50
#
# Needs the benchmark venv of docs/benchmarks.md and onnxruntime-gpu with the CUDA wheels
# (.venv has it). Writes docs/bench/results-gpu.json and prints the table; it does not touch
# docs/benchmarks.md (re-render with `bench/report.py docs/bench/results-gpu.json` if wanted).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BENCH_PYTHON:-/tmp/convserve-bench/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
.venv/bin/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"
export CONVSERVE_PROVIDERS=cuda BENCH_PROVIDERS=cuda
# Batching pays on a GPU: larger batches, one instance per GPU is the usual start; compare
# with the CPU defaults by running bench/tune.py --variant MAX_BATCH_SIZE=64,INSTANCES=1.
"$PY" bench/compare.py --output docs/bench/results-gpu.json --no-docs "$@"
"$PY" - <<'PYEOF'
import json, sys
sys.path.insert(0, ".")
from bench.report import render
print(render(json.load(open("docs/bench/results-gpu.json"))))
PYEOF
