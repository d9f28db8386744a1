#!/usr/bin/env bash
# make asan: the native checks of the mutants and the special values under AddressSanitizer.
#   builds:  build/lib/libkb_cpp_asan.so (-fsanitize=address, kernels/cpp/CMakeLists.txt), and the simulation's
#            libkb_cuda_sim_asan.so / libkb_sim_tests_asan.so (-fsanitize=address,bounds) in .cache/sim-build
#   runs:    with libasan preloaded (Python is not instrumented; preloading puts the ASan runtime first):
#            scripts/mutants.py's checks of the unmutated kernels (every "test" case of softmax, rmsnorm, layernorm,
#            gemm, attention, decode and quant_gemm at every dtype, the special-value inputs of
#            tests/special_values.py, and kb_common.h's block reductions as helpers), for the C++ kernels and the
#            simulated CUDA kernels; then tests/test_special_values.py and tests/test_kernel_paths.py against the
#            ASan C++ library.
#   fails:   on any AddressSanitizer report (the run stops at the first: halt_on_error) or failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
JOBS=${JOBS:-2}
BUILD=${BUILD:-build}
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target kb_cpp_asan >/dev/null
libs=$("$PY" -c "from kernels.cuda.sim.build import sim_library as s
print(' '.join(map(str, s('kb_cuda_sim_asan', 'kb_sim_tests_asan', jobs=$JOBS))))")
read -r SIM_ASAN TESTS_ASAN <<<"$libs"
LIBASAN=$(g++ -print-file-name=libasan.so)
export LD_PRELOAD=$LIBASAN ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:exitcode=86 PYTHONPATH=$PWD
export KB_CPP_LIB=$PWD/$BUILD/lib/libkb_cpp_asan.so KB_MUTANT_SIM_LIB=$SIM_ASAN KB_MUTANT_SIM_TESTS_LIB=$TESTS_ASAN
status=0
for backend in cpp cuda; do
  extra=""; [ "$backend" = cuda ] && extra=block_reduce
  echo "== $backend kernels (ASan): scripts/mutants.py checks + special values"
  out=$("$PY" scripts/mutants.py --check "$backend" softmax norm gemm attention decode quant_gemm $extra 2>&1) || true
  echo "$out" | tail -n 40
  if ! echo "$out" | grep -q '"killed": false'; then status=1; echo "asan: $backend checks FAILED"; fi
done
echo "== tests/test_special_values.py tests/test_kernel_paths.py (C++ library under ASan)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_special_values.py tests/test_kernel_paths.py || status=1
[ $status = 0 ] && echo "asan: clean" || echo "asan: FAILED (see above)"
exit $status
