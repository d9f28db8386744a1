// layernorm.cu: LayerNorm forward, y = (x - mean) * rsqrt(var + eps) * w + b, over the last dimension of
// x [rows, cols] (row strides in elements; biased variance as torch.nn.functional.layer_norm); w and b
// have cols elements of the input dtype (Ba, Kiros & Hinton 2016).
//
// One block per row. The mean is reduced first, then the variance as mean((x - mean)^2) over the cached
// row (two passes over shared memory, not E[x^2] - E[x]^2, which cancels catastrophically when
// |mean| >> std). The row is cached in shared memory as fp32 when it fits 96 KiB (cols <= 24576), so x is
// read once from global memory: bytes = 2 * rows * cols * itemsize + 2 * cols * itemsize (w, b).
// Longer rows read x three times. FLOPs: ~7 per element. Memory-bound. Accumulation in fp32.
// Improves on: first version. Measured: not yet measured on a GPU.
#include "include/kb_common.h"

// kb-report: kb_layernorm_kernel threads=256 smem_dynamic=4096 (as launched for 1024 columns)
template <typename T>
__global__ void __launch_bounds__(512) kb_layernorm_kernel(const T* __restrict__ x,
                                                           const T* __restrict__ w,
                                                           const T* __restrict__ b, T* __restrict__ y,
                                                           int64_t cols, int64_t x_stride,
                                                           int64_t y_stride, float eps, int cached) {
  extern __shared__ float kb_row[];
  __shared__ float scratch[32];
  const T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* yr = y + (int64_t)blockIdx.x * y_stride;

  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = kb::to_f32(xr[c]);
    if (cached) kb_row[c] = v;
    s += v;
  }
  const float mean = kb::block_sum(s, scratch) / (float)cols;

  float ss = 0.0f;  // each thread rereads only what it cached itself
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = (cached ? kb_row[c] : kb::to_f32(xr[c])) - mean;
    ss = fmaf(d, d, ss);
  }
  const float r = rsqrtf(kb::block_sum(ss, scratch) / (float)cols + eps);

  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = cached ? kb_row[c] : kb::to_f32(xr[c]);
    yr[c] = kb::from_f32<T>(fmaf((v - mean) * r, kb::to_f32(w[c]), kb::to_f32(b[c])));
  }
}

template <typename T>
static int launch(const void* x, const void* w, const void* b, void* y, int64_t rows, int64_t cols,
                  int64_t xs, int64_t ys, float eps, void* stream) {
  const int threads = kb_row_threads(cols);
  const int cached = cols * (int64_t)sizeof(float) <= KB_ROW_CACHE_BYTES;
  const size_t smem = cached ? (size_t)cols * sizeof(float) : 0;
  auto kernel = kb_layernorm_kernel<T>;
  KB_OPT_IN_SMEM_ONCE(kernel, KB_ROW_CACHE_BYTES);
  KB_LAUNCH(kernel, dim3((unsigned)rows), dim3(threads), smem, stream, (const T*)x, (const T*)w,
            (const T*)b, (T*)y, cols, xs, ys, eps, cached);
  return kb_check_launch("kb_cuda_layernorm");
}

extern "C" int kb_cuda_layernorm(const void* x, const void* w, const void* b, void* y, int dtype,
                                 int64_t rows, int64_t cols, int64_t x_stride, int64_t y_stride,
                                 float eps, void* stream) {
  if (rows < 0 || cols < 1 || rows > 2147483647LL)
    return kb_set_error(KB_EINVAL, "kb_cuda_layernorm: bad shape rows=%lld cols=%lld", (long long)rows,
                        (long long)cols);
  if (rows == 0) return KB_OK;
  switch (dtype) {
    case KB_F32: return launch<float>(x, w, b, y, rows, cols, x_stride, y_stride, eps, stream);
    case KB_BF16: return launch<__nv_bfloat16>(x, w, b, y, rows, cols, x_stride, y_stride, eps, stream);
    case KB_F16: return launch<__half>(x, w, b, y, rows, cols, x_stride, y_stride, eps, stream);
  }
  return kb_set_error(KB_EINVAL, "kb_cuda_layernorm: unknown dtype code %d", dtype);
}
