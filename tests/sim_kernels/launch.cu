// launch.cu: the launch itself: 3-D grids and blocks, dynamic shared memory limits, invalid
// configurations, __trap, and many blocks on the pool of OS threads with atomics.
#include "sim_test.h"

// One record of 12 ints per thread: blockIdx, threadIdx, blockDim, gridDim.
__global__ void index_kernel(int* out) {
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int* o = out + (b * blockDim.x * blockDim.y * blockDim.z + t) * 12;
  o[0] = blockIdx.x; o[1] = blockIdx.y; o[2] = blockIdx.z;
  o[3] = threadIdx.x; o[4] = threadIdx.y; o[5] = threadIdx.z;
  o[6] = blockDim.x; o[7] = blockDim.y; o[8] = blockDim.z;
  o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
}

__global__ void big_smem_kernel(float* y) {
  extern __shared__ __align__(16) float big[];
  const int n = 64 * 1024 / 4;
  for (int i = threadIdx.x; i < n; i += blockDim.x) big[i] = (float)i;
  __syncthreads();
  float s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += big[n - 1 - i];
  atomicAdd(y, s);
}

__global__ void trap_kernel(int* y) {
  if (threadIdx.x == 3) __trap();
  y[threadIdx.x] = 1;
}

// Histogram of x into 16 bins with global atomics, many blocks.
__global__ void histogram_kernel(int* bins, const int* x, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&bins[x[i] & 15], 1);
}

SIMTEST simtest_index(int* out, int gx, int gy, int gz, int bx, int by, int bz) {
  KB_LAUNCH(index_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr, out);
  SIMTEST_RETURN();
}

SIMTEST simtest_big_smem(float* y, int opt_in) {
  if (opt_in) {
    cudaError_t e = KB_SET_MAX_DYNAMIC_SMEM(big_smem_kernel, 64 * 1024);
    if (e != cudaSuccess) return (int)e;
  }
  KB_LAUNCH(big_smem_kernel, 1, 128, 64 * 1024, nullptr, y);
  SIMTEST_RETURN();
}

SIMTEST simtest_trap(int* y) {
  KB_LAUNCH(trap_kernel, 1, 32, 0, nullptr, y);
  SIMTEST_RETURN();
}

SIMTEST simtest_histogram(int* bins, const int* x, int n, int blocks) {
  KB_LAUNCH(histogram_kernel, blocks, 64, 0, nullptr, bins, x, n);
  SIMTEST_RETURN();
}
