// quant_int4_dp.cpp -- v3 of the W4A16 GEMV/GEMM for decode (M = 1..16): out[M,N] = x[M,K] @ W^T, W int4 with the
// grid of quant/int4_weight_only.py (groups of G consecutive k, fp32 scale s and uint8 zero point z per group and
// channel: W[n,k] = s (q - z)), repacked ONCE per weight (kb_cpp_pack_w4_dp, outside the timing, as aten pre-packs
// for _weight_int4pack_mm_for_cpu) into channel blocks, and multiplied on AVX512-BF16 (vdpbf16ps). v2
// (quant_int4_gemv.cpp, variant `cpp_w4_v2`) takes quant/'s layout as it is and stays runnable for its figures.
//
// v2's limits (README, quant_gemm): ~5.4 cycles per 32 weights in vpmovzxbd + two cross-lane vpermps table lookups
// + 2 FMAs per row, and four channels' rows plus separate scale / zero arrays streamed per step (4.5-5.5 GB/s from
// memory against aten's 6.4). v3:
//   Layout (kb_cpp_pack_w4_dp): channel blocks of 16 (N padded with zero weights and scales), each block one
//   contiguous stream over K: per group G/8 slabs of 64 bytes, then the group's 16 scales x 16 (fp32, 64 B: 16 s is
//   exact) and 16 zero points (u8, 16 B). Slab j holds k = 8j..8j+7 of the group for the 16 channels, one 32-bit
//   lane per channel; k = 8j + 2p (p = 0..3) in bits 4p..4p+3, k + 1 in bits 16+4p..19+4p. Bytes per block and
//   group: 8G + 80, the same 0.5 B per weight + 5 B per group as quant/'s layout: one stream, no permutes.
//   Dequantization (per 64-byte slab: 4 shifts + 4 vpternlogd make 4 registers of 16 channels x a k pair):
//   pair p = ((v >> (4p - 3)) & 0x00780078) | 0x3F803F80 puts each nibble q into bf16 mantissa bits 3..6 under the
//   exponent of 1.0: the bf16 value 1 + q/16, exactly. No zero point, no scale in the inner loop:
//     sum_k x_k s (q_k - z) = 16 s (D - c X),  D = sum_k x_k (1 + q_k/16) (vdpbf16ps, fp32),  c = 1 + z/16,
//     X = sum_k x_k over the group (once per call and row), 16 s stored by the packing, c from the stored z.
//   so per 16 channels x 2 k and row of x: one vdpbf16ps with x's k pair broadcast from memory ({1to16}), and per
//   group and row two FMAs. The lanes are channels: no horizontal sums; the accumulators are the output row.
//   Why 1 + q/16 and not 128 + q (0x4300 | q, no shift for p = 0): D - c X cancels the "1" part; with 128 + q the
//   cancelled part is ~30x the result (q - z ~ 4), with 1 + q/16 ~2x, so fp32 accumulation errors stay ~1e-6 of
//   the result instead of ~3e-5.
//   x: bf16 x is used as it is (copied once per call into pairs with the group sums X). fp32 x is split once per call
//   into bf16 hi = rn(x) and lo = rn(x - hi) and both are multiplied (2 vdpbf16ps per pair): x is represented to
//   |x - hi - lo| <= 2^-18 |x| (not fp32's 2^-24), so the product is off by up to 2^-18 sum_k |x_k w_k| plus the fp32
//   sums: worst error 0.06-0.18 of the suite's float32 tolerance (2e-5 * 2 sqrt(K) + 1e-4 relative) over its test
//   and quick M = 1 shapes, 3 seeds each (1.6e-4 at 1024 x 1024; v2, fp32 FMAs: 0.002-0.013); tests/test_quant_gemm.py
//   holds it to 2^-17 sum |x w| per output. bf16 x is exact: the products are exact in fp32 (8-bit x 8-bit
//   mantissas), and the bf16 rows' worst error equals v2's (0.06-0.14 of the bf16 tolerance: the output's rounding).
//   Tiling: rows in tiles of up to 8 over each 16-channel block (M = 9..16: two tiles, the block's stream re-read
//   from L1/L2); per row P = 4 (1-2 rows), 2 (3-4) or 1 (5-8) partial sums D so that >= 4 vdpbf16ps chains are in
//   flight (latency ~6 cycles). Blocks over the OpenMP threads; at prefill sizes rows in chunks of 64 outside the
//   blocks (x's chunk stays in L2). Software prefetch 8 slabs (512 B) ahead in the stream (into L1); the next block
//   follows the current one in memory, so the prefetch runs across blocks. It measured within the noise of none
//   (and of 2 KiB ahead): 0.097-0.107 / 0.143-0.179 / 0.175-0.194 ms cold at the three shapes below, the hardware
//   prefetcher follows one sequential stream by itself.
// Work: 2MNK FLOPs; bytes: N K / 2 + 5 N K / G (weights at their width, as v2) + x + out.
// Measured (AMD EPYC Zen 4, one thread, `bench.py --suite quant_gemm --dtype bfloat16 --threads 1 --filter
// "w4-g64-1x*" --variant torch_matmul,torch_int4pack,cpp_w4,cpp_w4_v2` [--cold], CPU 1 of 2 shared with other
// engineers, 2026-12-01 04:15 UTC, load average 2.3-2.8), median ms, N x K at M = 1, group 64:
//            torch bf16   aten int4   v3 (ours)   v2      v3 vs bf16 / aten / v2
//   warm  1024x1024  0.132   0.0596   0.0223   0.0553     5.9x / 2.67x / 2.5x   (27 GB/s of int4 bytes)
//         2752x1024  0.330   0.155    0.0599   0.180      5.5x / 2.59x / 3.0x
//         1024x2752  1.438   0.158    0.0575   0.157     25.0x / 2.75x / 2.7x
//   cold  1024x1024  0.561   0.190    0.0963   0.224      5.8x / 1.98x / 2.3x   (6.3 GB/s; aten 3.2)
//         2752x1024  1.542   0.311    0.171    0.498      9.0x / 1.82x / 2.9x   (9.6 GB/s; aten 5.3)
//         1024x2752  1.210   0.279    0.156    0.336      7.8x / 1.79x / 2.2x   (10.5 GB/s; aten 5.9)
// A re-run after the row chunks (04:41, load 5.2-6.1): v3 against aten 2.65-2.74x warm, 1.87-2.13x cold; against bf16
// cold 5.9x, 9.6x, 9.4x. At M = 16 (04:37, load 4.4-5.1): 1.9x, 2.8x, 11.4x the bf16 matmul (0.2 TFLOP/s, ~88% of the
// stored cpp_fma bf16 ceiling); M = 128: 1.02-1.18x; M = 2048 x 1024 x 1024: 0.95-0.99x (both under contention).
#include <omp.h>

#include <algorithm>

#include "kb_cpp.h"

namespace kb {
struct W4DpArgs {
  const void* x; const uint8_t* blob; void* out;
  int64_t M, N, K, G, ldx, ldo;
  int dtype, threads;
};
constexpr int64_t W4DP_NB = 16;                                   // channels per block
inline int64_t w4dp_group_bytes(int64_t G) { return 8 * G + 80; }  // 16 x G/2 nibble bytes + 64 B 16s + 16 B z
inline int64_t w4dp_block_bytes(int64_t K, int64_t G) { return K / G * w4dp_group_bytes(G); }
}  // namespace kb

KB_DECLARE(int gemm_w4a16_dp(const kb::W4DpArgs&))

#if KB_IMPL
#include <immintrin.h>

namespace KB_NS {
#if defined(KB_ISA_AVX512)
#pragma GCC push_options
#pragma GCC target("avx512bf16")
namespace {
constexpr int MRMAX = 8;
constexpr int64_t MCHUNK = 64; // rows per pass of the blocks (prefill sizes)
constexpr int PF = 512;        // prefetch distance in bytes (8 slabs)

inline __m512 dp(__m512 acc, __m512i w, uint32_t xpair) {
  return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_set1_epi32(int(xpair)));
}

// MR rows (from m0) x the 16 channels of block b. xh/xl: x as bf16 pairs [M][K/2] (xl: fp32 x's low parts, SPLIT);
// xs: the group sums X [M][K/G].
template <int MR, int P, bool SPLIT>
void tile(const kb::W4DpArgs& g, const uint32_t* xh, const uint32_t* xl, const float* xs, int64_t m0, int64_t b) {
  const int64_t half = g.K / 2, ng = g.K / g.G, slabs = g.G / 8;
  const uint8_t* w = g.blob + b * kb::w4dp_block_bytes(g.K, g.G);
  const __m512i mask = _mm512_set1_epi32(0x00780078), one = _mm512_set1_epi32(0x3F803F80);
  const __m512 sixteenth = _mm512_set1_ps(1.0f / 16), ones = _mm512_set1_ps(1.0f);
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t gi = 0; gi < ng; ++gi) {
    __m512 d[MR][P];
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < P; ++p) d[i][p] = _mm512_setzero_ps();
    const uint32_t* xph = xh + m0 * half + gi * (g.G / 2);
    const uint32_t* xpl = SPLIT ? xl + m0 * half + gi * (g.G / 2) : nullptr;
    for (int64_t j = 0; j < slabs; ++j, w += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(w + PF), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(w);
      __m512i wp[4];                                     // (v >> (4p - 3)) & mask | one  (0xEA: (a & b) | c)
      wp[0] = _mm512_ternarylogic_epi32(_mm512_slli_epi32(v, 3), mask, one, 0xEA);
      wp[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi32(v, 1), mask, one, 0xEA);
      wp[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi32(v, 5), mask, one, 0xEA);
      wp[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi32(v, 9), mask, one, 0xEA);
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p)
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
          d[i][p % P] = dp(d[i][p % P], wp[p], xph[i * half + 4 * j + p]);
          if (SPLIT) d[i][p % P] = dp(d[i][p % P], wp[p], xpl[i * half + 4 * j + p]);
        }
    }
    // the group's epilogue: acc += 16 s (D - c X), c = 1 + z/16
    const __m512 s16 = _mm512_loadu_ps(w);
    const __m512i z = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 64)));
    const __m512 c = _mm512_fmadd_ps(_mm512_cvtepi32_ps(z), sixteenth, ones);
    w += 80;
    for (int i = 0; i < MR; ++i) {
      __m512 dsum = d[i][0];
      for (int p = 1; p < P; ++p) dsum = _mm512_add_ps(dsum, d[i][p]);
      const __m512 t = _mm512_fnmadd_ps(c, _mm512_set1_ps(xs[(m0 + i) * ng + gi]), dsum);
      acc[i] = _mm512_fmadd_ps(s16, t, acc[i]);
    }
  }
  const int64_t n0 = b * kb::W4DP_NB;
  const __mmask16 keep = __mmask16((1u << std::min<int64_t>(16, g.N - n0)) - 1);
  for (int i = 0; i < MR; ++i) {
    if (g.dtype == kb::F32) {
      _mm512_mask_storeu_ps(static_cast<float*>(g.out) + (m0 + i) * g.ldo + n0, keep, acc[i]);
    } else {
      const __m256i o = (__m256i)_mm512_cvtneps_pbh(acc[i]);       // round to nearest even
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(g.out) + (m0 + i) * g.ldo + n0, keep, o);
    }
  }
}

using TileFn = void (*)(const kb::W4DpArgs&, const uint32_t*, const uint32_t*, const float*, int64_t, int64_t);
template <bool SPLIT>
constexpr TileFn TILES[MRMAX + 1] = {nullptr,
                                     tile<1, 4, SPLIT>, tile<2, 4, SPLIT>, tile<3, 2, SPLIT>, tile<4, 2, SPLIT>,
                                     tile<5, 1, SPLIT>, tile<6, 1, SPLIT>, tile<7, 1, SPLIT>, tile<8, 1, SPLIT>};

// x's row m into bf16 pairs (hi, and lo for fp32 x) and its group sums X = sum (hi + lo) in fp32
void prepare_row(const kb::W4DpArgs& g, int64_t m, uint16_t* hi, uint16_t* lo, float* xs) {
  const int64_t ng = g.K / g.G;
  for (int64_t gi = 0; gi < ng; ++gi) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = gi * g.G; k < (gi + 1) * g.G; k += 16) {     // G is a multiple of 32
      __m512 v;
      if (g.dtype == kb::BF16) {
        const __m256i raw = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(g.x) + m * g.ldx + k));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + k), raw);
        v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
      } else {
        const __m512 x = _mm512_loadu_ps(static_cast<const float*>(g.x) + m * g.ldx + k);
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
        const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        const __m256i l = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, hf));
        const __m512 lf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(l), 16));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + k), h);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + k), l);
        v = _mm512_add_ps(hf, lf);
      }
      sum = _mm512_add_ps(sum, v);
    }
    xs[gi] = _mm512_reduce_add_ps(sum);
  }
}
}  // namespace

int gemm_w4a16_dp(const kb::W4DpArgs& g) {
  const bool split = g.dtype == kb::F32;
  const int64_t ng = g.K / g.G;
  kb::Scratch scratch(size_t(g.M * g.K * (split ? 4 : 2) + g.M * ng * 4 + 64));
  if (!scratch.p) return kb::set_error(kb::E_NOMEM, "gemm_w4a16_dp: out of memory");
  uint16_t* hi = scratch.as<uint16_t>();
  uint16_t* lo = hi + g.M * g.K;                                  // fp32 x only
  float* xs = reinterpret_cast<float*>(hi + g.M * g.K * (split ? 2 : 1));
  for (int64_t m = 0; m < g.M; ++m) prepare_row(g, m, hi + m * g.K, lo + m * g.K, xs + m * ng);
  const auto* xh = reinterpret_cast<const uint32_t*>(hi);
  const auto* xl = reinterpret_cast<const uint32_t*>(lo);
  // rows in chunks of MCHUNK (x's chunk, 128 KiB of bf16 at K = 1024, stays in L2 while every block passes over it),
  // blocks of 16 channels inside a chunk, row tiles of 8 inside a block (the block's stream re-read from L1)
  const int64_t nblocks = (g.N + kb::W4DP_NB - 1) / kb::W4DP_NB, mchunks = (g.M + MCHUNK - 1) / MCHUNK;
  const int nthreads = kb::threads_for(g.threads, g.M * g.N * g.K, int64_t(1) << 20);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t cb = 0; cb < mchunks * nblocks; ++cb) {
    const int64_t c = cb / nblocks, b = cb % nblocks;
    for (int64_t m0 = c * MCHUNK; m0 < std::min(g.M, (c + 1) * MCHUNK); m0 += MRMAX) {
      const int mr = int(std::min<int64_t>(MRMAX, g.M - m0));
      (split ? TILES<true> : TILES<false>)[mr](g, xh, xl, xs, m0, b);
    }
  }
  return 0;
}
#pragma GCC pop_options
#else
int gemm_w4a16_dp(const kb::W4DpArgs&) { return kb::set_error(kb::E_ISA, "gemm_w4a16_dp: needs AVX512-BF16"); }
#endif
}  // namespace KB_NS

#else  // entry points

// Bytes of the packed layout for N x K weights in groups of G (-1 for shapes it cannot hold).
KB_API int64_t kb_cpp_w4_dp_packed_bytes(int64_t N, int64_t K, int64_t G) {
  if (N <= 0 || K <= 0 || G <= 0 || G % 32 != 0 || K % G != 0) return -1;
  return (N + kb::W4DP_NB - 1) / kb::W4DP_NB * kb::w4dp_block_bytes(K, G);
}

// quant/'s layout (packed [N, K/2], k even in the low nibble; scale fp32 [N, K/G]; zero u8 [N, K/G]) -> the blocks.
KB_API int kb_cpp_pack_w4_dp(const void* packed, const void* scale, const void* zero, void* out, int64_t N,
                             int64_t K, int64_t G) {
  if (!packed || !scale || !zero || !out || kb_cpp_w4_dp_packed_bytes(N, K, G) < 0)
    return kb::set_error(kb::E_ARG, "pack_w4_dp: bad arguments (N=%lld K=%lld group=%lld: a multiple of 32 "
                         "dividing K)", (long long)N, (long long)K, (long long)G);
  const auto* pk = static_cast<const uint8_t*>(packed);
  const auto* sc = static_cast<const float*>(scale);
  const auto* zp = static_cast<const uint8_t*>(zero);
  auto* o = static_cast<uint8_t*>(out);
  const int64_t ng = K / G, half = K / 2, nblocks = (N + kb::W4DP_NB - 1) / kb::W4DP_NB;
  auto q = [&](int64_t n, int64_t k) -> uint32_t { return (pk[n * half + k / 2] >> (4 * (k & 1))) & 0xF; };
  for (int64_t b = 0; b < nblocks; ++b)
    for (int64_t gi = 0; gi < ng; ++gi) {
      uint8_t* dst = o + b * kb::w4dp_block_bytes(K, G) + gi * kb::w4dp_group_bytes(G);
      for (int64_t j = 0; j < G / 8; ++j)
        for (int64_t i = 0; i < kb::W4DP_NB; ++i) {
          const int64_t n = b * kb::W4DP_NB + i, k = gi * G + 8 * j;
          uint32_t lane = 0;
          if (n < N)
            for (int p = 0; p < 4; ++p) lane |= q(n, k + 2 * p) << (4 * p) | q(n, k + 2 * p + 1) << (16 + 4 * p);
          std::memcpy(dst + 64 * j + 4 * i, &lane, 4);
        }
      float* s16 = reinterpret_cast<float*>(dst + 8 * G);
      uint8_t* z = dst + 8 * G + 64;
      for (int64_t i = 0; i < kb::W4DP_NB; ++i) {
        const int64_t n = b * kb::W4DP_NB + i;
        const float s = n < N ? 16.0f * sc[n * ng + gi] : 0.0f;     // x16: exact (a power of two)
        std::memcpy(s16 + i, &s, 4);
        z[i] = n < N ? zp[n * ng + gi] : 0;
      }
    }
  return 0;
}

// out[M, N] = x[M, K] @ dequant(W)^T; x, out in `dtype` (float32 or bfloat16); W packed by kb_cpp_pack_w4_dp.
KB_API int kb_cpp_gemm_w4a16_dp(const void* x, const void* blob, void* out, int64_t M, int64_t N, int64_t K,
                                int64_t group, int64_t ldx, int64_t ldo, int dtype, int threads) {
  if (!x || !blob || !out || M < 0 || N <= 0 || K <= 0 || (M > 1 && ldx < K) || (M > 1 && ldo < N))
    return kb::set_error(kb::E_ARG, "gemm_w4a16_dp: bad arguments (M=%lld N=%lld K=%lld)", (long long)M,
                         (long long)N, (long long)K);
  if (group <= 0 || group % 32 != 0 || K % group != 0)
    return kb::set_error(kb::E_ARG, "gemm_w4a16_dp: group %lld must be a multiple of 32 dividing K=%lld",
                         (long long)group, (long long)K);
  if (dtype != kb::F32 && dtype != kb::BF16)
    return kb::set_error(kb::E_DTYPE, "gemm_w4a16_dp: dtype %d (float32 or bfloat16)", dtype);
  if (kb::tile_backend() == kb::TILES_NONE)
    return kb::set_error(kb::E_ISA, "gemm_w4a16_dp: needs AVX512-BF16 (vdpbf16ps) and the AVX-512 ISA in use");
  if (M == 0) return 0;
  kb::W4DpArgs g{x, static_cast<const uint8_t*>(blob), out, M, N, K, group, ldx, ldo, dtype, threads};
  return kb_avx512::gemm_w4a16_dp(g);
}
#endif
