#!/usr/bin/env bash
# The GPU checks, prepared for a machine with an NVIDIA GPU (docs/gpu.md): the `gpu` tests,
# ResNet-18 served on CUDA against raw (ONNX Runtime's CUDA provider, TensorRT, TorchScript),
# and autotune's fp16, bf16, CUDA and TensorRT rows. Each step has a time limit (540 s in
# all, the sum of the limits below; not yet timed on a GPU) and the next runs whatever the
# last did; the exit status is 1 when any failed. Output goes to the terminal and to OUT_DIR (default gpu-check-out/).
#
# Needs torch with CUDA and onnxruntime-gpu (with TensorRT for the TensorRT rows) in the
# interpreter's environment; PYTHON chooses the interpreter (default: python).
#
# Usage: bench/gpu_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=$(mkdir -p "${1:-gpu-check-out}" && cd "${1:-gpu-check-out}" && pwd)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# a fresh TensorRT engine cache, kept with the results: its entries show what was keyed
export TORCHFERRY_CACHE_DIR="${TORCHFERRY_CACHE_DIR:-$OUT/cache}"
failed=0

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to OUT/NAME.log
    local name=$1 limit=$2 started rc
    shift 2
    echo "=== $name (at most ${limit} s)"
    started=$(date +%s)
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $(($(date +%s) - started)) s"
    [ "$rc" -eq 0 ] || failed=1
}

step environment 60 "$PY" - <<'PYTHON'
import onnxruntime as ort
import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), onnxruntime {ort.__version__}")
print(f"onnxruntime providers: {ort.get_available_providers()}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device that PyTorch can use: the GPU checks would all skip")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory >> 20} MiB")
PYTHON
if [ "$failed" -ne 0 ]; then
    echo "no usable GPU here: stopping"
    exit 1
fi

# the gpu tests print why any of them skipped (-rs): a missing provider is a finding too
step pytest-gpu 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs tests
step serve-vs-raw 200 "$PY" bench/gpu_serve_vs_raw.py --device cuda --seconds 2 \
    --json "$OUT/serve_vs_raw.json"
step autotune 130 "$PY" bench/gpu_autotune.py --quick --json "$OUT/autotune.json"
echo "results in $OUT"
exit "$failed"
