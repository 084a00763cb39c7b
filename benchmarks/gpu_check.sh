#!/usr/bin/env bash
# One short check of the GPU paths on a lent CUDA host (at most about 8 minutes on an H200), from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default: $OUT if set (the device machine's), else results/gpu_check
#
# Steps, each in its own process under its own time limit (a crash or a hang in one does not stop the next):
#   env         versions, GPU, driver, which GPU libraries import                                   (<= 60 s)
#   aoti_probe  why aoti_load_package crashed on CUDA packages in session 14 (see gpu_check.py)       (<= 150 s)
#   timing      eager fp32/fp16/bf16, torch.compile, the AOTInductor fp16 package, onnxruntime CUDA /
#               TensorRT providers and a TensorRT engine where installed, timed by optin-deploy's bench (<= 210 s)
#   tests       pytest -m gpu on tests/test_aoti_cuda.py (the CUDA package's export, parity, runtime)   (<= 50 s)
#
# onnxruntime-gpu replaces onnxruntime (they cannot coexist): when GPU_WHEELS names a folder holding an
# onnxruntime_gpu wheel, it is installed into a throw-away venv (/tmp/gpu_check_venv, with the system's packages
# visible) and every step runs there; nothing is fetched from the network. Each step writes OUT_DIR/gpu_check_STEP.json.
# The figures are measurements of that host only; read them before quoting any.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$OUT_DIR"
export OPTIN_DEPLOY_CACHE="${OPTIN_DEPLOY_CACHE:-/tmp/gpu_check_cache}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
if [ -n "${GPU_WHEELS:-}" ] && ls "$GPU_WHEELS"/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
  if "$PY" -m venv --system-site-packages /tmp/gpu_check_venv \
     && /tmp/gpu_check_venv/bin/pip install -q --no-index --no-deps "$GPU_WHEELS"/onnxruntime_gpu-*.whl; then
    PY=/tmp/gpu_check_venv/bin/python
  else
    echo "onnxruntime-gpu from $GPU_WHEELS did not install; onnxruntime's GPU providers are left out" >&2
  fi
fi
start=$(date +%s)
step() {  # step NAME LIMIT_S
  echo "== $1 (limit $2 s, $(( $(date +%s) - start )) s so far)"
  timeout -k 10 "$2" "$PY" benchmarks/gpu_check.py "$1" "$OUT_DIR" || echo "{\"step\": \"$1\", \"rc\": $?}" >> "$OUT_DIR/gpu_check_failures.jsonl"
}
step env 60
step aoti_probe 150
step timing 210
echo "== tests (limit 50 s)"
timeout -k 10 50 "$PY" -m pytest -q -x -m gpu tests/test_aoti_cuda.py -p no:cacheprovider > "$OUT_DIR/gpu_check_tests.txt" 2>&1
echo "tests rc $?" >> "$OUT_DIR/gpu_check_tests.txt"
tail -3 "$OUT_DIR/gpu_check_tests.txt"
echo "done in $(( $(date +%s) - start )) s; results in $OUT_DIR"
