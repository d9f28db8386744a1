// kb_common.h: what every kernel file in kernels/cuda/ shares: element-type traits (load as fp32, store
// from fp32), warp/block reductions written with shuffles, the dtype codes of the C interface and the
// error reporting behind kb_cuda_last_error(). Uses only the API of docs/CONTRACTS.md §3.
#pragma once
#include "kb_cuda.h"
#include <math.h>
#include <stdint.h>

// nvcc defines these in its host_defines.h; the simulation may leave them out (they only guide ptxas).
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif

// dtype codes of the C interface (docs/CONTRACTS.md §2).
enum { KB_F32 = 0, KB_BF16 = 1, KB_F16 = 2 };

// Error codes returned by the entry points; kb_cuda_last_error() says more.
enum { KB_OK = 0, KB_EINVAL = 1, KB_ELAUNCH = 2 };

// Records the message for kb_cuda_last_error() and returns `code` (defined in common.cu).
int kb_set_error(int code, const char* fmt, ...);
// After a launch: KB_OK, or KB_ELAUNCH with cudaGetErrorString() recorded under `what`.
int kb_check_launch(const char* what);

namespace kb {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }

// Tensor-core MMA for the 16-bit element type T (bf16 or fp16), fp32 accumulate.
template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2],
                                             const float c[4]) {
    mma_m16n8k16_bf16(d, a, b, c);
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) { return pack_bf16x2(lo, hi); }
};
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2],
                                             const float c[4]) {
    mma_m16n8k16_f16(d, a, b, c);
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) { return pack_f16x2(lo, hi); }
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` is 32 floats of shared memory; the call begins and ends with a barrier so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_sum(r);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(r);
}

}  // namespace kb

// Threads per block for a row kernel: one warp per 128 columns (4 per thread), 1 to 16 warps.
static inline int kb_row_threads(int64_t cols) {
  int64_t warps = (cols + 127) / 128;
  if (warps < 1) warps = 1;
  if (warps > 16) warps = 16;
  return (int)(32 * warps);
}

// The row kernels cache one row in shared memory as fp32 when it fits this budget: 96 KiB = 24,576
// columns, which every GPU from sm_80 on grants a block (sm_86/89: 99 KiB at most). Longer rows are read
// from global memory again instead. Above 48 KiB the kernel must opt in (KB_OPT_IN_SMEM_ONCE).
#define KB_ROW_CACHE_BYTES (96 * 1024)

// Opt `kernel` in to `bytes` of dynamic shared memory, once per process and instantiation (the attribute
// persists), so the launch path does not pay for cudaFuncSetAttribute on every call.
#define KB_OPT_IN_SMEM_ONCE(kernel, bytes)      \
  do {                                          \
    static int kb_opted_in_ = 0;                \
    if (!kb_opted_in_) {                        \
      KB_SET_MAX_DYNAMIC_SMEM(kernel, bytes);   \
      kb_opted_in_ = 1;                         \
    }                                           \
  } while (0)
