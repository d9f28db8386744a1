// bf16_round.h -- fp32 -> bf16 for 16 lanes, round to nearest even (a NaN stays a quiet NaN), in AVX-512F integer
// arithmetic so that it needs no AVX512-BF16: add 0x7fff + the kept lsb, keep the high half. 6 integer ops per
// 16 values. Used by simd.h's bf16 stores and by the AMX / tile kernels' epilogues (gemm_amx_bf16.cpp,
// attention_fwd_amx.cpp); internal linkage, so each ISA's compilation keeps its own copy.
#pragma once
#include <immintrin.h>

#if defined(__AVX512F__)
namespace kb {
static inline __m256i bf16_round16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
}  // namespace kb
#endif
