// gemm_bf16_dp.cpp -- C[M,N] = A[M,K] @ B[K,N] for bf16 A, B, C with fp32 accumulation, on AVX512-BF16 dot
// products (vdpbf16ps: 16 lanes x one bf16 pair, 64 FLOPs per instruction, twice the fp32 FMA's 32). v3 of the
// bf16 GEMM, for CPUs with AVX512-BF16 and no AMX (AMD Zen 4; Intel Cooper Lake): v1 (gemm.cpp) converts bf16
// to fp32 while packing and runs fp32 FMAs, so it is capped at half of this instruction's rate; v2
// (gemm_amx_bf16.cpp) is the AMX kernel and runs where kb_cpp_isa() reports AMX.
//
// FLOPs 2MNK. The BLIS scheme of gemm.cpp with k taken in pairs (Goto & van de Geijn 2008):
//   B packed once, up front, by all threads: Bp[K-slice][32-column panel][KC/2 pairs][32 columns][2]: rows k and
//     k+1 interleaved (the VNNI layout), zero-padded past K and N;
//   then blocks of C (MC rows x NC = 2048 columns) are independent tasks; per task and K-slice of KC = 4096
//     (one slice up to K = 4096), the block's rows of A are packed as pairs, Ap[14-row panel][KC/2][14] (uint32 =
//     one bf16 pair; 112 KiB per panel at K = 4096), and each 14 x 32 tile of C runs over the whole slice:
//     the B micro-panel (KC/2 pairs x 32 x 4 B = 256 KiB) and the A panel stream from L2, C never leaves the
//     registers. KC = 512 (B micro-panel in L1, C accumulated in an fp32 copy across 8 slices) ran at 0.92-0.97x
//     torch; KC = 4096 at 1.04-1.10x (one thread, CPU time, same run): the fp32 C traffic cost more than L2
//     operands do. Both stay runnable: the KC = 512 rung is variant `cpp_kc512` (kb_cpp_gemm_bf16_kc512), and
//     v1's fp32-FMA path for bf16 is variant `cpp_v1` (kb_cpp_gemm_v1);
//   micro-kernel: 14 x 32 of C in 28 zmm accumulators; per k-pair 2 B loads, 14 broadcast A pairs, 28 vdpbf16ps
//     (FMA-port bound: 28 instructions against 16 loads).
// C: K <= KC goes straight from the accumulators to bf16 (rounded once, nearest even); longer K accumulates the
// slices in an fp32 copy of C and the last slice rounds into C (no separate rounding pass).
// Threads: one barrier (after packing B), then a dynamic schedule over blocks of C, as gemm.cpp.
//
// Measured (AMD EPYC Zen 4, shared with other engineers, load average 22-25 -- docs/measured-cpu.md):
//   one thread, CPU time per call, torch.matmul (oneDNN, AVX512-BF16) in the same process: 1000x4096x4096 204 vs
//   194 GFLOP/s (1.05x), 2048^3 209 vs 201 (1.04x), 4096x4096x1024 210 vs 190 (1.10x) = 88-91% of one core's
//   vdpbf16ps ceiling (232 GFLOP/s, a throwaway loop of independent chains); torch 82-87%.
//   bench.py --suite gemm --full --dtype bfloat16, 2 threads, side by side (others took 94% of the CPU):
//   2048^3 0.99x, 4096x4096x1024 1.12x, 1000x4096x4096 0.96x. v1 on this CPU (fp32 FMAs): ~99 GFLOP/s, 0.5x.
//   The ladder side by side (bench.py --suite gemm --dtype bfloat16 --threads 1, CPU 0 pinned, load 5.8,
//   2026-11-30): 1024^3 / 512x2048x1024 against torch: cpp_v1 0.48x / 0.48x, cpp_kc512 0.92x / 0.90x, this
//   kernel 1.03x / 0.97x.
#include <omp.h>

#include <algorithm>

#include "gemm.h"
#include "kb_cpp.h"

#if defined(KB_ZBF16_IMPL)
#include <immintrin.h>

namespace kb_zbf16 {
namespace {

constexpr int MR = 14, NR = 32;
constexpr int64_t MC = MR * 24, NC = 2048;   // KC, the K-slice: a template parameter (4096; 512 the earlier rung)

enum Epilogue { STORE_BF16, STORE_F32, ADD_F32, ADD_F32_TO_BF16 };

inline __m256i round_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

// C[0:MR, 0:NR] from Ap[kp][MR] (pairs) @ Bp[kp][NR][2]; kp = pairs of k. Epilogue by mode; C32 the fp32 copy.
template <Epilogue E>
inline void micro(int64_t kp, const uint32_t* __restrict Ap, const uint16_t* __restrict Bp, uint16_t* C, int64_t ldc,
                  float* C32, int64_t ldc32) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) { c0[i] = _mm512_setzero_ps(); c1[i] = _mm512_setzero_ps(); }
  for (int64_t k = 0; k < kp; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(Bp), b1 = (__m512bh)_mm512_load_si512(Bp + 32);
    _mm_prefetch((const char*)(Bp + 8 * 2 * NR), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(Ap[i]));
      c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
    }
    Ap += MR;
    Bp += 2 * NR;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if constexpr (E == ADD_F32 || E == ADD_F32_TO_BF16) {
      c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(C32 + i * ldc32));
      c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(C32 + i * ldc32 + 16));
    }
    if constexpr (E == STORE_F32 || E == ADD_F32) {
      _mm512_storeu_ps(C32 + i * ldc32, c0[i]);
      _mm512_storeu_ps(C32 + i * ldc32 + 16, c1[i]);
    } else {
      _mm512_storeu_si512(C + i * ldc, (__m512i)_mm512_cvtne2ps_pbh(c1[i], c0[i]));
    }
  }
}

// A[0:rows, 0:kc] (row stride lda) -> Ap[kc/2 pairs][MR] uint32, zero past rows and kc
void pack_a(const uint16_t* A, int64_t lda, int64_t rows, int64_t kc, uint32_t* Ap) {
  const int64_t kp = (kc + 1) / 2;
  for (int i = 0; i < MR; ++i) {
    const uint16_t* a = A + i * lda;
    if (i >= rows) {
      for (int64_t k = 0; k < kp; ++k) Ap[k * MR + i] = 0;
      continue;
    }
    for (int64_t k = 0; k < kc / 2; ++k) Ap[k * MR + i] = uint32_t(a[2 * k]) | uint32_t(a[2 * k + 1]) << 16;
    if (kc & 1) Ap[(kp - 1) * MR + i] = a[kc - 1];
  }
}

// B[0:kc, 0:cols] (row stride ldb) -> Bp[kc/2 pairs][32 columns][2], zero past kc and cols
void pack_b(const uint16_t* B, int64_t ldb, int64_t cols, int64_t kc, uint16_t* Bp) {
  alignas(64) static const uint16_t idx_lo_[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx_lo = _mm512_load_si512(idx_lo_);
  const __m512i idx_hi = _mm512_add_epi16(idx_lo, _mm512_set1_epi16(16));
  const __mmask32 m = cols >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << cols) - 1u);
  for (int64_t k = 0; k < kc; k += 2) {
    const __m512i r0 = _mm512_maskz_loadu_epi16(m, B + k * ldb);
    const __m512i r1 = k + 1 < kc ? _mm512_maskz_loadu_epi16(m, B + (k + 1) * ldb) : _mm512_setzero_si512();
    _mm512_store_si512(Bp + k * NR, _mm512_permutex2var_epi16(r0, idx_lo, r1));
    _mm512_store_si512(Bp + k * NR + 32, _mm512_permutex2var_epi16(r0, idx_hi, r1));
  }
}

template <Epilogue E>
void tile(int64_t kp, const uint32_t* Ap, const uint16_t* Bp, uint16_t* C, int64_t ldc, float* C32, int64_t ldc32,
          int64_t rows, int64_t cols) {
  if (rows == MR && cols == NR) return micro<E>(kp, Ap, Bp, C, ldc, C32, ldc32);
  // edge tile: through buffers, only the valid part read and written
  alignas(64) uint16_t eb[MR * NR];
  alignas(64) float ef[MR * NR];
  if constexpr (E == ADD_F32 || E == ADD_F32_TO_BF16)
    for (int64_t r = 0; r < rows; ++r) std::copy(C32 + r * ldc32, C32 + r * ldc32 + cols, ef + r * NR);
  micro<E>(kp, Ap, Bp, eb, NR, ef, NR);
  for (int64_t r = 0; r < rows; ++r) {
    if constexpr (E == STORE_F32 || E == ADD_F32) std::copy(ef + r * NR, ef + r * NR + cols, C32 + r * ldc32);
    else std::copy(eb + r * NR, eb + r * NR + cols, C + r * ldc);
  }
}

}  // namespace

template <int64_t KC>
int gemm_bf16_kc(const kb::GemmArgs& g) {
  const uint16_t* A = static_cast<const uint16_t*>(g.a);
  const uint16_t* B = static_cast<const uint16_t*>(g.b);
  uint16_t* C = static_cast<uint16_t*>(g.c);
  const int64_t M = g.M, N = g.N, K = g.K;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * g.ldc, C + i * g.ldc + N, uint16_t(0));
    return 0;
  }
  const int nthreads = kb::threads_for(g.threads, M * N * K, int64_t(1) << 19);
  const int64_t kslices = (K + KC - 1) / KC, kc_max = std::min(KC, K), kp_max = (kc_max + 1) / 2;
  const int64_t bpanels = (N + NR - 1) / NR;
  const int64_t slice_stride = bpanels * NR * 2 * kp_max;   // bf16 elements of one packed K-slice of B
  kb::Scratch bpack(size_t(kslices * slice_stride) * 2);
  kb::Scratch cbuf(kslices > 1 ? size_t(M) * size_t(N) * 4 : 0);   // fp32 partial sums across K-slices
  if (!bpack.p || (kslices > 1 && !cbuf.p)) return kb::set_error(kb::E_NOMEM, "gemm (avx512-bf16): out of memory");
  uint16_t* Bp = bpack.as<uint16_t>();
  float* C32 = cbuf.as<float>();
  const int64_t nblk = std::max<int64_t>((M + MC - 1) / MC, 4 * nthreads);
  const int64_t mc_blk = std::max<int64_t>(MR, ((M + nblk - 1) / nblk + MR - 1) / MR * MR);
  const int64_t mblocks = (M + mc_blk - 1) / mc_blk, nblocks = (N + NC - 1) / NC;
  int err = 0;
#pragma omp parallel num_threads(nthreads)
  {
    kb::Scratch apack(size_t(kp_max) * size_t(mc_blk) * 4);
    uint32_t* Ap = apack.as<uint32_t>();
    if (!Ap) {
#pragma omp atomic write
      err = kb::E_NOMEM;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < kslices * bpanels; ++t) {
      const int64_t ks = t / bpanels, jp = t % bpanels, pc = ks * KC, kc = std::min(KC, K - pc);
      pack_b(B + pc * g.ldb + jp * NR, g.ldb, std::min<int64_t>(NR, N - jp * NR), kc,
             Bp + ks * slice_stride + jp * NR * 2 * ((kc + 1) / 2));
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < mblocks * nblocks; ++task) {
      if (!Ap) continue;
      const int64_t ic = (task % mblocks) * mc_blk, jc = (task / mblocks) * NC;
      const int64_t mc = std::min(mc_blk, M - ic), nc = std::min(NC, N - jc);
      const int64_t mpanels = (mc + MR - 1) / MR, npanels = (nc + NR - 1) / NR;
      for (int64_t ks = 0; ks < kslices; ++ks) {
        const int64_t pc = ks * KC, kc = std::min(KC, K - pc), kp = (kc + 1) / 2;
        for (int64_t ip = 0; ip < mpanels; ++ip)
          pack_a(A + (ic + ip * MR) * g.lda + pc, g.lda, std::min<int64_t>(MR, mc - ip * MR), kc, Ap + ip * MR * kp);
        const uint16_t* Bs = Bp + ks * slice_stride + (jc / NR) * NR * 2 * kp;
        const bool first = ks == 0, last = ks == kslices - 1;
        for (int64_t jp = 0; jp < npanels; ++jp) {
          const int64_t j = jc + jp * NR, cols = std::min<int64_t>(NR, N - j);
          for (int64_t ip = 0; ip < mpanels; ++ip) {
            const int64_t i = ic + ip * MR, rows = std::min<int64_t>(MR, M - i);
            const uint32_t* a = Ap + ip * MR * kp;
            const uint16_t* b = Bs + jp * NR * 2 * kp;
            uint16_t* c = C + i * g.ldc + j;
            float* c32 = C32 ? C32 + i * N + j : nullptr;
            if (first && last) tile<STORE_BF16>(kp, a, b, c, g.ldc, c32, N, rows, cols);
            else if (first) tile<STORE_F32>(kp, a, b, c, g.ldc, c32, N, rows, cols);
            else if (last) tile<ADD_F32_TO_BF16>(kp, a, b, c, g.ldc, c32, N, rows, cols);
            else tile<ADD_F32>(kp, a, b, c, g.ldc, c32, N, rows, cols);
          }
        }
      }
    }
  }
  return err ? kb::set_error(err, "gemm (avx512-bf16): out of memory") : 0;
}

int gemm_bf16(const kb::GemmArgs& g) { return gemm_bf16_kc<4096>(g); }
// The earlier rung, kept runnable (variant cpp_kc512): B micro-panel in L1, C summed in fp32 across K-slices.
int gemm_bf16_kc512(const kb::GemmArgs& g) { return gemm_bf16_kc<512>(g); }

}  // namespace kb_zbf16
#endif
