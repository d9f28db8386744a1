// sparse_24.cpp -- y[M, N] = x[M, K] @ W^T with W [N, K] 2:4-sparse, compressed (sparsity/formats.py): vals
// [N, K/2] (the 2 kept values of every group of 4 inputs) and meta int32 [N, ceil(K/32)] (2 bits per kept
// value: its position in the group); fp32, bf16 or f16 storage, fp32 accumulation. v1. GEMV at M = 1
// (decode), GEMM above.
//
// Work: 2 * M * N * K/2 FLOPs (the kept half); bytes: values N*K/2 * itemsize + indices N*K/16 + x + y.
// Decode (M = 1) reads every weight once for 2 FLOPs: memory-bound, so what 2:4 buys there is bytes --
// 0.5625x the dense bf16 weight (0.53x fp32), at best 1.78x (1.89x) over a dense GEMV that streams at the
// same bandwidth.
//
// AVX-512 loop, per output row n and per 32 inputs (one meta word, 16 kept values):
//   idx  = ((broadcast(word) >> 2*lane) & 3) + 4*(lane/2)      the input position of each kept value, 0..31
//   v    = 16 kept values (one load, bf16 -> fp32)
//   g_r  = permutex2var(x_r[0:16], idx, x_r[16:32])            the 16 inputs they multiply, for each row r
//   acc_r += v * g_r
// so the weights are read once and never decompressed to memory; the permutes (one per row per 16 values)
// are the cost a dense kernel does not pay, which is why 2:4 does not win at large M on a CPU (no sparse FMA
// unit). Rows of x in tiles of MR = 4 (4 accumulators; M = 1: two accumulators over even/odd words to hide
// the FMA latency). Output rows n are shared out in chunks of 16 over threads. Inputs past the last full word
// (K % 32) go through a scalar tail. The AVX2 build uses the scalar loop throughout (no 2-source permute).
//
// Measured: see README ("Sparsity", sparse_gemm table) and docs/sparsity.md.
#include <omp.h>

#include "kb_cpp.h"
#include "sparse.h"

namespace kb {
struct Gemm24Args {
  const void* x; const void* vals; const int32_t* meta; void* y;
  int64_t m, n, k, x_stride, y_stride;
  int dtype, threads;
};
}  // namespace kb

KB_DECLARE(int gemm_24(const kb::Gemm24Args&))

#if KB_IMPL

namespace KB_NS {

constexpr int MR24 = 4;

// the scalar dot product of kept values [j0, j1) of one weight row with one row of x
template <class T>
static inline float tail_dot(const float* x, const T* v, const int32_t* meta, int64_t j0, int64_t j1) {
  float s = 0.f;
  for (int64_t j = j0; j < j1; ++j) {
    const uint32_t word = uint32_t(meta[j / 16]);
    const int64_t pos = 4 * (j / 2) + ((word >> (2 * (j % 16))) & 3u);
    s += to_f32(v[j]) * x[pos];
  }
  return s;
}

#if defined(__AVX512F__)
static inline __m512i positions(uint32_t word) {
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i w = _mm512_set1_epi32(int(word));
  return _mm512_add_epi32(_mm512_and_si512(_mm512_srlv_epi32(w, shifts), _mm512_set1_epi32(3)), base);
}

// R rows of x against one weight row: out[r] = dot(x[r], w)
template <class T, int R>
static inline void rows_dot(const float* x, int64_t xs, const T* v, const int32_t* meta, int64_t k, float* out) {
  const int64_t words = k / 32;            // full words: 32 inputs, 16 kept values each
  vf acc[R], acc2[R];
  for (int r = 0; r < R; ++r) { acc[r] = zero(); acc2[r] = zero(); }
  int64_t w = 0;
  if (R == 1) {                            // decode: two chains over even / odd words
    for (; w + 2 <= words; w += 2) {
      const __m512i i0 = positions(uint32_t(meta[w])), i1 = positions(uint32_t(meta[w + 1]));
      const vf v0 = load(v + w * 16), v1 = load(v + w * 16 + 16);
      const float* xp = x + w * 32;
      acc[0] = fma(v0, _mm512_permutex2var_ps(load(xp), i0, load(xp + 16)), acc[0]);
      acc2[0] = fma(v1, _mm512_permutex2var_ps(load(xp + 32), i1, load(xp + 48)), acc2[0]);
    }
  }
  for (; w < words; ++w) {
    const __m512i idx = positions(uint32_t(meta[w]));
    const vf vv = load(v + w * 16);
    for (int r = 0; r < R; ++r) {
      const float* xp = x + r * xs + w * 32;
      acc[r] = fma(vv, _mm512_permutex2var_ps(load(xp), idx, load(xp + 16)), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(add(acc[r], acc2[r])) + tail_dot(x + r * xs, v, meta, words * 16, k / 2);
}
#endif

template <class T>
static int run(const kb::Gemm24Args& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* vals = static_cast<const T*>(a.vals);
  T* y = static_cast<T*>(a.y);
  kb::Scratch xbuf(std::is_same_v<T, float> ? 0 : size_t(a.m * a.k) * sizeof(float));
  if (!std::is_same_v<T, float> && a.m * a.k > 0 && !xbuf.p) return kb::set_error(kb::E_NOMEM, "2:4: out of memory");
  int64_t xs = 0;
  const float* xf = as_f32(x, a.m, a.k, a.x_stride, xbuf.as<float>(), xs, a.threads);
  const int64_t half = a.k / 2, mw = (half + 15) / 16;
  // tasks: chunks of NCHUNK weight rows (NCHUNK * K/2 values: 64 KiB of bf16 at K = 4096, stays in L2 while
  // every tile of x passes over it)
  constexpr int64_t NCHUNK = 16;
  const int64_t chunks = (a.n + NCHUNK - 1) / NCHUNK;
  const int nt = kb::threads_for(a.threads, a.m * a.n * half, int64_t(1) << 16);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n1 = (c + 1) * NCHUNK < a.n ? (c + 1) * NCHUNK : a.n;
    for (int64_t m0 = 0; m0 < a.m; m0 += MR24) {
      const int rows = int(a.m - m0 < MR24 ? a.m - m0 : MR24);
      for (int64_t n = c * NCHUNK; n < n1; ++n) {
        const T* v = vals + n * half;
        const int32_t* meta = a.meta + n * mw;
        float out[MR24];
#if defined(__AVX512F__)
        if (rows == MR24) rows_dot<T, MR24>(xf + m0 * xs, xs, v, meta, a.k, out);
        else
          for (int r = 0; r < rows; ++r) rows_dot<T, 1>(xf + (m0 + r) * xs, xs, v, meta, a.k, out + r);
#else
        for (int r = 0; r < rows; ++r) out[r] = tail_dot(xf + (m0 + r) * xs, v, meta, 0, half);
#endif
        for (int r = 0; r < rows; ++r) y[(m0 + r) * a.y_stride + n] = from_f32<T>(out[r]);
      }
    }
  }
  return 0;
}

int gemm_24(const kb::Gemm24Args& a) {
  switch (a.dtype) {
    case kb::F32: return run<float>(a);
    case kb::BF16: return run<bf16>(a);
    case kb::F16: return run<f16>(a);
  }
  return kb::set_error(kb::E_DTYPE, "2:4: dtype %d", a.dtype);
}

}  // namespace KB_NS

#else  // entry point

// y[M, N] = x[M, K] @ W^T, W 2:4 compressed: vals [N, K/2] (row stride K/2, dtype of x and y), meta int32
// [N, ceil(K/32)] (2-bit positions); K % 4 == 0; strides of x and y in elements; dtype 0 f32, 1 bf16, 2 f16.
KB_API int kb_cpp_gemm_24(const void* x, const void* vals, const void* meta, void* y, int64_t m, int64_t n,
                          int64_t k, int64_t x_stride, int64_t y_stride, int dtype, int threads) {
  if (!x || !vals || !meta || !y || m < 0 || n < 0 || k < 4 || k % 4 || (m > 1 && (x_stride < k || y_stride < n)))
    return kb::set_error(kb::E_ARG, "2:4: bad arguments (M=%lld N=%lld K=%lld strides %lld %lld; K %% 4 == 0)",
                         (long long)m, (long long)n, (long long)k, (long long)x_stride, (long long)y_stride);
  if (dtype < 0 || dtype > 2) return kb::set_error(kb::E_DTYPE, "2:4: dtype %d not supported", dtype);
  if (m == 0 || n == 0) return 0;
  kb::Gemm24Args a{x, vals, static_cast<const int32_t*>(meta), y, m, n, k, x_stride, y_stride, dtype, threads};
  return KB_DISPATCH(gemm_24, a);
}
#endif
