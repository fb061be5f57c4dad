#!/usr/bin/env bash
# The benchmark on a GPU host (no GPU figures yet).
#
#   bench/gpu.sh [compare.py flags]          # e.g. --models resnet50 --duration 6
#
# 1. checks: nvidia-smi, and that ONNX Runtime in .venv really runs a session on the CUDA
#    provider (it lists CUDA and TensorRT even where their libraries are missing);
# 2. exports: bench/models.py (float32) and bench/models.py --fp16 (training.export --fp16)
#    into the ignored bench/results/models{,-fp16}/;
# 3. compare (float32, CUDA): bench/compare.py, every system on ORT's CUDA provider
#    (CONVSERVE_PROVIDERS=cuda refuses to start without it, BENCH_PROVIDERS=cuda for the ceiling
#    and the baselines), with the GPU choice INSTANCES=1, MAX_BATCH_SIZE=64 for all of them
#    -> docs/bench/results-gpu.json and its table;
# 4. tune: bench/tune.py, the CPU defaults (2 instances, batch 32) against GPU candidates;
# 5. precision x provider, convserve alone (bench/load.py --serve, same settings and image):
#    float32 and float16 on CUDA, then on TensorRT when a session really gets it; the
#    in-process ceiling (bench/ceiling.py) for float32 and float16 on CUDA.
#
# GPU_MODEL (resnet50), GPU_CONCURRENCY (1,16,64), GPU_DURATION (10 s per level) shape steps
# 4-5. Everything printed is also written to bench/results/gpu.log. docs/benchmarks.md is not
# touched (re-render with `bench/report.py docs/bench/results-gpu.json` if wanted).
#
# Needs the benchmark venv of docs/benchmarks.md (BENCH_PYTHON) and, in .venv, onnxruntime-gpu
# with the CUDA libraries (the check says how to install them); TensorRT is optional.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BENCH_PYTHON:-/tmp/convserve-bench/bin/python}
SERVICE_PY=.venv/bin/python
MODEL=${GPU_MODEL:-resnet50}
CONCURRENCY=${GPU_CONCURRENCY:-1,16,64}
DURATION=${GPU_DURATION:-10}
FP32_REPO=bench/results/models
FP16_REPO=bench/results/models-fp16
GPU_SETTINGS=(CONVSERVE_INSTANCES=1 CONVSERVE_MAX_BATCH_SIZE=64)
mkdir -p bench/results
exec > >(tee bench/results/gpu.log) 2>&1

# Prints the provider a real session on the committed LeNet gets when `$1` is asked for first,
# or a line saying how to install it and exits 1 when ORT does not even list it.
probe() {
    "$SERVICE_PY" - "$1" <<'PYEOF'
import sys

import onnxruntime as ort

wanted = sys.argv[1]
if wanted not in ort.get_available_providers():
    sys.exit(
        f"{wanted} is not offered by onnxruntime {ort.__version__} in .venv "
        f"({ort.get_available_providers()}). Install the GPU build (Python 3.12 hosts come with "
        "the CPU one):\n  .venv/bin/pip uninstall -y onnxruntime\n"
        '  .venv/bin/pip install -c constraints.txt "onnxruntime-gpu[cuda,cudnn]==1.31.1" '
        "nvidia-cublas"
    )
ort.preload_dlls()  # the CUDA/cuDNN libraries of the nvidia-* wheels, as the service does
session = ort.InferenceSession(
    "models/lenet5-fashion/1/model.onnx", providers=[wanted, "CPUExecutionProvider"]
)
print(session.get_providers()[0])
PYEOF
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
got=$(probe CUDAExecutionProvider)
if [[ $got != CUDAExecutionProvider ]]; then
    echo "ORT lists CUDA but a session ran on $got: CUDA/cuDNN libraries are missing; see" \
        "the ORT log above and install: .venv/bin/pip install -c constraints.txt" \
        '"onnxruntime-gpu[cuda,cudnn]==1.31.1" nvidia-cublas' >&2
    exit 1
fi
tensorrt=no
if [[ $(probe TensorrtExecutionProvider 2>/dev/null || true) == TensorrtExecutionProvider ]]; then
    tensorrt=yes
fi
echo "CUDA: yes; TensorRT: $tensorrt (needs libnvinfer.so.10 for CUDA 13 on LD_LIBRARY_PATH)"

"$SERVICE_PY" bench/models.py
"$SERVICE_PY" bench/models.py --fp16

export BENCH_PROVIDERS=cuda
echo "== compare: float32, CUDA, ${GPU_SETTINGS[*]}"
env "${GPU_SETTINGS[@]}" CONVSERVE_PROVIDERS=cuda \
    "$PY" bench/compare.py --output docs/bench/results-gpu.json --no-docs "$@"
"$PY" - <<'PYEOF'
import json, sys
sys.path.insert(0, ".")
from bench.report import render
print(render(json.load(open("docs/bench/results-gpu.json"))))
PYEOF

echo "== tune: the CPU defaults against GPU choices (float32, CUDA)"
CONVSERVE_PROVIDERS=cuda "$PY" bench/tune.py --model "$MODEL" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --no-ceiling --variant INSTANCES=1,MAX_BATCH_SIZE=64 \
    --variant INSTANCES=2,MAX_BATCH_SIZE=64 --variant INSTANCES=1,MAX_BATCH_SIZE=16

image=$("$SERVICE_PY" -c "from bench.models import photo_path; print(photo_path())")
# convserve alone on one repository and provider: `load.py --serve` at each concurrency.
serve() {
    local repository=$1 providers=$2
    echo "== convserve $MODEL, $repository, CONVSERVE_PROVIDERS=$providers, ${GPU_SETTINGS[*]}"
    env "${GPU_SETTINGS[@]}" CONVSERVE_PROVIDERS="$providers" \
        CONVSERVE_MODEL_REPOSITORY="$repository" CONVSERVE_MODELS="$MODEL" \
        CONVSERVE_DEFAULT_MODEL="$MODEL" \
        "$PY" bench/load.py --serve --model "$MODEL" --image "$image" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup 3
}
# TensorRT builds its engine when a session starts (beyond load.py's 120 s readiness wait for a
# ResNet-50): build it once here into the service's default engine cache.
build_trt_engine() {
    echo "== building the TensorRT engine of $1/$MODEL"
    "$SERVICE_PY" - "$1" "$MODEL" <<'PYEOF'
import sys
import time
from pathlib import Path

from service.repository import VersionRef, load_version
from service.runtime import CPU, CUDA, TENSORRT, Runtime

root, model = Path(sys.argv[1]), sys.argv[2]
version = max(int(p.name) for p in (root / model).iterdir() if p.name.isdigit())
files = load_version(root, VersionRef(model, version, root / model / str(version)))
started = time.perf_counter()
runtime = Runtime(
    files.onnx_bytes, files.metadata, providers=[TENSORRT, CUDA, CPU], instances=1,
    intra_op_threads=1,
)
runtime.warm_up()
print(f"{runtime.provider}: engine ready in {time.perf_counter() - started:.0f} s")
PYEOF
}

for repository in "$FP32_REPO" "$FP16_REPO"; do
    echo "== ceiling: $repository/$MODEL on CUDA (in-process session.run)"
    "$SERVICE_PY" bench/ceiling.py --model "$MODEL" --repository "$repository" \
        --batches 1,8,32,64
    serve "$repository" cuda
done
if [[ $tensorrt == yes ]]; then
    for repository in "$FP32_REPO" "$FP16_REPO"; do
        build_trt_engine "$repository"
        serve "$repository" tensorrt
    done
else
    echo "== TensorRT: skipped (a session did not get TensorrtExecutionProvider)"
fi
