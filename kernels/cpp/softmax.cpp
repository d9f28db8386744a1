// softmax.cpp -- y = softmax(x) over the last dimension, x and y [rows, cols] with row strides; f32, bf16,
// f16 storage, fp32 arithmetic. v1.
//
// Work per element: ~4 FLOPs (max, sub, exp, mul) plus an exp (~10 FMAs); traffic: read x once, write y
// once (2 x rows x cols x itemsize bytes). At 8192x4096 fp32 that is 256 MiB of traffic for 34 M exps, so
// the kernel is memory-bound on any x86 core: the design goal is to touch DRAM exactly once per byte.
//
// Rows that fit in a core's cache (cols <= 64 Ki) -- three passes, one of them over memory:
//   1. m = max(x)               reads x from memory (it lands in L1/L2)
//   2. e = exp(x - m), s = sum e  reads x from cache, writes e to a per-thread fp32 row buffer (L1/L2)
//   3. y = e * (1/s)            reads e from cache, writes y -- with streaming stores when the whole output
//                               is large (>= 16 MiB), which skips the read-for-ownership of y's lines and
//                               so cuts the DRAM traffic from 3 to 2 passes' worth.
// Longer rows -- online softmax (Milakov & Gimelshein 2018): one pass keeps a running max and a rescaled
// sum per vector lane, a second pass writes exp(x - m)/s: two reads of x from memory, one write.
// Threads: OpenMP over rows, static schedule (rows are equal work).
//
// Measured (bench.py --suite softmax --full, 2 threads, shared 2-core Xeon with AVX-512, quiet moment;
// medians, full table with spreads in docs/cpp-kernels.md):
//   8192x4096  fp32 9.96 ms (26.9 GB/s) vs torch eager 47.2 ms (4.7x), torch.compile 51.1 ms (5.1x)
//   4096x16384 fp32 23.1 ms vs 93.0 / 97.4 ms (4.0x / 4.2x); 32768x1024 fp32 10.2 ms vs 51.2 / 52.2 ms (5.0x)
//   8192x4096  bf16 7.32 ms vs 28.3 / 30.0 ms (3.9x / 4.1x)
//   Under load (load average 3-7) the ratios were 2.0-5.0x (fp32) and 1.2-2.6x (bf16).
#include <omp.h>

#include <cfloat>

#include "kb_cpp.h"

namespace kb {
struct SoftmaxArgs {
  const void* x; void* y;
  int64_t rows, cols, x_stride, y_stride;
  int dtype, threads;
};
}  // namespace kb

KB_DECLARE(int softmax(const kb::SoftmaxArgs&))

#if KB_IMPL
#include "simd.h"

namespace KB_NS {

constexpr int64_t GRAIN = 32768;   // elements per thread at least (as ATen's GRAIN_SIZE)

constexpr int64_t CACHED_MAX_COLS = int64_t(1) << 16;   // 256 KiB fp32 row buffer: fits L2

template <class T>
static void row_cached(const T* x, T* y, int64_t n, float* e, bool nt) {
  // pass 1: max, four independent accumulators to hide the max latency
  vf m0 = set1(-FLT_MAX), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    m0 = max(m0, load(x + i)); m1 = max(m1, load(x + i + W));
    m2 = max(m2, load(x + i + 2 * W)); m3 = max(m3, load(x + i + 3 * W));
  }
  for (; i < n; i += W) m0 = max(m0, loadn(x + i, int(n - i < W ? n - i : W), -FLT_MAX));
  const vf m = set1(hmax(max(max(m0, m1), max(m2, m3))));
  // pass 2: e = exp(x - m) into the row buffer, s = sum(e)
  vf s0 = zero(), s1 = zero();
  for (i = 0; i + 2 * W <= n; i += 2 * W) {
    vf e0 = exp(sub(load(x + i), m)), e1 = exp(sub(load(x + i + W), m));
    store(e + i, e0); store(e + i + W, e1);
    s0 = add(s0, e0); s1 = add(s1, e1);
  }
  for (; i < n; i += W) {
    int c = int(n - i < W ? n - i : W);
    vf v = keep(exp(sub(loadn(x + i, c, 0.f), m)), c);
    store(e + i, v, c);
    s0 = add(s0, v);
  }
  const vf inv = set1(1.0f / hsum(add(s0, s1)));
  // pass 3: y = e / s
  write_row(y, n, nt, [&](int64_t j, int c) { return mul(loadn(e + j, c, 0.f), inv); });
}

template <class T>
static void row_online(const T* x, T* y, int64_t n, bool nt) {
  // one pass: per-lane running max m and sum s of exp(x - m), rescaled when m grows
  vf m = set1(-FLT_MAX), s = zero();
  for (int64_t i = 0; i < n; i += W) {
    vf v = loadn(x + i, int(n - i < W ? n - i : W), -INFINITY);
    vf mn = max(m, v);
    s = fma(s, exp(sub(m, mn)), exp(sub(v, mn)));
    m = mn;
  }
  const float M = hmax(m);
  const float S = hsum(mul(s, exp(sub(m, set1(M)))));
  const vf vm = set1(M), inv = set1(1.0f / S);
  write_row(y, n, nt, [&](int64_t j, int c) { return mul(exp(sub(loadn(x + j, c, 0.f), vm)), inv); });
}

template <class T>
static int run(const kb::SoftmaxArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const bool nt = a.rows * a.cols * int64_t(sizeof(T)) >= STREAM_MIN_BYTES;
  const bool cached = a.cols <= CACHED_MAX_COLS;
  int err = 0;
#pragma omp parallel num_threads(kb::threads_for(a.threads, a.rows * a.cols, GRAIN))
  {
    kb::Scratch buf(cached ? size_t(a.cols) * sizeof(float) : 0);
    if (cached && !buf.p) {
#pragma omp atomic write
      err = kb::E_NOMEM;
    }
    if (!cached || buf.p) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < a.rows; ++r) {
        const T* xr = x + r * a.x_stride;
        T* yr = y + r * a.y_stride;
        if (cached) row_cached(xr, yr, a.cols, buf.as<float>(), nt);
        else row_online(xr, yr, a.cols, nt);
      }
    }
    if (nt) _mm_sfence();
  }
  return err ? kb::set_error(err, "softmax: out of memory") : 0;
}

int softmax(const kb::SoftmaxArgs& a) {
  switch (a.dtype) {
    case kb::F32: return run<float>(a);
    case kb::BF16: return run<bf16>(a);
    case kb::F16: return run<f16>(a);
  }
  return kb::set_error(kb::E_DTYPE, "softmax: dtype %d", a.dtype);
}

}  // namespace KB_NS

#else  // entry point

// y[r, :] = softmax(x[r, :]) for r < rows; strides in elements; dtype 0 f32, 1 bf16, 2 f16;
// threads <= 0: OpenMP default. Returns 0 or an error code (kb_cpp_last_error()).
KB_API int kb_cpp_softmax(const void* x, void* y, int64_t rows, int64_t cols, int64_t x_stride,
                          int64_t y_stride, int dtype, int threads) {
  if (!x || !y || rows < 0 || cols < 1 || (rows > 1 && (x_stride < cols || y_stride < cols)))
    return kb::set_error(kb::E_ARG, "softmax: bad arguments (rows=%lld cols=%lld strides %lld %lld)",
                         (long long)rows, (long long)cols, (long long)x_stride, (long long)y_stride);
  if (dtype < 0 || dtype > 2) return kb::set_error(kb::E_DTYPE, "softmax: dtype %d not supported", dtype);
  kb::SoftmaxArgs a{x, y, rows, cols, x_stride, y_stride, dtype, threads};
  return KB_DISPATCH(softmax, a);
}
#endif
