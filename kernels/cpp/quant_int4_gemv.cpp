// quant_int4_gemv.cpp -- W4A16 GEMV/GEMM for decode (M = 1..16): out[M,N] = x[M,K] @ W^T with W int4, stored as
// quant/int4_weight_only.py holds it: packed[N, K/2] (k even in the low nibble, k odd in the high one), groups of G
// consecutive k with an fp32 scale s and a uint8 zero point z each: W[n,k] = s * (q - z). x and out fp32 or bf16.
// v1 for AVX-512; the reference point is aten's _weight_int4pack_mm_for_cpu, which needs its own packing.
// This file is v2 (variant `cpp_w4_v2`; quant/cpp_kernels.py's fallback on CPUs without AVX512-BF16); v3 is
// quant_int4_dp.cpp (`cpp_w4`: vdpbf16ps on its own packing, 2.2-3.0x v2 at M = 1, warm and cold).
//
// Why it is fast at M = 1: decode reads every weight once per token, so the time is the weight bytes over the
// memory bandwidth; int4 moves 0.5 byte per weight (+ 5 bytes of scale and zero per group: 0.58 B at G = 64)
// against bf16's 2. The nibbles are unpacked in registers, never to memory:
//   16 packed bytes (32 weights) -> vpmovzxbd to 16 int32 -> vpermps into the group's table (the low nibble:
//   the 16 even k) and, after a shift right by 4, again (the 16 odd k) -> one FMA per weight and row of x.
// The dot product does not care about order, so x is split once per call into its even and odd k (xe, xo: 2MK
// floats, a copy the size of x) and the weights are never re-interleaved.
// Dequantization by table: per group and channel the 16 values (q - z) * s, looked up with vpermps (v2; v1 did
// and/shift, int->float and an FMA per 16 weights: 7 instead of 4 instructions per 32 weights).
// Tiling: up to 4 rows x 4 channels or 5-8 rows x 2 channels per step (16 zmm accumulators); channels in blocks of
// 4 over the OpenMP threads. One horizontal sum per (row, channel) at the end.
// Work: 2MNK FLOPs; bytes: N K / 2 + 5 N K / G (weights at their width) + x + out.
// Measured: see README (quant_gemm).
#include <omp.h>

#include <algorithm>

#include "kb_cpp.h"

namespace kb {
struct W4Args {
  const void* x; const uint8_t* packed; const float* scale; const uint8_t* zero; void* out;
  int64_t M, N, K, G, ldx, ldo;
  int dtype, threads;
};
}  // namespace kb

KB_DECLARE(int gemm_w4a16(const kb::W4Args&))

#if KB_IMPL
#include <immintrin.h>

namespace KB_NS {
#if defined(KB_ISA_AVX512)
namespace {
constexpr int MRMAX = 8;

inline float load_f(const void* p, int dtype, int64_t i) {
  return dtype == kb::F32 ? static_cast<const float*>(p)[i] : kb::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// MR rows of x x NB output channels; per group and channel a 16-entry table of the dequantized values
// (q - z) * s, q = 0..15, and vpermps looks each nibble up in it (it reads only the index's low 4 bits, so the low
// nibble needs no mask): 4 instructions turn 16 bytes into 32 fp32 weights, then one FMA per weight and row.
template <int MR, int NB>
void tile(const kb::W4Args& g, const float* xe, const float* xo, int64_t m0, int64_t n0, int nb) {
  const int64_t half = g.K / 2, ngroups = g.K / g.G, chunks = g.G / 32;   // 16 bytes = 32 weights per chunk
  __m512 acc[MR][NB];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t gi = 0; gi < ngroups; ++gi) {
    __m512 table[NB];
    for (int j = 0; j < NB; ++j) {
      const int64_t n = n0 + (j < nb ? j : 0);
      const float sc = g.scale[n * ngroups + gi];
      table[j] = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(float(g.zero[n * ngroups + gi]))),
                               _mm512_set1_ps(sc));
    }
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t j0 = gi * (g.G / 2) + c * 16;           // byte offset in a row of packed = even-k index
      __m512 wl[NB], wh[NB];
      for (int j = 0; j < NB; ++j) {
        const int64_t n = n0 + (j < nb ? j : 0);
        const auto* src = reinterpret_cast<const __m128i*>(g.packed + n * half + j0);
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(src));
        wl[j] = _mm512_permutexvar_ps(q, table[j]);                        // index bits 3:0 = the low nibble
        wh[j] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table[j]);
      }
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 e = _mm512_loadu_ps(xe + (m0 + i) * half + j0), o = _mm512_loadu_ps(xo + (m0 + i) * half + j0);
#pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(wh[j], o, _mm512_fmadd_ps(wl[j], e, acc[i][j]));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < nb; ++j) {
      const float v = _mm512_reduce_add_ps(acc[i][j]);
      if (g.dtype == kb::F32) static_cast<float*>(g.out)[(m0 + i) * g.ldo + n0 + j] = v;
      else static_cast<uint16_t*>(g.out)[(m0 + i) * g.ldo + n0 + j] = kb::f32_to_bf16(v);
    }
}

// up to 4 rows: 4 channels per step (16 accumulators); 5 to 8 rows: 2 channels (the dequantized weights serve 8 rows)
using TileFn = void (*)(const kb::W4Args&, const float*, const float*, int64_t, int64_t, int);
constexpr TileFn TILE[MRMAX + 1] = {nullptr, tile<1, 4>, tile<2, 4>, tile<3, 4>, tile<4, 4>,
                                    tile<5, 2>, tile<6, 2>, tile<7, 2>, tile<8, 2>};
constexpr int TILE_NB[MRMAX + 1] = {0, 4, 4, 4, 4, 2, 2, 2, 2};
}  // namespace

int gemm_w4a16(const kb::W4Args& g) {
  const int64_t half = g.K / 2;
  kb::Scratch split(size_t(2 * g.M * half) * sizeof(float));
  if (!split.p) return kb::set_error(kb::E_NOMEM, "gemm_w4a16: out of memory");
  float* xe = split.as<float>();
  float* xo = xe + g.M * half;
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t j = 0; j < half; ++j) {
      xe[m * half + j] = load_f(g.x, g.dtype, m * g.ldx + 2 * j);
      xo[m * half + j] = load_f(g.x, g.dtype, m * g.ldx + 2 * j + 1);
    }
  // channels in blocks of 4 (a 5-8 row tile takes them as two 2-channel steps), rows in blocks of 8
  const int64_t nblocks = (g.N + 3) / 4, mblocks = (g.M + MRMAX - 1) / MRMAX;
  const int nthreads = kb::threads_for(g.threads, g.M * g.N * g.K, int64_t(1) << 20);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 4)
  for (int64_t t = 0; t < nblocks * mblocks; ++t) {
    const int64_t jb = t / mblocks, ib = t % mblocks;
    const int64_t m0 = ib * MRMAX;
    const int mr = int(std::min<int64_t>(MRMAX, g.M - m0)), nbt = TILE_NB[mr];
    for (int64_t n0 = jb * 4; n0 < std::min<int64_t>(g.N, jb * 4 + 4); n0 += nbt)
      TILE[mr](g, xe, xo, m0, n0, int(std::min<int64_t>(nbt, g.N - n0)));
  }
  return 0;
}
#else
int gemm_w4a16(const kb::W4Args&) { return kb::set_error(kb::E_ISA, "gemm_w4a16: needs AVX-512"); }
#endif
}  // namespace KB_NS

#else  // entry point

// out[M, N] = x[M, K] @ dequant(W)^T; x, out in `dtype` (float32 or bfloat16); W as quant/int4_weight_only.py.
KB_API int kb_cpp_gemm_w4a16(const void* x, const void* packed, const void* scale, const void* zero, void* out,
                             int64_t M, int64_t N, int64_t K, int64_t group, int64_t ldx, int64_t ldo, int dtype,
                             int threads) {
  if (!x || !packed || !scale || !zero || !out || M < 0 || N <= 0 || K <= 0 || (M > 1 && ldx < K) ||
      (M > 1 && ldo < N))
    return kb::set_error(kb::E_ARG, "gemm_w4a16: bad arguments (M=%lld N=%lld K=%lld)", (long long)M, (long long)N,
                         (long long)K);
  if (group <= 0 || group % 32 != 0 || K % group != 0)
    return kb::set_error(kb::E_ARG, "gemm_w4a16: group %lld must be a multiple of 32 dividing K=%lld",
                         (long long)group, (long long)K);
  if (dtype != kb::F32 && dtype != kb::BF16)
    return kb::set_error(kb::E_DTYPE, "gemm_w4a16: dtype %d (float32 or bfloat16)", dtype);
  if (kb::isa() < kb::ISA_AVX512) return kb::set_error(kb::E_ISA, "gemm_w4a16: this CPU has no AVX-512");
  if (M == 0) return 0;
  kb::W4Args g{x, static_cast<const uint8_t*>(packed), static_cast<const float*>(scale),
               static_cast<const uint8_t*>(zero), out, M, N, K, group, ldx, ldo, dtype, threads};
  return kb_avx512::gemm_w4a16(g);
}
#endif
