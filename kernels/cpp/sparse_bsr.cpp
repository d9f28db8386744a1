// sparse_bsr.cpp -- y[M, N] = x[M, K] @ W^T with W [N, K] block-sparse in BSR (sparsity/formats.py): blocks of
// b x b (b = 16 or 32), stored transposed (vals[j][kk][nn] = W[i*b + nn][c*b + kk]); fp32, bf16 or f16
// storage, fp32 accumulation. v1. (GEMV when M = 1: LLM decode.)
//
// Work: 2 * M * nnzb * b^2 FLOPs (only the stored blocks); bytes: the stored values and indices
// (nnzb * b^2 * itemsize + 4 * nnzb + 4 * (N/b + 1)) + x + y. At M = 1 this is memory-bound on the values
// (2 FLOPs per weight), so the speedup over a dense GEMV is at best 1/density; at M = 256 each block is reused
// across 256 rows and the kernel is FMA-bound.
//
// Loop: tasks are (block row i, tile of MR rows of x), shared out dynamically (block rows differ in their
// block counts). A task keeps its MR x b outputs in registers (MR x b/W vectors) across all blocks of the
// block row: per block and per input kk, one row of the transposed block (b contiguous values: b/W vector
// loads, converted to fp32), MR broadcasts of x (fp32, in L1/L2: a block needs b consecutive inputs of each
// row) and MR x b/W FMAs. AVX-512, b = 16: 8 rows -> 8 accumulators, 8 FMAs per vector load: FMA-bound.
// M = 1: four accumulator sets over kk % 4, so the FMA latency chain (4 cycles) does not bind.
// No packing and no barriers (one parallel loop): on this shared 2-core machine a barrier waits for
// whichever thread the OS descheduled.
//
// Measured: see README ("Sparsity", sparse_gemm table) and docs/sparsity.md.
#include <omp.h>

#include "kb_cpp.h"
#include "sparse.h"

namespace kb {
struct BsrArgs {
  const void* x; const int32_t* rowptr; const int32_t* cols; const void* vals; void* y;
  int64_t m, n, k, x_stride, y_stride;
  int block, dtype, threads;
};
}  // namespace kb

KB_DECLARE(int bsr_gemm(const kb::BsrArgs&))

#if KB_IMPL

namespace KB_NS {

#if defined(__AVX512F__)
constexpr int MR = 8;
#else
constexpr int MR = 4;
#endif

// y[0:R, 0:B] of block row i = sum over its blocks of x[0:R, c*B:(c+1)*B] @ block
template <class T, int B, int R>
static inline void tile(const float* x, int64_t xs, const int32_t* cols, const T* vals, int32_t j0, int32_t j1,
                        float* out /* [R][B] */) {
  constexpr int Q = B / W;
  vf acc[R][Q];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) acc[r][q] = zero();
  for (int32_t j = j0; j < j1; ++j) {
    const T* v = vals + int64_t(j) * B * B;
    const float* xp = x + int64_t(cols[j]) * B;
#pragma GCC unroll 4
    for (int kk = 0; kk < B; ++kk) {
      vf w[Q];
      for (int q = 0; q < Q; ++q) w[q] = load(v + kk * B + q * W);
      for (int r = 0; r < R; ++r) {
        const vf xb = set1(xp[r * xs + kk]);
        for (int q = 0; q < Q; ++q) acc[r][q] = fma(xb, w[q], acc[r][q]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) store(out + r * B + q * W, acc[r][q]);
}

// one row of x (GEMV): four accumulator sets over kk % 4 to break the FMA dependency chain
template <class T, int B>
static inline void row1(const float* x, const int32_t* cols, const T* vals, int32_t j0, int32_t j1, float* out) {
  constexpr int Q = B / W;
  vf acc[4][Q];
  for (int s = 0; s < 4; ++s)
    for (int q = 0; q < Q; ++q) acc[s][q] = zero();
  for (int32_t j = j0; j < j1; ++j) {
    const T* v = vals + int64_t(j) * B * B;
    const float* xp = x + int64_t(cols[j]) * B;
    for (int kk = 0; kk < B; kk += 4) {
#pragma GCC unroll 4
      for (int s = 0; s < 4; ++s) {
        const vf xb = set1(xp[kk + s]);
        for (int q = 0; q < Q; ++q) acc[s][q] = fma(xb, load(v + (kk + s) * B + q * W), acc[s][q]);
      }
    }
  }
  for (int q = 0; q < Q; ++q) store(out + q * W, add(add(acc[0][q], acc[1][q]), add(acc[2][q], acc[3][q])));
}

template <class T, int B>
static int run(const kb::BsrArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* vals = static_cast<const T*>(a.vals);
  T* y = static_cast<T*>(a.y);
  kb::Scratch xbuf(std::is_same_v<T, float> ? 0 : size_t(a.m * a.k) * sizeof(float));
  if (!std::is_same_v<T, float> && a.m * a.k > 0 && !xbuf.p) return kb::set_error(kb::E_NOMEM, "bsr: out of memory");
  int64_t xs = 0;
  const float* xf = as_f32(x, a.m, a.k, a.x_stride, xbuf.as<float>(), xs, a.threads);
  const int64_t nbr = a.n / B, mtiles = (a.m + MR - 1) / MR;
  const int64_t nnzb = a.rowptr[nbr];
  const int nt = kb::threads_for(a.threads, a.m * nnzb * B * B, int64_t(1) << 16);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < nbr * mtiles; ++t) {
    const int64_t i = t % nbr, m0 = (t / nbr) * MR;
    const int rows = int(a.m - m0 < MR ? a.m - m0 : MR);
    const int32_t j0 = a.rowptr[i], j1 = a.rowptr[i + 1];
    alignas(64) float out[MR * B];
    if (rows == MR && MR > 1) {
      tile<T, B, MR>(xf + m0 * xs, xs, a.cols, vals, j0, j1, out);
    } else {
      for (int r = 0; r < rows; ++r) row1<T, B>(xf + (m0 + r) * xs, a.cols, vals, j0, j1, out + r * B);
    }
    for (int r = 0; r < rows; ++r) {
      T* yr = y + (m0 + r) * a.y_stride + i * B;
      for (int q = 0; q < B; q += W) store(yr + q, load(out + r * B + q));
    }
  }
  return 0;
}

template <class T>
static int run_b(const kb::BsrArgs& a) {
  if (a.block == 16) return run<T, 16>(a);
  if (a.block == 32) return run<T, 32>(a);
  return kb::set_error(kb::E_ARG, "bsr: block %d (the kernel has 16 and 32)", a.block);
}

int bsr_gemm(const kb::BsrArgs& a) {
  switch (a.dtype) {
    case kb::F32: return run_b<float>(a);
    case kb::BF16: return run_b<bf16>(a);
    case kb::F16: return run_b<f16>(a);
  }
  return kb::set_error(kb::E_DTYPE, "bsr: dtype %d", a.dtype);
}

}  // namespace KB_NS

#else  // entry point

// y[M, N] = x[M, K] @ W^T, W in BSR (rowptr int32 [N/block + 1], cols int32 [nnzb], vals [nnzb, block, block]
// transposed blocks, same dtype as x and y); block 16 or 32; strides in elements; dtype 0 f32, 1 bf16, 2 f16.
KB_API int kb_cpp_bsr_gemm(const void* x, const void* rowptr_, const void* cols_, const void* vals, void* y,
                           int64_t m, int64_t n, int64_t k, int64_t x_stride, int64_t y_stride, int block, int dtype,
                           int threads) {
  const int32_t* rowptr = static_cast<const int32_t*>(rowptr_);
  const int32_t* cols = static_cast<const int32_t*>(cols_);
  if (!x || !rowptr || !y || m < 0 || n < 0 || k < 0 || (block != 16 && block != 32) || n % block || k % block ||
      (m > 1 && (x_stride < k || y_stride < n)))
    return kb::set_error(kb::E_ARG, "bsr: bad arguments (M=%lld N=%lld K=%lld block=%d strides %lld %lld)",
                         (long long)m, (long long)n, (long long)k, block, (long long)x_stride, (long long)y_stride);
  if (dtype < 0 || dtype > 2) return kb::set_error(kb::E_DTYPE, "bsr: dtype %d not supported", dtype);
  const int64_t nbr = n / block, nbc = k / block;
  if (rowptr[0] != 0) return kb::set_error(kb::E_ARG, "bsr: rowptr[0] = %d, not 0", rowptr[0]);
  for (int64_t i = 0; i < nbr; ++i)
    if (rowptr[i + 1] < rowptr[i])
      return kb::set_error(kb::E_ARG, "bsr: rowptr decreases at block row %lld", (long long)i);
  const int32_t nnzb = rowptr[nbr];
  if (nnzb > 0 && (!cols || !vals)) return kb::set_error(kb::E_ARG, "bsr: null cols or vals");
  for (int32_t j = 0; j < nnzb; ++j)
    if (cols[j] < 0 || cols[j] >= nbc) return kb::set_error(kb::E_ARG, "bsr: block column %d out of range", cols[j]);
  if (m == 0 || n == 0) return 0;
  kb::BsrArgs a{x, rowptr, cols, vals, y, m, n, k, x_stride, y_stride, block, dtype, threads};
  return KB_DISPATCH(bsr_gemm, a);
}
#endif
