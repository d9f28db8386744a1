// rmsnorm.cpp -- RMSNorm forward: y = x * rsqrt(mean(x^2) + eps) * w over the last dimension (Zhang &
// Sennrich 2019), x and y [rows, cols] with row strides, w [cols]; f32, bf16, f16 storage, fp32 math. v1.
//
// Per element: 4 FLOPs (square-add, two multiplies... x*r*w); traffic: read x once, write y once, w stays
// in cache (2 x rows x cols x itemsize bytes). Memory-bound, so: two passes per row, the first from memory
// (sum of squares, four accumulators), the second from L1/L2 (the row was just read) writing y, with
// streaming stores when the output is large (>= 16 MiB) to avoid reading y's lines before writing them.
// One fused kernel; torch's F.rms_norm on the CPU is a composite of several elementwise ops.
// Threads: OpenMP over rows, static schedule.
//
// Measured (bench.py --suite norm --full, 2 threads, shared 2-core Xeon, quiet moment; medians):
//   8192x4096 fp32 8.08 ms (33 GB/s) vs F.rms_norm eager 123 ms (15x), torch.compile 43.1 ms (5.3x)
//   8192x4096 bf16 4.62 ms vs 186 ms (40x) / 23.8 ms (5.2x). Full table: docs/cpp-kernels.md.
#include <omp.h>

#include <cmath>

#include "kb_cpp.h"

namespace kb {
struct RmsNormArgs {
  const void* x; const void* w; void* y;
  int64_t rows, cols, x_stride, y_stride;
  float eps;
  int dtype, threads;
};
}  // namespace kb

KB_DECLARE(int rmsnorm(const kb::RmsNormArgs&))

#if KB_IMPL
#include "simd.h"

namespace KB_NS {

constexpr int64_t GRAIN = 32768;   // elements per thread at least (as ATen's GRAIN_SIZE)

template <class T>
static void row(const T* x, const T* w, T* y, int64_t n, float eps, bool nt) {
  // blocked sum of squares (simd.h): fp32 lanes within 4096-element blocks, blocks added in double
  const float ms = float(blocked_sum(n, [&](int64_t i, int c) {
    vf a = loadn(x + i, c, 0.f);
    return mul(a, a);
  }) / double(n));
  const vf r = set1(1.0f / std::sqrt(ms + eps));
  write_row(y, n, nt, [&](int64_t j, int c) { return mul(mul(loadn(x + j, c, 0.f), r), loadn(w + j, c, 0.f)); });
}

template <class T>
static int run(const kb::RmsNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.w);
  T* y = static_cast<T*>(a.y);
  const bool nt = a.rows * a.cols * int64_t(sizeof(T)) >= STREAM_MIN_BYTES;
#pragma omp parallel num_threads(kb::threads_for(a.threads, a.rows * a.cols, GRAIN))
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < a.rows; ++r) row(x + r * a.x_stride, w, y + r * a.y_stride, a.cols, a.eps, nt);
    if (nt) _mm_sfence();
  }
  return 0;
}

int rmsnorm(const kb::RmsNormArgs& a) {
  switch (a.dtype) {
    case kb::F32: return run<float>(a);
    case kb::BF16: return run<bf16>(a);
    case kb::F16: return run<f16>(a);
  }
  return kb::set_error(kb::E_DTYPE, "rmsnorm: dtype %d", a.dtype);
}

}  // namespace KB_NS

#else  // entry point

// y[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * w for r < rows; w has cols elements of the same dtype.
KB_API int kb_cpp_rmsnorm(const void* x, const void* w, void* y, int64_t rows, int64_t cols, int64_t x_stride,
                          int64_t y_stride, float eps, int dtype, int threads) {
  if (!x || !w || !y || rows < 0 || cols < 1 || (rows > 1 && (x_stride < cols || y_stride < cols)) || !(eps >= 0))
    return kb::set_error(kb::E_ARG, "rmsnorm: bad arguments (rows=%lld cols=%lld strides %lld %lld)",
                         (long long)rows, (long long)cols, (long long)x_stride, (long long)y_stride);
  if (dtype < 0 || dtype > 2) return kb::set_error(kb::E_DTYPE, "rmsnorm: dtype %d not supported", dtype);
  kb::RmsNormArgs a{x, w, y, rows, cols, x_stride, y_stride, eps, dtype, threads};
  return KB_DISPATCH(rmsnorm, a);
}
#endif
