// quant_int8_gemm_v3.cpp -- W8A8 GEMM on AVX512-VNNI, v3: out[M,N] = (A[M,K] int8 @ W[N,K]^T int8) * sa[m] * sw[n],
// int32 accumulation, fp32 scales, fp32 or bf16 output; the weights in quant_int8_gemm.h's packed layout (packed
// once by kb_cpp_pack_w8_vnni, the same as v2's). The rung for CPUs without AMX (AMD Zen 4).
//
// What v2 (quant_int8_gemm.cpp) lost, found in its compiled inner loop: its accumulators lived in an array that
// the epilogue indexed with run-time bounds (j < nb), so GCC kept a copy of every accumulator on the stack and
// moved it through a spare register around each vpdpbusd: per 4-deep k step 24 vpdpbusd came with 24 zmm stores
// and ~48 register moves, the ALU busy 3x as long as the multiply-adds need. v3:
// - the micro-kernel's accumulators are indexed only by compile-time constants (the loops are fully unrolled, the
//   epilogue of a partial panel computes the padded blocks and stores none of them), so all stay in registers:
//   the inner loop is MR broadcasts, NB weight loads and MR*NB vpdpbusd, nothing else;
// - A is packed per call into MR-row panels [K/4 quads][MR rows][4 bytes], +128 (xor 0x80) for vpdpbusd's
//   unsigned operand, zero-padded to K % 4 (meeting the weights' zero padding): the MR broadcasts of one k step
//   read MR*4 adjacent bytes, one stream instead of MR (v2 read MR rows K bytes apart);
// - rows are blocked for L2: a block of MC rows of packed A (<= 192 KiB) is reused by every weight panel, and a
//   weight panel (NB*16 channels x K: 64 KiB at K = 1024) by every MR-row tile of the block (rows fastest);
// - the epilogue converts to bf16 16 lanes at a time (bf16_round.h) instead of element by element.
// vpdpbusd: 16 lanes x 4 u8*s8 products per instruction = 64 MACs (vdpbf16ps, what oneDNN's bf16 matmul uses on
// this CPU, does 32): the int8 peak is twice the bf16 peak per instruction issued.
// Register tile MR x NB*16 = 6 x 64: 24 accumulators + 4 weight registers + 1 broadcast, 29 of the 32 zmm; per k step
// 4 zmm loads (256 B) + 6 broadcasts (24 B) feed 24 vpdpbusd (1,536 MACs).
// Work: 2MNK integer ops; bytes: MK + NK (int8) + 4(M + N) scales + M N out.
// Threads: OpenMP over (row block, weight panel, row tile) tasks, rows fastest, dynamic schedule.
// Measured (README, quant_gemm; 2026-12-01, one core shared with other work, bf16 out): 2.42x bf16 torch.matmul at
// 128x1024x1024 and 1.97x at 2048x1024x1024 by wall clock (v2 1.00x, 0.97x); by thread CPU time 2.25-2.39x at the
// M = 128 quick shapes and 2.06x at M = 2048, 375-410 GOPS per core (~80-87% of 2x the measured vdpbf16ps peak),
// level with oneDNN's s8s8 GEMM (torch._int_mm); 6 x 4 blocks measured 3-7% ahead of 8 x 3. At M = 1, 0.8x v2.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "quant_int8_gemm.h"

KB_DECLARE(int gemm_w8a8_vnni_v3(const kb::W8A8Args&))

#if KB_IMPL
#include <immintrin.h>

#include "bf16_round.h"

namespace KB_NS {
#if defined(KB_ISA_AVX512)
#pragma GCC push_options
#pragma GCC target("avx512vnni")
namespace {
constexpr int MR = 6;          // rows of A per micro-tile
constexpr int NB = 4;          // 16-channel blocks per micro-tile: 64 outputs
constexpr int64_t MC_BYTES = 192 << 10;   // packed A per row block, kept in L2 (1 MiB) with a weight panel

// R (<= MR) rows x NB blocks of out, from the tile's packed A (stride MR*4 bytes per quad) and the panel's first
// weight block `b` (blocks kq*64 bytes apart); blocks j >= nb of a partial panel are computed on block 0, not stored.
template <int R>
void micro(const kb::W8A8Args& g, const uint8_t* ap, const uint8_t* b, const int32_t* colsum, int64_t m0,
           int64_t n0, int nb) {
  const int64_t kq = kb::w8_kq(g.K);
  const uint8_t* bj[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) bj[j] = b + (j < nb ? j : 0) * kq * 64;
  __m512i acc[R][NB];
#pragma GCC unroll 24
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t q = 0; q < kq; ++q, ap += MR * 4) {
    __m512i bw[NB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) bw[j] = _mm512_loadu_si512(bj[j] + q * 64);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      int32_t v;
      std::memcpy(&v, ap + i * 4, 4);
      const __m512i ai = _mm512_set1_epi32(v);          // vpbroadcastd from memory
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], ai, bw[j]);
    }
  }
  // epilogue: (acc - colsum) * sw[n] * sa[m], 16 channels at a time
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    if (j >= nb) break;
    const int64_t n = n0 + 16 * j;
    const int nn = int(std::min<int64_t>(16, g.N - n));
    const __mmask16 mk = nn >= 16 ? __mmask16(0xffff) : __mmask16((1u << nn) - 1u);
    const __m512i cs = _mm512_loadu_si512(colsum + n);                 // padded to 16: always readable
    const __m512 sw = _mm512_maskz_loadu_ps(mk, g.sw + n);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][j], cs)), sw),
                                     _mm512_set1_ps(g.sa[m0 + i]));
      if (g.out_dtype == kb::F32)
        _mm512_mask_storeu_ps(static_cast<float*>(g.out) + (m0 + i) * g.ldo + n, mk, v);
      else
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(g.out) + (m0 + i) * g.ldo + n, mk, kb::bf16_round16(v));
    }
  }
}

using MicroFn = void (*)(const kb::W8A8Args&, const uint8_t*, const uint8_t*, const int32_t*, int64_t, int64_t, int);
template <size_t... R>
constexpr std::array<MicroFn, MR + 1> micro_table(std::index_sequence<R...>) { return {nullptr, micro<int(R) + 1>...}; }
constexpr std::array<MicroFn, MR + 1> MICRO = micro_table(std::make_index_sequence<MR>());

// rows m0 .. m0+MR-1 of A -> [kq][MR][4] bytes, a ^ 0x80 (= a + 128 as unsigned), zeros past K and past M
void pack_a(const kb::W8A8Args& g, int64_t m0, uint8_t* ap) {
  const int64_t kq = kb::w8_kq(g.K), kfull = g.K / 4;
  const int rows = int(std::min<int64_t>(MR, g.M - m0));
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) {
      for (int64_t q = 0; q < kq; ++q) std::memset(ap + (q * MR + i) * 4, 0, 4);
      continue;
    }
    const uint8_t* src = reinterpret_cast<const uint8_t*>(g.a + (m0 + i) * g.lda);
    for (int64_t q = 0; q < kfull; ++q) {              // 4 bytes at a time
      uint32_t v;
      std::memcpy(&v, src + 4 * q, 4);
      v ^= 0x80808080u;
      std::memcpy(ap + (q * MR + i) * 4, &v, 4);
    }
    if (kfull < kq) {                                   // the K % 4 tail
      uint8_t t[4] = {0, 0, 0, 0};
      for (int64_t k = 4 * kfull; k < g.K; ++k) t[k - 4 * kfull] = src[k] ^ 0x80;
      std::memcpy(ap + (kfull * MR + i) * 4, t, 4);
    }
  }
}
}  // namespace

int gemm_w8a8_vnni_v3(const kb::W8A8Args& g) {
  const int64_t kq = kb::w8_kq(g.K);
  const int64_t tiles = (g.M + MR - 1) / MR, tile_bytes = kq * 4 * MR;
  kb::Scratch abuf(size_t(tiles * tile_bytes));
  if (!abuf.p) return kb::set_error(kb::E_NOMEM, "gemm_w8a8_vnni: out of memory");
  uint8_t* ap = abuf.as<uint8_t>();
  const int32_t* colsum = kb::w8_colsum(g.w, g.N, g.K);
  const int64_t nblocks = kb::w8_np(g.N) / 16, panels = (nblocks + NB - 1) / NB;
  const int64_t mc = std::max<int64_t>(1, MC_BYTES / tile_bytes);          // row tiles per row block
  const int64_t rblocks = (tiles + mc - 1) / mc;
  const int nthreads = kb::threads_for(g.threads, g.M * g.N * g.K, int64_t(1) << 21);
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) pack_a(g, t * MR, ap + t * tile_bytes);
    // tasks: row block (outer), weight panel, row tile of the block (fastest): a panel is reused from L2 by the
    // tiles of a block, a block's packed A by every panel
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < rblocks * panels * mc; ++task) {
      const int64_t rb = task / (panels * mc), p = task / mc % panels, t = rb * mc + task % mc;
      if (t >= tiles) continue;
      const int64_t m0 = t * MR;
      const int rows = int(std::min<int64_t>(MR, g.M - m0));
      const int nb = int(std::min<int64_t>(NB, nblocks - p * NB));
      MICRO[rows](g, ap + t * tile_bytes, g.w + p * NB * kq * 64, colsum, m0, p * NB * 16, nb);
    }
  }
  return 0;
}
#pragma GCC pop_options
#else
int gemm_w8a8_vnni_v3(const kb::W8A8Args&) {
  return kb::set_error(kb::E_ISA, "gemm_w8a8_vnni: needs AVX-512 with VNNI");
}
#endif
}  // namespace KB_NS

#else  // entry points

// out[M, N] (fp32 or bf16: out_dtype) = (A[M, K] int8 @ W^T) * sa[m] * sw[n], W packed by kb_cpp_pack_w8_vnni.
KB_API int kb_cpp_gemm_w8a8_vnni(const void* a, const void* sa, const void* packed, const void* sw, void* out,
                                 int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldo, int out_dtype,
                                 int threads) {
  return kb::w8a8_entry("gemm_w8a8_vnni", kb_avx512::gemm_w8a8_vnni_v3, a, sa, packed, sw, out, M, N, K, lda, ldo,
                        out_dtype, threads);
}
#endif
