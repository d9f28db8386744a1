#!/usr/bin/env bash
# Everything on a GPU machine, in one call, so that a borrowed GPU is spent on minutes of work, not hours:
#   1. builds every native target (CPU kernels, CUDA kernels for the GPU's architecture and 80;90a, the
#      simulation), 2. runs the whole test suite, GPU-marked tests included, 3. prints the kernels report,
#   4. measures the device's peaks, 5. times every suite (--full) on the GPU, 6. writes everything under
#   $OUT (or results/gpu-<time>/) and prints the tables.
# Usage: bash scripts/gpu-all.sh [--quick]   (PYTHON=... to choose the interpreter; default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=--full
[ "${1:-}" = "--quick" ] && MODE=--quick
DEST=${OUT:-results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$DEST"
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ==="; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name()); sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no GPU visible to torch"; exit 1; }
$PY -m pip install -q --no-deps pytest-benchmark 2>/dev/null || true

step "deployment backends (docs/backends.md): onnxruntime-gpu instead of onnxruntime, tensorrt, cupy"
# onnxruntime and onnxruntime-gpu install the same module: never both in one environment, so the CPU build
# goes first (every time: a later 'pip install -e .' brings it back). TensorRT cannot be installed on the CPU
# machines; here it can. Failures are reported and the run goes on (those variants skip with the reason).
$PY -m pip uninstall -q -y onnxruntime 2>/dev/null || true
$PY -m pip install -q --force-reinstall --no-deps onnxruntime-gpu && $PY -m pip install -q onnxruntime-gpu \
  || echo "onnxruntime-gpu did not install: the ORT CUDA/TensorRT variants will skip"
$PY -m pip install -q tensorrt || echo "tensorrt did not install: the TensorRT variants will skip"
CUPY=cupy-cuda$($PY -c "import torch; print((torch.version.cuda or '12').split('.')[0])")x   # torch's CUDA major
$PY -m pip install -q "$CUPY" || echo "$CUPY did not install: the CuPy variants will skip"
$PY -c "from deploy import guards; [print(f'{b:14s}', guards.missing(b) or 'ok') for b in guards.BACKENDS]"

step "build (CMake, CUDA archs: native;80;90a)"
ARCH=$($PY -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=80;90a;${ARCH}" >"$DEST/cmake.log" 2>&1 \
  && cmake --build build -j "$(nproc)" >>"$DEST/cmake.log" 2>&1 || { echo "build failed: see $DEST/cmake.log"; tail -30 "$DEST/cmake.log"; status=1; }

step "tests (GPU-marked included)"
$PY -m pytest -q -x --timeout=900 -p no:cacheprovider 2>&1 | tee "$DEST/pytest.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "kernels report"
$PY bench.py --kernels-report --out "$DEST" 2>&1 | tail -60

step "peak"
$PY bench.py --suite peak --device cuda --no-progress --out "$DEST/peak" 2>&1 | tail -15

for s in attention gemm softmax norm digits; do
  step "suite $s $MODE"
  $PY bench.py --suite $s --device cuda $MODE --no-progress --out "$DEST/$s" 2>&1 | tail -80
done
step "suite attention $MODE --cuda-graph"
$PY bench.py --suite attention --device cuda $MODE --cuda-graph --filter sdpa_flash,eager --no-progress \
  --out "$DEST/attention-graph" 2>&1 | tail -30
step "suite model --quick, float32 and float16 (eager, torch.compile, ONNX Runtime, TensorRT side by side)"
$PY bench.py --suite model --device cuda --quick --dtype float32,float16 --no-progress --out "$DEST/model" 2>&1 \
  | tail -80
echo; echo "results under $DEST (exit $status)"
exit $status
