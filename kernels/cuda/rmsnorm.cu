// rmsnorm.cu: RMSNorm forward, y = x * rsqrt(mean(x^2) + eps) * w, over the last dimension of x
// [rows, cols] (row strides in elements); w has cols elements of the input dtype (Zhang & Sennrich 2019).
//
// One block per row; the row is cached in shared memory as fp32 when it fits 96 KiB (cols <= 24576), so
// x is read once: bytes = 2 * rows * cols * itemsize + cols * itemsize (w, L2-resident across rows).
// FLOPs: ~4 per element (square, add, 2 mul). Memory-bound. Accumulation in fp32.
// Improves on: first version. Measured: not yet measured on a GPU.
#include "include/kb_common.h"

// kb-report: kb_rmsnorm_kernel threads=256 smem_dynamic=4096 (as launched for 1024 columns)
template <typename T>
__global__ void __launch_bounds__(512) kb_rmsnorm_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                         T* __restrict__ y, int64_t cols, int64_t x_stride,
                                                         int64_t y_stride, float eps, int cached) {
  extern __shared__ float kb_row[];
  __shared__ float scratch[32];
  const T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* yr = y + (int64_t)blockIdx.x * y_stride;

  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = kb::to_f32(xr[c]);
    if (cached) kb_row[c] = v;
    ss = fmaf(v, v, ss);
  }
  const float r = rsqrtf(kb::block_sum(ss, scratch) / (float)cols + eps);

  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = cached ? kb_row[c] : kb::to_f32(xr[c]);
    yr[c] = kb::from_f32<T>(v * r * kb::to_f32(w[c]));
  }
}

template <typename T>
static int launch(const void* x, const void* w, void* y, int64_t rows, int64_t cols, int64_t xs,
                  int64_t ys, float eps, void* stream) {
  const int threads = kb_row_threads(cols);
  const int cached = cols * (int64_t)sizeof(float) <= KB_ROW_CACHE_BYTES;
  const size_t smem = cached ? (size_t)cols * sizeof(float) : 0;
  auto kernel = kb_rmsnorm_kernel<T>;
  KB_OPT_IN_SMEM_ONCE(kernel, KB_ROW_CACHE_BYTES);
  KB_LAUNCH(kernel, dim3((unsigned)rows), dim3(threads), smem, stream, (const T*)x, (const T*)w, (T*)y,
            cols, xs, ys, eps, cached);
  return kb_check_launch("kb_cuda_rmsnorm");
}

extern "C" int kb_cuda_rmsnorm(const void* x, const void* w, void* y, int dtype, int64_t rows,
                               int64_t cols, int64_t x_stride, int64_t y_stride, float eps,
                               void* stream) {
  if (rows < 0 || cols < 1 || rows > 2147483647LL)
    return kb_set_error(KB_EINVAL, "kb_cuda_rmsnorm: bad shape rows=%lld cols=%lld", (long long)rows,
                        (long long)cols);
  if (rows == 0) return KB_OK;
  switch (dtype) {
    case KB_F32: return launch<float>(x, w, y, rows, cols, x_stride, y_stride, eps, stream);
    case KB_BF16: return launch<__nv_bfloat16>(x, w, y, rows, cols, x_stride, y_stride, eps, stream);
    case KB_F16: return launch<__half>(x, w, y, rows, cols, x_stride, y_stride, eps, stream);
  }
  return kb_set_error(KB_EINVAL, "kb_cuda_rmsnorm: unknown dtype code %d", dtype);
}
