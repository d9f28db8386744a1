// barrier_race.cu: planted missing __syncthreads. Caught by running under several schedule seeds
// (KB_SIM_SCHEDULE_SEED): the racy kernels' results change with the order threads run between barriers.
#include "sim_test.h"

// y[i] = x[i-1] within a block (y[0] of each block = 0), through shared memory.
template <bool kBarrier>
__global__ void shift_kernel(float* y, const float* x, int n) {
  __shared__ float s[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : 0.0f;
  if (kBarrier) __syncthreads();  // planted bug when false: thread t may read s[t-1] before thread t-1 wrote it
  if (i < n) y[i] = threadIdx.x == 0 ? 0.0f : s[threadIdx.x - 1];
}

// Tree sum of each block of 256 elements; the barrier between two halving steps is the one omitted.
template <bool kBarrier>
__global__ void block_sum_kernel(float* out, const float* x, int n) {
  __shared__ float s[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if ((int)threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
    if (kBarrier) __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

SIMTEST simtest_shift(float* y, const float* x, int n, int racy) {
  auto k = racy ? shift_kernel<false> : shift_kernel<true>;
  KB_LAUNCH(k, (n + 255) / 256, 256, 0, nullptr, y, x, n);
  SIMTEST_RETURN();
}

SIMTEST simtest_block_sum(float* out, const float* x, int n, int racy) {
  auto k = racy ? block_sum_kernel<false> : block_sum_kernel<true>;
  KB_LAUNCH(k, (n + 255) / 256, 256, 0, nullptr, out, x, n);
  SIMTEST_RETURN();
}
