// block_reduce.cu: the block reductions of kernels/cuda/include/kb_common.h (kb::block_sum, kb::block_max)
// tested as helpers, not only through the kernels that call them. Each block runs two reductions in a row
// through the same 32-float scratch, so the entry barrier of the second one (which keeps its warp leaders from
// overwriting scratch[] while other warps still read the first one's partials) is needed here: the softmax
// kernel calls block_max first, so no real kernel can kill a mutant that deletes block_max's entry barrier.
// No planted bug and no twin: the mutants of scripts/mutants.py (cuda-block*-bar*) delete the barriers in the
// real header, and the race checker (or a drift/random schedule) sees it here.
#include "sim_test.h"
#include "../../kernels/cuda/include/kb_common.h"

// Block b reduces x[b, 0:n] with the first operation and x[b, n:2n] with the second; every thread writes the
// result it got: out[(b * 2 + k) * blockDim.x + t], so a thread that got a stale partial shows.
// ops: bit 0 = the first reduction is a sum (else max), bit 1 = the second is a sum (else max).
__global__ void block_reduce_kernel(float* out, const float* x, int n, int ops) {
  __shared__ float scratch[32];
  const float* row = x + (size_t)blockIdx.x * 2 * n;
  float* o = out + (size_t)blockIdx.x * 2 * blockDim.x;
  for (int k = 0; k < 2; ++k) {
    const bool sum = (ops >> k) & 1;
    float v = sum ? 0.0f : -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v = sum ? v + row[k * n + i] : fmaxf(v, row[k * n + i]);
    v = sum ? kb::block_sum(v, scratch) : kb::block_max(v, scratch);
    o[k * blockDim.x + threadIdx.x] = v;
  }
}

SIMTEST simtest_block_reduce(float* out, const float* x, int blocks, int threads, int n, int ops) {
  KB_LAUNCH(block_reduce_kernel, blocks, threads, 0, nullptr, out, x, n, ops);
  SIMTEST_RETURN();
}
