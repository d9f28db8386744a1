// smem_oob.cu: planted out-of-bounds accesses, caught in the AddressSanitizer build
// (libkb_sim_tests_asan.so): dynamic shared memory past the launch's smem_bytes (poisoned by the runtime),
// a static __shared__ array indexed past its end (-fsanitize=bounds), global memory past a buffer.
#include "sim_test.h"

// Reverse each block's chunk of x through dynamic shared memory of blockDim.x floats.
template <int kOffByOne>
__global__ void reverse_kernel(float* y, const float* x, int n) {
  extern __shared__ float dyn[];
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  dyn[t + kOffByOne] = i < n ? x[i] : 0.0f;  // planted bug: kOffByOne = 1 writes one float past the end
  __syncthreads();
  const int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - t);
  if (j < n) y[j] = dyn[t + kOffByOne];
}

template <int kOffByOne>
__global__ void reverse_static_kernel(float* y, const float* x, int n) {
  __shared__ float st[128];
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  st[t + kOffByOne] = i < n ? x[i] : 0.0f;  // planted bug: st[128] for the last thread
  __syncthreads();
  const int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - t);
  if (j < n) y[j] = st[t + kOffByOne];
}

// Copies n floats, but with `over` it runs one element past the end of both buffers.
__global__ void copy_kernel(float* y, const float* x, int n, int over) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n + over) y[i] = x[i];
}

SIMTEST simtest_reverse(float* y, const float* x, int n, int oob, int use_static) {
  if (use_static) {
    auto k = oob ? reverse_static_kernel<1> : reverse_static_kernel<0>;
    KB_LAUNCH(k, (n + 127) / 128, 128, 0, nullptr, y, x, n);
  } else {
    auto k = oob ? reverse_kernel<1> : reverse_kernel<0>;
    KB_LAUNCH(k, (n + 127) / 128, 128, 128 * sizeof(float), nullptr, y, x, n);
  }
  SIMTEST_RETURN();
}

SIMTEST simtest_copy(float* y, const float* x, int n, int over) {
  KB_LAUNCH(copy_kernel, (n + over + 127) / 128, 128, 0, nullptr, y, x, n, over);
  SIMTEST_RETURN();
}
