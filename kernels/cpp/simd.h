// simd.h -- one small vector vocabulary for the hot loops, compiled once per ISA (see kb_cpp.h):
// `vf` is 16 floats (zmm) under AVX-512 and 8 floats (ymm) under AVX2. Loads and stores convert from and to
// the storage dtype (f32, bf16, f16), so a kernel is written once as a template over the element type and
// accumulates in fp32 whatever the input. Partial loads (`n` < W elements, the tail of a row) read only
// the n elements and fill the rest with `fill`; partial stores write only n elements -- nothing past the
// end of a row is touched (the ASan test checks this).
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "bf16_round.h"
#include "kb_cpp.h"

namespace KB_NS {
using kb::bf16;
using kb::f16;

// Scalar conversions for the odd element (tails in scalar loops).
inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return kb::bf16_to_f32(x.bits); }
inline float to_f32(f16 x) { return _cvtsh_ss(x.bits); }
template <class T> inline T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline bf16 from_f32<bf16>(float x) { return bf16{kb::f32_to_bf16(x)}; }
template <> inline f16 from_f32<f16>(float x) { return f16{uint16_t(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT))}; }

// 2^f for f in [-0.5, 0.5]: Taylor polynomial of degree 6 (coefficients ln2^k/k!), Horner form;
// truncation error (ln2/2)^7/7! ~ 1.2e-7 relative, about 1 ulp of fp32.

#if defined(__AVX512F__)
constexpr int W = 16;
using vf = __m512;
using vi = __m512i;
inline vf zero() { return _mm512_setzero_ps(); }
inline vf set1(float x) { return _mm512_set1_ps(x); }
inline vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }   // a*b+c
inline vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
inline float hsum(vf a) { return _mm512_reduce_add_ps(a); }
inline float hmax(vf a) { return _mm512_reduce_max_ps(a); }
inline __mmask16 tail(int n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

inline vf load(const float* p) { return _mm512_loadu_ps(p); }
inline vf load(const bf16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline vf load(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
inline vf load(const float* p, int n, float fill) { return _mm512_mask_loadu_ps(set1(fill), tail(n), p); }
inline vf load(const bf16* p, int n, float fill) {
  __m256i h = _mm256_maskz_loadu_epi16(tail(n), p);
  vf v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_mask_blend_ps(tail(n), set1(fill), v);
}
inline vf load(const f16* p, int n, float fill) {
  vf v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail(n), p));
  return _mm512_mask_blend_ps(tail(n), set1(fill), v);
}
// fp32 -> bf16, round to nearest even (NaN kept quiet NaN), no AVX512-BF16 needed; 16 lanes -> 16 x u16.
inline __m256i to_bf16(vf v) { return kb::bf16_round16(v); }
inline void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void store(bf16* p, vf v) { _mm256_storeu_si256((__m256i*)p, to_bf16(v)); }
inline void store(f16* p, vf v) { _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
inline void store(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, tail(n), v); }
inline void store(bf16* p, vf v, int n) { _mm256_mask_storeu_epi16(p, tail(n), to_bf16(v)); }
inline void store(f16* p, vf v, int n) {
  _mm256_mask_storeu_epi16(p, tail(n), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
// Non-temporal (streaming) store of a full vector to a 64-byte aligned fp32 address: the line is written
// without being read first (no read-for-ownership), which saves a third of the traffic of a
// read-x/write-y kernel whose output does not fit in the caches.
inline void stream(float* p, vf v) { _mm512_stream_ps(p, v); }
inline void stream(bf16* p, vf v) { _mm256_stream_si256((__m256i*)p, to_bf16(v)); }
inline void stream(f16* p, vf v) { _mm256_stream_si256((__m256i*)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
inline vf keep(vf v, int n) { return _mm512_maskz_mov_ps(tail(n), v); }   // zero the lanes >= n

#elif defined(__AVX2__)
constexpr int W = 8;
using vf = __m256;
using vi = __m256i;
inline vf zero() { return _mm256_setzero_ps(); }
inline vf set1(float x) { return _mm256_set1_ps(x); }
inline vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
inline float hsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(vf a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf load(const float* p) { return _mm256_loadu_ps(p); }
inline vf load(const bf16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline vf load(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
// Tails: copy the n valid elements into a filled stack buffer (AVX2 has no 16-bit masked loads).
template <class T> inline vf load(const T* p, int n, float fill) {
  if (n >= W) return load(p);
  alignas(32) float buf[W];
  for (int i = 0; i < W; ++i) buf[i] = fill;
  for (int i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, float>) buf[i] = p[i];
    else buf[i] = to_f32(p[i]);
  }
  return _mm256_load_ps(buf);
}
inline __m128i to_bf16(vf v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
  r = _mm256_srli_epi32(r, 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
inline void store(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline void store(bf16* p, vf v) { _mm_storeu_si128((__m128i*)p, to_bf16(v)); }
inline void store(f16* p, vf v) { _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
template <class T> inline void store(T* p, vf v, int n) {
  if (n >= W) { store(p, v); return; }
  alignas(32) T buf[W];
  store(buf, v);
  std::memcpy(p, buf, sizeof(T) * size_t(n));
}
inline void stream(float* p, vf v) { _mm256_stream_ps(p, v); }
inline void stream(bf16* p, vf v) { _mm_stream_si128((__m128i*)p, to_bf16(v)); }
inline void stream(f16* p, vf v) { _mm_stream_si128((__m128i*)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
inline vf keep(vf v, int n) {
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx)));
}
#else
#error "simd.h is compiled with -mavx512f or -mavx2 (see kb_cpp.h)"
#endif

// 2^f for f in [-0.5, 0.5] (the polynomial described at the top), both ISAs.
inline vf poly_exp2(vf f) {
  vf p = set1(1.5403530393381606e-4f);
  p = fma(p, f, set1(1.3333558146428443e-3f));
  p = fma(p, f, set1(9.6181291076284772e-3f));
  p = fma(p, f, set1(5.5504108664821580e-2f));
  p = fma(p, f, set1(2.4022650695910071e-1f));
  p = fma(p, f, set1(6.9314718055994531e-1f));
  return fma(p, f, set1(1.0f));
}

#if defined(__AVX512F__)
// 2^x for x <= 128; x below -126 flushes towards 0 (scalef handles the exponent range, including -inf -> 0).
inline vf exp2(vf x) {
  x = _mm512_max_ps(set1(-150.f), x);  // maxps returns its second operand when one is NaN: NaN stays NaN
  vf n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf f = sub(x, n);                                  // f in [-0.5, 0.5]
  vf p = poly_exp2(f);
  return _mm512_scalef_ps(p, n);
}
#else
inline vf exp2(vf x) {
  x = _mm256_max_ps(set1(-127.f), x);                 // 2^-127 underflows to ~0 below
  x = _mm256_min_ps(set1(128.f), x);                  // (operands in this order: a NaN x stays NaN, as in torch)
  vf n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf f = sub(x, n);
  vf p = poly_exp2(f);
  // scale by 2^n in two halves so that n = -127 or 128 does not overflow the exponent field
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i h1 = _mm256_srai_epi32(ni, 1), h2 = _mm256_sub_epi32(ni, h1);
  vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h1, _mm256_set1_epi32(127)), 23));
  vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h2, _mm256_set1_epi32(127)), 23));
  return mul(mul(p, s1), s2);
}
#endif

constexpr float LOG2E = 1.44269504088896341f;
inline vf exp(vf x) { return exp2(mul(x, set1(LOG2E))); }


// y[0:n] = f(i, cnt) vector by vector, where f returns the values of elements i..i+cnt-1 in its first cnt
// lanes (cnt < W only at the head and the tail). With `nt`, the aligned body is written with streaming
// stores (call _mm_sfence() before the results are used by another thread).
template <class T, class F>
inline void write_row(T* y, int64_t n, bool nt, F&& f) {
  int64_t i = 0;
  if (nt) {
    const uintptr_t al = uintptr_t(W) * sizeof(T);
    int64_t head = int64_t(((al - uintptr_t(y) % al) % al) / sizeof(T));
    if (head > n) head = n;
    if (head > 0) { store(y, f(int64_t(0), int(head)), int(head)); i = head; }
    for (; i + W <= n; i += W) stream(y + i, f(i, W));
  } else {
    for (; i + W <= n; i += W) store(y + i, f(i, W));
  }
  if (i < n) store(y + i, f(i, int(n - i)), int(n - i));
}

// load n (<= W) elements, `fill` in the other lanes; full loads when n == W (constant-folded in loops).
template <class T> inline vf loadn(const T* p, int n, float fill) { return n >= W ? load(p) : load(p, n, fill); }

// sum over i in [0, n) of f(i, cnt) (f as for write_row: lanes >= cnt must be 0), accumulated in blocks of
// SUM_BLOCK elements: fp32 vector lanes inside a block (4 accumulators, at most SUM_BLOCK / (4 W) adds per lane),
// the blocks' sums added in double. Sequential fp32 lanes over a whole row drift on long rows with a non-zero
// mean (error ~ n / (4 W) ulps of the sum: 12x torch's error at 2^21 columns of mean 10, LayerNorm); blocked, the
// error stays near torch's (tests/test_long_rows.py). Costs one horizontal sum per SUM_BLOCK elements.
constexpr int64_t SUM_BLOCK = 4096;
template <class F>
inline double blocked_sum(int64_t n, F&& f) {
  double total = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += SUM_BLOCK) {
    const int64_t b1 = n - b0 < SUM_BLOCK ? n : b0 + SUM_BLOCK;
    vf s0 = zero(), s1 = zero(), s2 = zero(), s3 = zero();
    int64_t i = b0;
    for (; i + 4 * W <= b1; i += 4 * W) {
      s0 = add(s0, f(i, W)); s1 = add(s1, f(i + W, W));
      s2 = add(s2, f(i + 2 * W, W)); s3 = add(s3, f(i + 3 * W, W));
    }
    for (; i < b1; i += W) s0 = add(s0, f(i, int(b1 - i < W ? b1 - i : W)));
    total += double(hsum(add(add(s0, s1), add(s2, s3))));
  }
  return total;
}

// Streaming stores pay off only when the output would not stay in the caches anyway. Measured at 8192x4096
// fp32 (2 threads): softmax 13.9 -> 10 ms, RMSNorm 11.1 -> 7.6 ms, LayerNorm 12.9 -> 8.5 ms with them.
constexpr int64_t STREAM_MIN_BYTES = int64_t(16) << 20;

}  // namespace KB_NS
