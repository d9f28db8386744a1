// gemm.cpp -- C[M,N] = A[M,K] @ B[K,N], row-major with row strides; fp32 (and bf16 storage converted to
// fp32 while packing, fp32 accumulation). v1: the BLIS/GotoBLAS scheme (Goto & van de Geijn 2008;
// Van Zee & van de Geijn 2015).
//
// FLOPs 2MNK; bytes ideally (MK + KN + MN) x itemsize -- compute-bound from tiny sizes up, so what counts is
// keeping the FMA units busy: two 512-bit FMAs per cycle per core on this Xeon (64 fp32 FLOP/cycle).
//
// Blocking: all of B is packed once, up front, into KC x NR micro-panels (shared by the threads); then
// blocks of C, MC (<= 336) rows x NC (2048) columns, are shared out dynamically (>= 4 per thread), and for
// each block:
//   pc: KC = 256 of the K dimension          K-slice; C is accumulated in place across slices
//   ic: the block's MC rows of A             packed per thread (<= 336 x 256 x 4 B = 344 KiB: L2)
//   jr: NR = 2 vectors (32 fp32 under AVX-512) columns
//   ir: MR = 14 rows (AVX-512) / 6 (AVX2)   one micro-kernel call
// Micro-kernel: an MR x NR tile of C in registers (14 x 2 zmm = 28 accumulators + 2 B vectors + the
// broadcast A element = 31 of the 32 zmm registers); per k: 2 vector loads of packed B (L1: the B
// micro-panel is KC x NR x 4 B = 32 KiB), 14 broadcasts of packed A (L2, embedded-broadcast FMA operands),
// 28 FMAs -> FMA-bound (14 cycles of FMAs vs 8 of loads). Packing makes both operands unit-stride and
// zero-pads the edges, so the micro-kernel never branches; edge tiles of C go through a small buffer.
// bf16 (or any non-fp32 C) accumulates in an fp32 copy of C and rounds once at the end.
// Threads: one parallel region with one barrier (after packing B): on a shared machine a descheduled
// thread stalls every barrier (v1 of this file had one barrier per K-slice and ran slower with two threads
// than with one under load), so the blocks of C are independent tasks after that.
//
// Measured (bench.py --suite gemm --full, fp32, 2 threads, shared 2-core Xeon at a quiet moment; medians):
//   2048^3          48.6 ms = 0.354 TFLOP/s vs torch.matmul (MKL) 39.9 ms = 0.431 TFLOP/s: 0.82x, i.e. 82% of
//                   the measured peak (the peak suite's figure is torch.matmul's own)
//   4096x4096x1024  100 ms vs 103 ms: 1.03x;   1000x4096x4096  118 ms vs 86.5 ms: 0.73x
//   one thread: 2048^3 0.189 vs 0.212 TFLOP/s (0.89x, ~88% of one core's 64 FLOP/cycle at ~3.4 GHz)
//   v1 of the threading (a barrier per K-slice) ran slower with 2 threads than with 1 under load.
#include <omp.h>

#include <algorithm>

#include "gemm.h"
#include "kb_cpp.h"

KB_DECLARE(int gemm(const kb::GemmArgs&))

#if KB_IMPL
#include "simd.h"

namespace KB_NS {

#if defined(__AVX512F__)
constexpr int MR = 14;
#else
constexpr int MR = 6;
#endif
constexpr int NR = 2 * W;
constexpr int64_t KC = 256, MC = MR * 24, NC = 2048;

// C[0:MR, 0:NR] (+)= Ap[kc][MR] @ Bp[kc][NR]
static inline void micro(int64_t kc, const float* __restrict Ap, const float* __restrict Bp, float* C, int64_t ldc,
                         bool acc) {
  vf c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    c0[i] = zero(); c1[i] = zero();
    // the C tile is read (acc) and written after the k loop: start fetching its lines now, so that their
    // DRAM latency hides behind the kc x 28 FMAs instead of stalling the stores
    _mm_prefetch((const char*)(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char*)(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const vf b0 = load(Bp), b1 = load(Bp + W);
    _mm_prefetch((const char*)(Bp + 8 * NR), _MM_HINT_T0);
    _mm_prefetch((const char*)(Ap + 8 * MR), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf a = set1(Ap[i]);
      c0[i] = fma(a, b0, c0[i]);
      c1[i] = fma(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += NR;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* r = C + i * ldc;
    if (acc) { c0[i] = add(c0[i], load(r)); c1[i] = add(c1[i], load(r + W)); }
    store(r, c0[i]);
    store(r + W, c1[i]);
  }
}

// Pack A[0:mc, 0:kc] (row stride lda) into MR-row panels: Ap[panel][k][MR], zero rows past mc.
template <class T>
static void pack_a_panel(const T* A, int64_t lda, int64_t rows, int64_t kc, float* Ap) {
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < MR; ++i) Ap[k * MR + i] = i < rows ? to_f32(A[i * lda + k]) : 0.f;
}
// Pack B[0:kc, 0:cols] (row stride ldb) into one NR-column panel: Bp[k][NR], zero columns past cols.
template <class T>
static void pack_b_panel(const T* B, int64_t ldb, int64_t cols, int64_t kc, float* Bp) {
  if (cols == NR) {
    for (int64_t k = 0; k < kc; ++k) {
      store(Bp + k * NR, load(B + k * ldb));
      store(Bp + k * NR + W, load(B + k * ldb + W));
    }
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      int c0 = int(std::min<int64_t>(cols, W)), c1 = int(std::max<int64_t>(cols - W, 0));
      store(Bp + k * NR, load(B + k * ldb, c0, 0.f));
      store(Bp + k * NR + W, c1 > 0 ? load(B + k * ldb + W, c1, 0.f) : zero());
    }
  }
}

template <class T>
static int run(const kb::GemmArgs& g) {
  const T* A = static_cast<const T*>(g.a);
  const T* B = static_cast<const T*>(g.b);
  const int64_t M = g.M, N = g.N, K = g.K;
  // ~1 MFLOP per thread at least (a few hundred microseconds of one core)
  const int nthreads = kb::threads_for(g.threads, M * N * std::max<int64_t>(K, 1), int64_t(1) << 19);
  // fp32 C is accumulated in place; other dtypes in an fp32 buffer rounded once at the end
  constexpr bool direct = std::is_same_v<T, float>;
  kb::Scratch cbuf(direct ? 0 : size_t(M) * size_t(N) * sizeof(float));
  float* C = direct ? static_cast<float*>(g.c) : cbuf.as<float>();
  const int64_t ldc = direct ? g.ldc : N;
  // MC: at most MC rows, and enough blocks (>= 4 per thread) that the dynamic schedule balances the threads
  const int64_t nblk = std::max<int64_t>((M + MC - 1) / MC, 4 * nthreads);
  const int64_t mc_blk = std::max<int64_t>(MR, ((M + nblk - 1) / nblk + MR - 1) / MR * MR);
  const int64_t mblocks = (M + mc_blk - 1) / mc_blk, nblocks = (N + NC - 1) / NC;
  // all of B packed once, up front: [K-slice][NR-column panel][KC][NR]
  const int64_t kslices = (K + KC - 1) / KC, bpanels = (N + NR - 1) / NR, kc_max = std::min(KC, K);
  const int64_t slice_stride = bpanels * NR * kc_max;
  kb::Scratch bpack(size_t(kslices) * size_t(slice_stride) * sizeof(float));
  if ((!direct && !cbuf.p) || (K > 0 && !bpack.p)) return kb::set_error(kb::E_NOMEM, "gemm: out of memory");
  float* Bp = bpack.as<float>();

  if (K == 0) {   // C = 0
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
  }
  int err = 0;
#pragma omp parallel num_threads(nthreads)
  {
    alignas(64) float edge[MR * NR];
    kb::Scratch apack(size_t(kc_max) * size_t(mc_blk) * sizeof(float));   // this thread's A block (L2)
    float* Ap = apack.as<float>();
    if (K > 0 && !Ap) {
#pragma omp atomic write
      err = kb::E_NOMEM;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < kslices * bpanels; ++t) {
      const int64_t ks = t / bpanels, jp = t % bpanels;
      const int64_t pc = ks * KC, kc = std::min(KC, K - pc);
      pack_b_panel(B + pc * g.ldb + jp * NR, g.ldb, std::min<int64_t>(NR, N - jp * NR), kc,
                   Bp + ks * slice_stride + jp * NR * kc);
    }
    // the only barrier (implicit above). Then (MC x NC) blocks of C, shared out dynamically.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < mblocks * nblocks; ++task) {
      if (!Ap) continue;
      const int64_t ic = (task % mblocks) * mc_blk, jc = (task / mblocks) * NC;
      const int64_t mc = std::min(mc_blk, M - ic), nc = std::min(NC, N - jc);
      const int64_t mpanels = (mc + MR - 1) / MR, npanels = (nc + NR - 1) / NR;
      for (int64_t ks = 0; ks < kslices; ++ks) {
        const int64_t pc = ks * KC, kc = std::min(KC, K - pc);
        const bool acc = pc > 0;
        for (int64_t ip = 0; ip < mpanels; ++ip)
          pack_a_panel(A + (ic + ip * MR) * g.lda + pc, g.lda, std::min<int64_t>(MR, mc - ip * MR), kc,
                       Ap + ip * MR * kc);
        const float* Bs = Bp + ks * slice_stride + (jc / NR) * NR * kc;
        for (int64_t jp = 0; jp < npanels; ++jp) {
          const int64_t j = jc + jp * NR, ncols = std::min<int64_t>(NR, N - j);
          for (int64_t ip = 0; ip < mpanels; ++ip) {
            const int64_t i = ic + ip * MR, nrows = std::min<int64_t>(MR, M - i);
            float* Ct = C + i * ldc + j;
            if (nrows == MR && ncols == NR) {
              micro(kc, Ap + ip * MR * kc, Bs + jp * NR * kc, Ct, ldc, acc);
            } else {   // edge tile: compute into a buffer, add the valid part
              micro(kc, Ap + ip * MR * kc, Bs + jp * NR * kc, edge, NR, false);
              for (int64_t r = 0; r < nrows; ++r)
                for (int64_t c = 0; c < ncols; ++c)
                  Ct[r * ldc + c] = acc ? Ct[r * ldc + c] + edge[r * NR + c] : edge[r * NR + c];
            }
          }
        }
      }
    }
    if constexpr (!direct) {   // round the fp32 result once into C
      T* Cout = static_cast<T*>(g.c);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < M; ++i)
        write_row(Cout + i * g.ldc, N, false, [&](int64_t j, int c) { return loadn(C + i * N + j, c, 0.f); });
    }
  }
  return err ? kb::set_error(err, "gemm: out of memory") : 0;
}

int gemm(const kb::GemmArgs& g) {
  switch (g.dtype) {
    case kb::F32: return run<float>(g);
    case kb::BF16: return run<bf16>(g);
    case kb::F16: return run<f16>(g);
  }
  return kb::set_error(kb::E_DTYPE, "gemm: dtype %d", g.dtype);
}

}  // namespace KB_NS

#else  // entry point

// The arguments every GEMM entry point takes, checked once: the error code (> 0, message set) when they are bad,
// else 0, with `empty` set when they describe an empty product (nothing to do). (It returned the error code where
// its callers took "> 0" for an empty product, so bad arguments returned 0 with nothing computed:
// tests/test_kernel_paths.py::test_bad_arguments_are_errors.)
static int gemm_args(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K, int64_t lda,
                     int64_t ldb, int64_t ldc, int dtype, bool* empty) {
  if (((!a || !b) && K > 0) || (!c && M > 0 && N > 0) || M < 0 || N < 0 || K < 0 ||
      (M > 1 && K > 0 && lda < K) || (K > 1 && ldb < N) || (M > 1 && ldc < N))
    return kb::set_error(kb::E_ARG, "gemm: bad arguments (M=%lld N=%lld K=%lld lda=%lld ldb=%lld ldc=%lld)",
                         (long long)M, (long long)N, (long long)K, (long long)lda, (long long)ldb, (long long)ldc);
  if (dtype < 0 || dtype > 2) return kb::set_error(kb::E_DTYPE, "gemm: dtype %d not supported", dtype);
  *empty = M == 0 || N == 0;
  return 0;
}

// C[M,N] = A[M,K] @ B[K,N], row-major, row strides lda, ldb, ldc in elements; A, B, C of one dtype.
KB_API int kb_cpp_gemm(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K, int64_t lda,
                       int64_t ldb, int64_t ldc, int dtype, int threads) {
  bool empty = false;
  if (const int r = gemm_args(a, b, c, M, N, K, lda, ldb, ldc, dtype, &empty); r || empty) return r;
  kb::GemmArgs g{a, b, c, M, N, K, lda, ldb, ldc, dtype, threads};
  if (dtype == kb::BF16 && kb::isa() >= kb::ISA_AMX) return kb_amx::gemm_bf16(g);   // gemm_amx_bf16.cpp
  if (dtype == kb::BF16 && kb::tile_backend() == kb::TILES_ZMM) return kb_zbf16::gemm_bf16(g);   // gemm_bf16_dp.cpp
  return KB_DISPATCH(gemm, g);
}

// The ladder (issue 11: a version whose figure a header quotes stays runnable). v1 of the bf16 GEMM: this file's
// packed fp32-FMA path for every dtype (bf16 converted while packing), where kb_cpp_gemm would take the AMX or
// AVX512-BF16 kernel. Same arguments as kb_cpp_gemm.
KB_API int kb_cpp_gemm_v1(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K, int64_t lda,
                          int64_t ldb, int64_t ldc, int dtype, int threads) {
  bool empty = false;
  if (const int r = gemm_args(a, b, c, M, N, K, lda, ldb, ldc, dtype, &empty); r || empty) return r;
  kb::GemmArgs g{a, b, c, M, N, K, lda, ldb, ldc, dtype, threads};
  return KB_DISPATCH(gemm, g);
}

// gemm_bf16_dp.cpp with K-slices of 512 (its header: 0.92-0.97x torch against 1.04-1.10x for 4096). bf16 only,
// on a CPU whose tile back end is AVX512-BF16.
KB_API int kb_cpp_gemm_bf16_kc512(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K,
                                  int64_t lda, int64_t ldb, int64_t ldc, int dtype, int threads) {
  bool empty = false;
  if (const int r = gemm_args(a, b, c, M, N, K, lda, ldb, ldc, dtype, &empty); r || empty) return r;
  if (dtype != kb::BF16) return kb::set_error(kb::E_DTYPE, "gemm_bf16_kc512: bf16 only (dtype %d)", dtype);
  if (kb::tile_backend() != kb::TILES_ZMM)
    return kb::set_error(kb::E_ARG, "gemm_bf16_kc512: needs AVX512-BF16 (and no AMX tiles in use)");
  return kb_zbf16::gemm_bf16_kc512(kb::GemmArgs{a, b, c, M, N, K, lda, ldb, ldc, dtype, threads});
}
#endif
