// softmax.cu: y = softmax(x) over the last dimension of x [rows, cols] (row strides in elements).
//
// Algorithm: one block per row. Each thread walks the row with a block-sized stride, keeping an online
// (max, sum of exp) pair (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"); the
// pairs are merged across the block, then y = exp(x - max) / sum is written.
// Memory: when the row fits in 96 KiB of shared memory as fp32 (cols <= 24576) the first pass also
// stores it there, so x is read once and y written once: 2 * rows * cols * itemsize bytes, the minimum.
// Longer rows read x twice (3 passes' worth of traffic is avoided by the online max/sum).
// FLOPs: ~5 per element (max, sub, exp, add, mul); memory-bound on every GPU by ~2 orders of magnitude.
// expf, not __expf: the kernel is memory-bound, so the accurate exponential costs nothing measurable and
// keeps fp32 within 1e-5 relative of a float64 reference.
// Improves on: first version. Measured: not yet measured on a GPU.
#include "include/kb_common.h"

// kb-report: kb_softmax_kernel threads=256 smem_dynamic=4096 (as launched for 1024 columns)
template <typename T>
__global__ void __launch_bounds__(512) kb_softmax_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                         int64_t cols, int64_t x_stride,
                                                         int64_t y_stride, int cached) {
  extern __shared__ float kb_row[];  // cols floats when `cached`
  __shared__ float scratch[32];
  const T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* yr = y + (int64_t)blockIdx.x * y_stride;

  // Pass 1: per-thread online max and sum of exp(x - max).
  float m = -INFINITY, s = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = kb::to_f32(xr[c]);
    if (cached) kb_row[c] = v;
    if (v > m) {
      s = s * expf(m - v) + 1.0f;  // m == -inf at first: expf(-inf) = 0
      m = v;
    } else if (v != -INFINITY) {  // skip -inf: with m == -inf too, v - m would be NaN
      s += expf(v - m);
    }
  }
  // Merge the pairs: the block max, then each thread's sum rescaled to it.
  const float row_max = kb::block_max(m, scratch);
  const float scaled = (m == -INFINITY) ? 0.0f : s * expf(m - row_max);
  const float row_sum = kb::block_sum(scaled, scratch);
  const float inv = 1.0f / row_sum;

  // Pass 2: write y (each thread rereads the elements it cached itself: no barrier needed).
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = cached ? kb_row[c] : kb::to_f32(xr[c]);
    yr[c] = kb::from_f32<T>(expf(v - row_max) * inv);
  }
}

template <typename T>
static int launch(const void* x, void* y, int64_t rows, int64_t cols, int64_t xs, int64_t ys,
                  void* stream) {
  const int threads = kb_row_threads(cols);
  const int cached = cols * (int64_t)sizeof(float) <= KB_ROW_CACHE_BYTES;
  const size_t smem = cached ? (size_t)cols * sizeof(float) : 0;
  auto kernel = kb_softmax_kernel<T>;
  KB_OPT_IN_SMEM_ONCE(kernel, KB_ROW_CACHE_BYTES);
  KB_LAUNCH(kernel, dim3((unsigned)rows), dim3(threads), smem, stream, (const T*)x, (T*)y, cols, xs, ys,
            cached);
  return kb_check_launch("kb_cuda_softmax");
}

extern "C" int kb_cuda_softmax(const void* x, void* y, int dtype, int64_t rows, int64_t cols,
                               int64_t x_stride, int64_t y_stride, void* stream) {
  if (rows < 0 || cols < 1 || rows > 2147483647LL)
    return kb_set_error(KB_EINVAL, "kb_cuda_softmax: bad shape rows=%lld cols=%lld", (long long)rows,
                        (long long)cols);
  if (rows == 0) return KB_OK;
  switch (dtype) {
    case KB_F32: return launch<float>(x, y, rows, cols, x_stride, y_stride, stream);
    case KB_BF16: return launch<__nv_bfloat16>(x, y, rows, cols, x_stride, y_stride, stream);
    case KB_F16: return launch<__half>(x, y, rows, cols, x_stride, y_stride, stream);
  }
  return kb_set_error(KB_EINVAL, "kb_cuda_softmax: unknown dtype code %d", dtype);
}
