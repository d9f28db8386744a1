// gemm_amx_bf16.cpp -- C[M,N] = A[M,K] @ B[K,N] for bf16 A, B, C with fp32 accumulation, on Intel AMX
// (Advanced Matrix Extensions: TMUL tdpbf16ps). v2 of the GEMM for bf16; v1 (gemm.cpp) converts bf16 to
// fp32 while packing and runs the fp32 AVX-512 micro-kernel. Used by kb_cpp_gemm for bf16 when the CPU has
// AMX-BF16 and the kernel grants the tile state (arch_prctl ARCH_REQ_XCOMP_PERM); kb_cpp_set_isa(2) or
// lower turns it off.
//
// FLOPs 2MNK. One tdpbf16ps multiplies a 16x32 bf16 tile of A by a 32x16 bf16 tile of B (stored as 16 rows
// of 16 column pairs: the "VNNI" layout, k-pairs interleaved) into a 16x16 fp32 tile: 16 K FLOPs per
// instruction, ~1024 FLOP/cycle/core peak vs 64 for fp32 AVX-512 FMAs.
// Tiles (8 registers of up to 16 rows x 64 bytes): tmm0-3 = a 32x32 block of C (2x2 tiles), tmm4-5 = two A
// tiles (32 rows x 32 k), tmm6-7 = two B tiles (32 k x 32 columns): per 32-wide k step, 4 tile loads feed
// 4 tdpbf16ps.
// Blocking: A and B are packed once, whole K, into 32-row panels (rows of 32 k-values, 64 bytes: one tile
// row) and 32-column VNNI panels, by all threads (one barrier). Then blocks of C (MC = 128 rows x NC = 256
// columns) are independent tasks shared out dynamically; each 32x32 block of C stays in tiles tmm0-3 for the
// whole K loop, is stored once to a 4 KiB fp32 buffer and rounded into C. Edges of M, N, K are zero-padded by
// packing, and only the valid part of an edge block is written.
// An abandoned attempt before this version, which kept an fp32 copy of C, is described in docs/cpp-kernels.md
// ("history"), with the commit that holds it. It is not a rung of the ladder: nothing built on it.
//
// Measured (bench.py --suite gemm --full, bf16, shared 2-core Xeon at a quiet moment; medians):
//   2 threads: 2048^3 8.57 ms = 2.01 TFLOP/s vs torch.matmul (oneDNN, AMX) 6.68 ms = 2.57: 0.78x;
//              4096x4096x1024 0.62x; 1000x4096x4096 0.63x
//   1 thread:  2048^3 1.00 vs 1.29 TFLOP/s (0.78x); 4096x4096x1024 0.58x; 1000x4096x4096 0.63x
//   v1 (fp32 compute, gemm.cpp): 0.13x / 0.20x / 0.05x of torch at the same shapes.
//   Not yet done: K-blocking for large K (each 32 x K panel of B is re-read from L3 per MC block).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "gemm.h"
#include "bf16_round.h"
#include "kb_cpp.h"

#if defined(KB_AMX_IMPL)
namespace kb_amx {

constexpr int64_t TK = 32;   // k per tile step (32 bf16 = 64 bytes per tile row)
// A task is an MC x NC block of C: MC/32 A micro-panels (32 x K x 2 B: 128 KiB each at K = 2048) stay in L2
// while NC/32 B micro-panels stream past them.
constexpr int64_t MC = 128, NC = 256;

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

static void configure_tiles() {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);
}

// Pack rows [0, rows) x k [0, kc) of A (row stride lda, bf16) into a 32-row micro-panel:
// Ap[ks][32 rows][32 k], zero beyond rows / kc.
static void pack_a(const uint16_t* A, int64_t lda, int64_t rows, int64_t kc, uint16_t* Ap) {
  const int64_t ksteps = (kc + TK - 1) / TK;
  for (int64_t ks = 0; ks < ksteps; ++ks) {
    const int64_t k0 = ks * TK, kn = std::min(TK, kc - k0);
    const __mmask32 m = kn >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << kn) - 1u);
    for (int64_t r = 0; r < 32; ++r) {
      __m512i v = r < rows ? _mm512_maskz_loadu_epi16(m, A + r * lda + k0) : _mm512_setzero_si512();
      _mm512_store_si512(Ap + (ks * 32 + r) * TK, v);
    }
  }
}

// Pack k [0, kc) x columns [0, cols) of B (row stride ldb) into a 32-column VNNI micro-panel:
// Bp[ks][half][16 k-pairs][16 columns][2], zero beyond kc / cols.
static void pack_b(const uint16_t* B, int64_t ldb, int64_t cols, int64_t kc, uint16_t* Bp) {
  const __mmask32 m = cols >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << cols) - 1u);
  // interleave row k (lanes 0-31) and row k+1 (lanes 32-63): half 0 takes columns 0-15, half 1 16-31
  alignas(64) static const uint16_t idx_lo_[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx_lo = _mm512_load_si512(idx_lo_);
  const __m512i idx_hi = _mm512_add_epi16(idx_lo, _mm512_set1_epi16(16));
  const int64_t ksteps = (kc + TK - 1) / TK;
  for (int64_t ks = 0; ks < ksteps; ++ks) {
    uint16_t* dst = Bp + ks * 2 * 16 * 32;
    for (int64_t p = 0; p < 16; ++p) {
      const int64_t k = ks * TK + 2 * p;
      __m512i r0 = k < kc ? _mm512_maskz_loadu_epi16(m, B + k * ldb) : _mm512_setzero_si512();
      __m512i r1 = k + 1 < kc ? _mm512_maskz_loadu_epi16(m, B + (k + 1) * ldb) : _mm512_setzero_si512();
      _mm512_store_si512(dst + p * 32, _mm512_permutex2var_epi16(r0, idx_lo, r1));
      _mm512_store_si512(dst + 16 * 32 + p * 32, _mm512_permutex2var_epi16(r0, idx_hi, r1));
    }
  }
}

// C[32x32] (fp32, row stride ldc floats) (+)= Ap (32 rows x kc) @ Bp (kc x 32 columns)
static inline void micro(int64_t ksteps, const uint16_t* Ap, const uint16_t* Bp, float* C, int64_t ldc, bool acc) {
  const int64_t cs = ldc * 4;
  if (acc) {
    _tile_loadd(0, C, cs); _tile_loadd(1, C + 16, cs);
    _tile_loadd(2, C + 16 * ldc, cs); _tile_loadd(3, C + 16 * ldc + 16, cs);
  } else {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  }
  for (int64_t ks = 0; ks < ksteps; ++ks) {
    const uint16_t* a = Ap + ks * 32 * TK;
    const uint16_t* b = Bp + ks * 2 * 16 * 32;
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + 16 * TK, 64);
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b + 16 * 32, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, cs); _tile_stored(1, C + 16, cs);
  _tile_stored(2, C + 16 * ldc, cs); _tile_stored(3, C + 16 * ldc + 16, cs);
}

int gemm_bf16(const kb::GemmArgs& g) {
  const uint16_t* A = static_cast<const uint16_t*>(g.a);
  const uint16_t* B = static_cast<const uint16_t*>(g.b);
  uint16_t* Cout = static_cast<uint16_t*>(g.c);
  const int64_t M = g.M, N = g.N, K = g.K;
  if (K == 0) {   // C = 0
    for (int64_t i = 0; i < M; ++i) std::fill(Cout + i * g.ldc, Cout + i * g.ldc + N, uint16_t(0));
    return 0;
  }
  const int nthreads = kb::threads_for(g.threads, M * N * K, int64_t(1) << 22);
  const int64_t Kp = (K + TK - 1) / TK * TK, ksteps = Kp / TK;
  const int64_t apanels = (M + 31) / 32, bpanels = (N + 31) / 32;
  const int64_t mc = MC;   // (capping mc x K at 512 KiB made no measurable difference at K = 4096)
  const int64_t mblocks = (M + mc - 1) / mc, nblocks = (N + NC - 1) / NC;
  // A and B packed once, whole K: Ap[32-row panel][k-steps][32 x 32], Bp[32-column panel][k-steps][VNNI pair]
  kb::Scratch apack(size_t(apanels) * 32 * size_t(Kp) * 2), bpack(size_t(bpanels) * 32 * size_t(Kp) * 2);
  if (!apack.p || !bpack.p) return kb::set_error(kb::E_NOMEM, "gemm (amx): out of memory");
  uint16_t* Ap = apack.as<uint16_t>();
  uint16_t* Bp = bpack.as<uint16_t>();
#pragma omp parallel num_threads(nthreads)
  {
    configure_tiles();   // tile configuration is per thread
    alignas(64) float ct[32 * 32];
#pragma omp for schedule(static) nowait
    for (int64_t ip = 0; ip < apanels; ++ip)
      pack_a(A + ip * 32 * g.lda, g.lda, std::min<int64_t>(32, M - ip * 32), K, Ap + ip * 32 * Kp);
#pragma omp for schedule(static)
    for (int64_t jp = 0; jp < bpanels; ++jp)
      pack_b(B + jp * 32, g.ldb, std::min<int64_t>(32, N - jp * 32), K, Bp + jp * 32 * Kp);
    // the only barrier (implicit above); then MC x NC blocks of C are independent tasks. Each 32x32 block of
    // C stays in tile registers for the whole K and is rounded to bf16 once.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < mblocks * nblocks; ++task) {
      const int64_t ic = (task % mblocks) * mc, jc = (task / mblocks) * NC;
      const int64_t ip_end = std::min(apanels, (ic + mc) / 32), jp_end = std::min(bpanels, (jc + NC) / 32);
      for (int64_t jp = jc / 32; jp < jp_end; ++jp)
        for (int64_t ip = ic / 32; ip < ip_end; ++ip) {
          micro(ksteps, Ap + ip * 32 * Kp, Bp + jp * 32 * Kp, ct, 32, false);
          const int64_t rows = std::min<int64_t>(32, M - ip * 32), cols = std::min<int64_t>(32, N - jp * 32);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t h = 0; h < cols; h += 16) {
              const int64_t n = std::min<int64_t>(16, cols - h);
              const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
              _mm256_mask_storeu_epi16(Cout + (ip * 32 + r) * g.ldc + jp * 32 + h, m,
                                       kb::bf16_round16(_mm512_load_ps(ct + r * 32 + h)));
            }
        }
    }
    _tile_release();
  }
  return 0;
}

}  // namespace kb_amx
#endif
