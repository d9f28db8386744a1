// divergence.cu: barriers and warp collectives that not every thread reaches. Each is reported as a
// launch error naming the kernel, never a hang. Mode 0 is the correct twin.
#include "sim_test.h"

__global__ void early_exit_kernel(float* y, int mode) {
  __shared__ float s[128];
  const int t = threadIdx.x, lane = t % 32;
  s[t] = (float)t;
  if (mode == 1 && t >= 64) return;  // planted: half the block leaves before the barrier
  if (mode == 2) {                   // planted: two different barriers
    if (t < 64) __syncthreads();
    else __syncthreads();
  } else {
    __syncthreads();
  }
  float v = s[127 - t];
  y += blockIdx.x * 128;
  if (mode == 3 && lane >= 16) { y[t] = v; return; }  // planted: lanes 16..31 skip the shuffle
  if (mode == 4 && lane == 5) v = __shfl_xor_sync(0x0000000fu, v, 1);  // planted: mask without lane 5
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[t] = v;
}

// 48 threads: the second warp has 16 lanes; a full-warp butterfly over 16 reads lanes that do not exist.
__global__ void partial_warp_kernel(float* y, int offset) {
  float v = (float)threadIdx.x;
  v += __shfl_xor_sync(0xffffffffu, v, offset);
  y[threadIdx.x] = v;
}

SIMTEST simtest_divergence(float* y, int mode) {
  KB_LAUNCH(early_exit_kernel, 2, 128, 0, nullptr, y, mode);
  SIMTEST_RETURN();
}

SIMTEST simtest_partial_warp(float* y, int offset) {
  KB_LAUNCH(partial_warp_kernel, 1, 48, 0, nullptr, y, offset);
  SIMTEST_RETURN();
}
