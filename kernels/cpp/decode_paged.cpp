// decode_paged.cpp -- v1 of the paged decode attention (variant `cpp_v1`; `cpp` runs v2, decode_paged_dp.cpp, where
// it applies, and this kernel for every other dtype), and the argument checks of both entry points.
// Decode attention over a paged KV cache (vLLM layout) on the CPU, split-K over the context
// (flash-decoding: Dao, Haziza, Massa, Sizov 2023), each KV row read once for all the query heads of its group.
//
// q [B, SQ, H, D], out [B, SQ, H, D] (float32 / bfloat16 / float16, contiguous);
// k_cache, v_cache [NB, BS, HKV, D] (float32 / bfloat16 / float16 / int8 / fp8 e4m3), block_tables [B, MAXB]
// int32, seq_lens [B] int32; quantized caches: value = stored * scale[block * scale_bstride + kv_head] (fp32).
// Query s of sequence b sees keys 0 .. len_b - SQ + s (bottom-right causal over the SQ new tokens).
//
// Work unit = (sequence, kv head, chunk of pages). A unit keeps the G * SQ queries of its kv head (G = H / HKV)
// pre-scaled by scale * log2(e) in fp32, and for each page of its chunk:
//   converts the page's K rows to fp32 (one read of BS x D elements: the only pass over K),
//   S[r][j] = Q[r] . K[j] for the G*SQ rows r (fp32 FMAs, one horizontal sum per (r, j)), times the K scale,
//   online softmax per row (max, exp2, sum over the page's visible keys),
//   converts the page's V rows, Acc[r][:] = Acc[r][:] * alpha + sum_j P[r][j] * vscale * V[j][:]
//   (the V scale folded into P; Acc held in registers for 8 rows x one 16-lane slice of D over the page).
// A sequence split into several chunks leaves (m, l, Acc) per chunk; a second pass merges them
// (o = sum_c 2^(m_c - M) Acc_c / sum_c 2^(m_c - M) l_c). Chunks are sized so that there are >= 8 units per
// thread (load balance over ragged lengths), at least 64 tokens and at most 2048 tokens each.
//
// Bytes: every KV row of every sequence once (2 x len x HKV x D x element size) + scales + q + out; FLOPs 4 x H
// x D x SQ x len: ~1 FLOP per byte for bf16 KV and G = 4, so memory-bound on the CPU as on GPUs.
// Measured (AMD EPYC Zen 4, one thread, CPU time, min of 15 round-robin calls, scripts/decode_ratio.py, b8 h8/2 d128,
// bf16 q; 2026-12-01, load average ~6 on 2 cores shared with other engineers): bf16 KV 3.0 ms at ctx 2048 (5.5 GB/s),
// 16.3 ms at ctx 8192 (4.1 GB/s); int8 KV 1.63x and 1.18x faster (1.05-1.63x and 1.11-1.19x over 4 runs); 9.4 GB/s
// on cached data (b1 ctx2048): ~3,000 instructions per 16-token page of a kv head, compute-bound. v2 2.3-2.6x.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kb_cpp.h"

#include "decode_paged.h"

#if KB_IMPL
#include "simd.h"
#include "decode_sched.h"

namespace KB_NS {
struct i8 { int8_t v; };
struct fp8 { uint8_t v; };

// W elements of a KV row to fp32
inline vf load_kv(const float* p) { return load(p); }
inline vf load_kv(const bf16* p) { return load(p); }
inline vf load_kv(const f16* p) { return load(p); }
#if defined(__AVX512F__)
inline vi widen_i8(const void* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
inline vi widen_u8(const void* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
#else
inline vi widen_i8(const void* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
inline vi widen_u8(const void* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
#endif
// `vi` seen as W 32-bit lanes (GCC vector extensions): the bit operations below are written once for both ISAs
// and compile to the same vpandd / vpslld / vpord / vcvtdq2ps as the intrinsics.
using vu32 = uint32_t __attribute__((vector_size(sizeof(vi))));
using vs32 = int32_t __attribute__((vector_size(sizeof(vi))));
inline vf load_kv(const i8* p) { return __builtin_convertvector((vs32)widen_i8(p), vf); }
// e4m3 -> fp32 exactly: the 7 magnitude bits placed at fp32's exponent/mantissa (<< 20) read as a float of
// exponent e - 127, times 2^120 -> 2^(e - 7) x 1.m; exponent 0 lands on fp32 subnormals, which the multiply
// scales to e4m3's subnormals m x 2^-9. The sign bit moves to bit 31. (NaN 0x7f reads as 480: not produced.)
inline vf load_kv(const fp8* p) {
  const vu32 x = (vu32)widen_u8(p);
  const vf mag = mul((vf)((x & 0x7fu) << 20), set1(0x1p120f));
  return (vf)((vu32)mag | ((x & 0x80u) << 24));
}

constexpr int RB = 8;   // query rows per register block in P.V

struct Bufs {                                   // per thread, 64-byte aligned
  alignas(64) float Q[kb::DEC_MAX_ROWS * kb::DEC_MAX_D];
  alignas(64) float Acc[kb::DEC_MAX_ROWS * kb::DEC_MAX_D];
  alignas(64) float Kf[kb::DEC_MAX_BS * kb::DEC_MAX_D];
  alignas(64) float S[kb::DEC_MAX_ROWS * (kb::DEC_MAX_BS + 16)];
  float m[kb::DEC_MAX_ROWS], l[kb::DEC_MAX_ROWS];
};

// n rows of D elements at `src` (row stride `rs` elements) to fp32 Kf[n][D]; fp32 caches are read in place.
template <class KV>
static inline const float* rows_f32(const KV* src, int64_t rs, int n, int D, float* Kf, int64_t& stride) {
  if constexpr (std::is_same_v<KV, float>) { stride = rs; return src; }
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < D; c += W) store(Kf + j * D + c, load_kv(src + j * rs + c));
  stride = D;
  return Kf;
}

// One unit: rows r = s * G + g (query s, head hk * G + g) against tokens [t0, t1) of sequence b, kv head hk.
template <class T, class KV>
static void unit(const kb::DecodeArgs& a, int64_t b, int64_t hk, int64_t t0, int64_t t1, Bufs& bf, float* part,
                 T* O) {
  const int D = int(a.D), BS = int(a.BS);
  const int64_t G = a.H / a.HKV, SQ = a.SQ, L = a.lens[b];
  const int R = int(G * SQ);
  const T* Q = static_cast<const T*>(a.q);
  const float qs = a.scale * LOG2E;
  for (int r = 0; r < R; ++r) {
    const T* src = Q + kb::dec_row(a, b, hk, r);
    float* dst = bf.Q + r * D;
    for (int c = 0; c < D; c += W) store(dst + c, mul(load(src + c), set1(qs)));
  }
  for (int r = 0; r < R; ++r) { bf.m[r] = -INFINITY; bf.l[r] = 0.f; }
  std::fill(bf.Acc, bf.Acc + R * D, 0.f);
  const KV* Kc = static_cast<const KV*>(a.k);
  const KV* Vc = static_cast<const KV*>(a.v);
  const int64_t rs = a.HKV * a.D;                       // row stride inside a block
  const int32_t* table = a.tables + b * a.MAXB;
  const int SP = (BS + W - 1) / W * W + W;              // S row pitch
  for (int64_t p0 = t0; p0 < t1;) {
    const int64_t page = p0 / BS, blk = table[page];
    const int64_t j0 = p0 - page * BS;                  // first token of the page in this unit
    const int n = int(std::min<int64_t>(t1, (page + 1) * BS) - p0);
    const int64_t off = (blk * BS + j0) * rs + hk * a.D;
    const float ksc = a.ks ? a.ks[blk * a.ks_bstride + hk] : 1.f;
    const float vsc = a.vs ? a.vs[blk * a.vs_bstride + hk] : 1.f;
    // the next page is at a random block: prefetch its K and V rows now (the hardware prefetcher cannot guess it)
    if (p0 + n < t1) {
      const int64_t nxt = (int64_t(table[page + 1]) * BS) * rs + hk * a.D;
      const int nn = int(std::min<int64_t>(BS, t1 - p0 - n));
      for (int j = 0; j < nn; ++j)
        for (int64_t c = 0; c < int64_t(D) * int64_t(sizeof(KV)); c += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(Kc + nxt + j * rs) + c, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(Vc + nxt + j * rs) + c, _MM_HINT_T0);
        }
    }
    int64_t kst;
    const float* K = rows_f32(Kc + off, rs, n, D, bf.Kf, kst);
    // S = Q K^T (x the K scale); row r sees tokens up to L - SQ + s: `vis` of this page's n
    for (int r = 0; r < R; ++r) {
      const int64_t s = r / G;
      const int vis = int(std::clamp<int64_t>(L - SQ + s + 1 - p0, 0, n));
      float* Sr = bf.S + r * SP;
      const float* q = bf.Q + r * D;
      for (int j = 0; j < vis; ++j) {
        const float* kr = K + j * kst;
        vf acc0 = zero(), acc1 = zero();
        int c = 0;
        for (; c + 2 * W <= D; c += 2 * W) {
          acc0 = fma(load(q + c), load(kr + c), acc0);
          acc1 = fma(load(q + c + W), load(kr + c + W), acc1);
        }
        if (c < D) acc0 = fma(load(q + c), load(kr + c), acc0);
        Sr[j] = hsum(add(acc0, acc1)) * ksc;
      }
      // online softmax over the page; P (times the V scale) replaces S; lanes >= vis are 0
      if (vis == 0) { for (int j = 0; j < n; ++j) Sr[j] = 0.f; continue; }
      float mx = bf.m[r];
      for (int j = 0; j < vis; ++j) mx = std::max(mx, Sr[j]);
      const float alpha = std::exp2(bf.m[r] - mx);       // m = -inf at the start: alpha = 0 (Acc is 0 anyway)
      float sum = 0.f;
      for (int j = 0; j < vis; j += W) {
        const int cnt = std::min(W, vis - j);
        const vf pv = keep(exp2(sub(load(Sr + j), set1(mx))), cnt);
        sum += hsum(pv);
        store(Sr + j, mul(pv, set1(vsc)));
      }
      for (int j = vis; j < n; ++j) Sr[j] = 0.f;
      bf.m[r] = mx;
      bf.l[r] = bf.l[r] * alpha + sum;
      if (alpha != 1.f) {
        float* acc = bf.Acc + r * D;
        for (int c = 0; c < D; c += W) store(acc + c, mul(load(acc + c), set1(alpha)));
      }
    }
    // Acc += P V: V rows converted once, 8 query rows x one W-slice of D in registers over the page's tokens
    int64_t vst;
    const float* V = rows_f32(Vc + off, rs, n, D, bf.Kf, vst);
    for (int r0 = 0; r0 < R; r0 += RB) {
      const int nr = std::min(RB, R - r0);
      for (int c = 0; c < D; c += W) {
        vf acc[RB];
        for (int i = 0; i < RB; ++i) acc[i] = i < nr ? load(bf.Acc + (r0 + i) * D + c) : zero();
        for (int j = 0; j < n; ++j) {
          const vf vv = load(V + j * vst + c);
          for (int i = 0; i < RB; ++i)
            if (i < nr) acc[i] = fma(set1(bf.S[(r0 + i) * SP + j]), vv, acc[i]);
        }
        for (int i = 0; i < nr; ++i) store(bf.Acc + (r0 + i) * D + c, acc[i]);
      }
    }
    p0 += n;
  }
  write_unit(a, b, hk, R, D, bf, part, O);
}

template <class T, class KV>
static int run(const kb::DecodeArgs& a) {
  return decode_schedule<T, Bufs>(a, [&a](int64_t b, int64_t hk, int64_t t0, int64_t t1, Bufs& bf, float* part,
                                          T* O) { unit<T, KV>(a, b, hk, t0, t1, bf, part, O); });
}

template <class T>
static int run_kv(const kb::DecodeArgs& a) {
  switch (a.kv_dtype) {
    case kb::KV_F32: return run<T, float>(a);
    case kb::KV_BF16: return run<T, bf16>(a);
    case kb::KV_F16: return run<T, f16>(a);
    case kb::KV_I8: return run<T, i8>(a);
    case kb::KV_FP8: return run<T, fp8>(a);
  }
  return kb::set_error(kb::E_DTYPE, "decode_paged: kv dtype %d", a.kv_dtype);
}

int decode_paged(const kb::DecodeArgs& a) {
  switch (a.q_dtype) {
    case kb::F32: return run_kv<float>(a);
    case kb::BF16: return run_kv<bf16>(a);
    case kb::F16: return run_kv<f16>(a);
  }
  return kb::set_error(kb::E_DTYPE, "decode_paged: dtype %d", a.q_dtype);
}

}  // namespace KB_NS

#else  // entry point

// Paged decode attention (see the header). Every argument is checked before any memory is touched: sizes and
// head counts, dtypes, each sequence's length against its block-table row and its queries, each block-table
// entry a sequence uses against NB, the scale pointers against the KV dtype. `rung` 2: v2 (decode_paged_dp.cpp)
// where it applies (AVX512-BF16 CPU; bf16 q and bf16/int8 KV, fp16 q and int8 KV; head dim a multiple of 32), this
// file's v1 elsewhere; `rung` 1: v1 always.
int kb::decode_entry(int rung, const void* q, const void* k_cache, const void* v_cache, const void* block_tables,
                     const void* seq_lens, const void* k_scale, const void* v_scale, void* out, int64_t B,
                     int64_t SQ, int64_t H, int64_t D, int64_t NB, int64_t BS, int64_t HKV, int64_t KD,
                     int64_t vNB, int64_t vBS, int64_t vHKV, int64_t vD, int64_t tb_rows, int64_t MAXB,
                     int64_t n_lens, int64_t ks_rows, int64_t ks_cols, int64_t ks_bstride, int64_t vs_rows,
                     int64_t vs_cols, int64_t vs_bstride, float scale, int q_dtype, int kv_dtype,
                     int threads) {
  using kb::set_error;
  if (!q || !k_cache || !v_cache || !block_tables || !seq_lens || !out)
    return set_error(kb::E_ARG, "decode_paged: null pointer");
  if (B < 0 || SQ < 1 || H < 1 || HKV < 1 || NB < 1 || BS < 1 || MAXB < 1 || D < 1)
    return set_error(kb::E_ARG, "decode_paged: bad sizes (B=%lld SQ=%lld H=%lld HKV=%lld D=%lld NB=%lld BS=%lld "
                     "MAXB=%lld)", (long long)B, (long long)SQ, (long long)H, (long long)HKV, (long long)D,
                     (long long)NB, (long long)BS, (long long)MAXB);
  // every tensor's own sizes, so that one that does not match the others is refused, never overrun
  if (vNB != NB || vBS != BS || vHKV != HKV || vD != KD)
    return set_error(kb::E_ARG, "decode_paged: v_cache [%lld, %lld, %lld, %lld] != k_cache [%lld, %lld, %lld, %lld]",
                     (long long)vNB, (long long)vBS, (long long)vHKV, (long long)vD, (long long)NB, (long long)BS,
                     (long long)HKV, (long long)KD);
  if (KD != D)
    return set_error(kb::E_ARG, "decode_paged: head_dim of q (%lld) != head_dim of the cache (%lld)", (long long)D,
                     (long long)KD);
  if (tb_rows != B || n_lens != B)
    return set_error(kb::E_ARG, "decode_paged: batch %lld, but %lld block-table rows and %lld lengths", (long long)B,
                     (long long)tb_rows, (long long)n_lens);
  if (H % HKV != 0)
    return set_error(kb::E_ARG, "decode_paged: %lld query heads is not a multiple of %lld kv heads", (long long)H,
                     (long long)HKV);
  if (D % 16 != 0 || D > kb::DEC_MAX_D)
    return set_error(kb::E_ARG, "decode_paged: head dim %lld not supported (a multiple of 16, <= %lld)", (long long)D,
                     (long long)kb::DEC_MAX_D);
  if (H / HKV * SQ > kb::DEC_MAX_ROWS || BS > kb::DEC_MAX_BS)
    return set_error(kb::E_ARG, "decode_paged: %lld query rows per kv head (max %lld) or block size %lld (max %lld)",
                     (long long)(H / HKV * SQ), (long long)kb::DEC_MAX_ROWS, (long long)BS,
                     (long long)kb::DEC_MAX_BS);
  if (!(scale > 0) || !std::isfinite(scale)) return set_error(kb::E_ARG, "decode_paged: scale %g", double(scale));
  if (q_dtype < 0 || q_dtype > 2) return set_error(kb::E_DTYPE, "decode_paged: q dtype %d", q_dtype);
  if (kv_dtype < 0 || kv_dtype > 4) return set_error(kb::E_DTYPE, "decode_paged: kv dtype %d", kv_dtype);
  const bool quant = kv_dtype >= kb::KV_I8;
  if (quant != (k_scale != nullptr) || quant != (v_scale != nullptr) || ks_bstride < 0 || vs_bstride < 0)
    return set_error(kb::E_ARG, "decode_paged: int8/fp8 caches take both scales, float caches none");
  if (quant && (ks_rows != NB || vs_rows != NB || ks_cols != HKV || vs_cols != HKV))
    return set_error(kb::E_ARG, "decode_paged: scales [%lld, %lld] and [%lld, %lld], want [num_blocks=%lld, kv_heads=%lld]",
                     (long long)ks_rows, (long long)ks_cols, (long long)vs_rows, (long long)vs_cols, (long long)NB,
                     (long long)HKV);
  const int32_t* lens = static_cast<const int32_t*>(seq_lens);
  const int32_t* tables = static_cast<const int32_t*>(block_tables);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lens[b];
    if (L < SQ) return set_error(kb::E_ARG, "decode_paged: sequence %lld has %lld tokens, fewer than its %lld queries",
                                 (long long)b, (long long)L, (long long)SQ);
    const int64_t pages = (L + BS - 1) / BS;
    if (pages > MAXB)
      return set_error(kb::E_ARG, "decode_paged: sequence %lld: %lld tokens need %lld blocks, the table has %lld",
                       (long long)b, (long long)L, (long long)pages, (long long)MAXB);
    for (int64_t p = 0; p < pages; ++p) {
      const int64_t blk = tables[b * MAXB + p];
      if (blk < 0 || blk >= NB)
        return set_error(kb::E_ARG, "decode_paged: sequence %lld page %lld -> block %lld, outside the cache's %lld",
                         (long long)b, (long long)p, (long long)blk, (long long)NB);
    }
  }
  kb::DecodeArgs a{q, k_cache, v_cache, tables, lens, static_cast<const float*>(k_scale),
                   static_cast<const float*>(v_scale), out, B, SQ, H, HKV, D, NB, BS, MAXB, ks_bstride, vs_bstride,
                   scale, q_dtype, kv_dtype, threads};
  if (B == 0) return 0;
  if (rung >= 2 && kb_zbf16::decode_paged_dp_applies(a)) return kb_zbf16::decode_paged_dp(a);
  return KB_DISPATCH(decode_paged, a);
}

// v1 always (the ladder's rung; kb_cpp_decode_paged, in decode_paged_dp.cpp, runs v2 where it applies)
KB_API int kb_cpp_decode_paged_v1(const void* q, const void* k_cache, const void* v_cache, const void* block_tables,
                               const void* seq_lens, const void* k_scale, const void* v_scale, void* out, int64_t B,
                               int64_t SQ, int64_t H, int64_t D, int64_t NB, int64_t BS, int64_t HKV, int64_t KD,
                               int64_t vNB, int64_t vBS, int64_t vHKV, int64_t vD, int64_t tb_rows, int64_t MAXB,
                               int64_t n_lens, int64_t ks_rows, int64_t ks_cols, int64_t ks_bstride, int64_t vs_rows,
                               int64_t vs_cols, int64_t vs_bstride, float scale, int q_dtype, int kv_dtype,
                               int threads) {
  return kb::decode_entry(1, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, out, B, SQ, H, D, NB,
                         BS, HKV, KD, vNB, vBS, vHKV, vD, tb_rows, MAXB, n_lens, ks_rows, ks_cols, ks_bstride,
                         vs_rows, vs_cols, vs_bstride, scale, q_dtype, kv_dtype, threads);
}
#endif
