// race.cu: planted races that neither the results nor the schedule seeds reveal under the simulation, and that
// the race checker (kb_sim_race.cpp, the *_race libraries) reports. Each has a correct twin.
#include "sim_test.h"

// Every thread of the block adds 1 to one shared counter. Racy: a plain read-modify-write (the simulation
// never switches threads inside it, so the count is right; on a GPU increments are lost). Twin: atomicAdd.
template <bool kRacy>
__global__ void counter_kernel(int* out) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  if (kRacy) count = count + 1;
  else atomicAdd(&count, 1);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = count;
}

// A two-stage cp.async pipeline (y = 3x, tiles of 64 floats, 16 threads). Racy: the barrier after the
// consumers' reads is missing, so the next iteration's cp.async into the same buffer is in flight while other
// threads still read the tile. The simulation lands copies at the wait, after those reads: results are right.
template <bool kRacy>
__global__ void reuse_kernel(float* y, const float* x, int ntiles) {
  __shared__ __align__(16) float buf[2][64];
  const int t = threadIdx.x;
  kb::cp_async_16(&buf[0][t * 4], x + t * 4);
  kb::cp_async_commit();
  for (int k = 0; k < ntiles; ++k) {
    const bool more = k + 1 < ntiles;
    kb::cp_async_16_zfill(&buf[(k + 1) % 2][t * 4], more ? x + (k + 1) * 64 + t * 4 : x, more);
    kb::cp_async_commit();
    kb::cp_async_wait<1>();
    __syncthreads();
    for (int j = 0; j < 4; ++j) y[k * 64 + t * 4 + j] = 3.0f * buf[k % 2][(t * 4 + 4 * j + 5) % 64];
    if (!kRacy) __syncthreads();
  }
  kb::cp_async_wait_all();
}

// Lanes swap values through shared memory: lane l reads what lane l^1 wrote. Racy: no __syncwarp between
// the write and the read. Twin: __syncwarp(). (Lockstep order hides it only for odd lanes; the checker sees all.)
template <bool kRacy>
__global__ void swap_kernel(float* y, const float* x) {
  __shared__ float s[32];
  const int l = threadIdx.x;
  s[l] = x[l];
  if (!kRacy) __syncwarp();
  y[l] = s[l ^ 1];
}

SIMTEST simtest_counter(int* out, int nblocks, int racy) {
  auto k = racy ? counter_kernel<true> : counter_kernel<false>;
  KB_LAUNCH(k, nblocks, 128, 0, nullptr, out);
  SIMTEST_RETURN();
}

SIMTEST simtest_reuse(float* y, const float* x, int ntiles, int racy) {
  auto k = racy ? reuse_kernel<true> : reuse_kernel<false>;
  KB_LAUNCH(k, 1, 16, 0, nullptr, y, x, ntiles);
  SIMTEST_RETURN();
}

SIMTEST simtest_swap(float* y, const float* x, int racy) {
  auto k = racy ? swap_kernel<true> : swap_kernel<false>;
  KB_LAUNCH(k, 1, 32, 0, nullptr, y, x);
  SIMTEST_RETURN();
}
