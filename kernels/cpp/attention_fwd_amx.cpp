// attention_fwd_amx.cpp -- bf16 attention forward O = softmax(Q K^T * scale [+ causal mask]) V on tiles: Q K^T
// and P V as tile matmuls (AMX tdpbf16ps, fp32 accumulation), the online softmax (FlashAttention: Dao et al.
// 2022) in fp32 on AVX-512 between them. v2 of the bf16 attention; v1 (attention_fwd.cpp) converts bf16 to
// fp32 and runs AVX-512 FMAs (0.26-0.45x of torch's flash kernel on an AMX Xeon, 9-12% of its bf16 peak).
// q [b, h, sq, d], k/v [b, hkv, sk, d], out [b, h, sq, d], contiguous bf16; h % hkv == 0 (grouped-query heads:
// query head i reads kv head i / (h / hkv)); causal is top-left aligned (key j visible to query i iff j <= i).
// Head dims 64 and 128.
//
// Compiled twice (tiles.h): on AMX tiles (namespace kb_amx) and on the AVX512-BF16 tile model (kb_zbf16), the
// path of CPUs without AMX (AMD Zen 4) and the one that tests this file's blocking on any AVX512-BF16 CPU.
//
// FLOPs 4 * sq * sk * d per head (2 for Q K^T, 2 for P V; half when causal) + sq * sk exp2.
// Packing (once per call, per kv head, shared by its query heads): K into B tiles of Q K^T -- Kp[16-key
// block][d/32][16 d-pairs][16 keys][2] -- and V into B tiles of P V -- Vp[32-key step][d/16][16 key pairs]
// [16 columns][2]; keys zero-padded to a multiple of 128. Bytes: read q, k, v, write o once (+ k, v
// re-read from L2 per query block: 2 * sk * d * 2 B = 1 MiB at sk = 2048, d = 128).
// Per task (b, h, block of BM = 32 queries; heaviest causal blocks first):
//   Qb = the 32 x d query rows (zero-padded tail)                                       4 KiB at d = 128
//   for each key block of BN = 64 keys (128 at d = 64) up to the causal limit (blocks past the diagonal: never
//   touched):
//     S[32][64] = Qb Kb^T: 2 32-key parts x (d/32 k-steps x 4 tdpbf16ps into tmm0-3), stored fp32   8 KiB
//     online softmax per row (AVX-512, exp2 with scale*log2(e) folded in): m, l, alpha; P -> bf16 [32][64]
//     O[32][d] (fp32, L1, 16 KiB at d = 128) = O * alpha + P Vb: per 32 columns of d, tmm0-3 loaded from O,
//       2 k-steps x 4 tdpbf16ps, stored back
//   out = O / l rounded to bf16 once.
// Tiles: tmm0-3 the 2x2 fp32 C block, tmm4-5 two A tiles (16 rows x 32 bf16), tmm6-7 two B tiles.
// Per 64-key block at d = 128: 64 tdpbf16ps (1 MFLOP) against 2048 exps and 32 KiB of O traffic.
//
// Measured on the AVX512-BF16 tile model (AMD EPYC Zen 4, 2 cores shared with other engineers: load average
// 15-21, others took 85-90% of the CPU during the run; ratios side by side in one run), bench.py --suite
// gemm,attention --full --dtype float32,bfloat16, 2 threads, medians of 3-10 calls, against sdpa's flash kernel:
//   1024 d64 1.50x, 1024 d128 causal 1.64x, 2048 d64 causal 1.73x, 2048 d128 1.56x, 2048 d128 GQA 8/2 causal
//   1.60x, 4096 d128 causal 1.68x (v1, attention_fwd.cpp, in the same run: 1.16-1.41x).
//   One thread, CPU time per call (robust to the load; 1024x1024, 2 heads, non-causal): d64 125, d128 133
//   GFLOP/s = 54% / 57% of one core's vdpbf16ps ceiling (232 GFLOP/s, a throwaway loop of independent
//   vdpbf16ps); v1 116 / 90, sdpa flash 71 / 79. The tile model's tdpbf16ps alone reaches ~170 (73%); the rest
//   is the softmax between the two matmuls (~13 vector operations per score) and the S / O tile traffic.
//   On AMX: not measured -- no AMX machine was available (docs/cpp-kernels.md, known limits).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "bf16_round.h"
#include "kb_cpp.h"

namespace kb {
struct AttnTileArgs {
  const uint16_t* q; const uint16_t* k; const uint16_t* v; uint16_t* o;
  int64_t B, H, HKV, SQ, SK, D;
  int causal;
  float scale;
  int threads;
};
}  // namespace kb

namespace kb_amx { int attention_fwd_bf16(const kb::AttnTileArgs&); }
namespace kb_zbf16 { int attention_fwd_bf16(const kb::AttnTileArgs&); }

#if defined(KB_AMX_IMPL) || defined(KB_ZBF16_IMPL)
#include "tiles.h"

namespace KB_TNS {
namespace {

using kb_tiles::Tiles;
// BM queries per task; BN keys per block: 64 at d = 128, 128 at d = 64 (the per-row softmax work -- two
// reductions -- is then spread over as many tdpbf16ps at both head dims)
constexpr int64_t BM = 32, BN_MAX = 128;

// 2^x for x <= 0 (softmax arguments; below 2^-126, -inf and NaN -> exactly 0: NaN scores are the caller's
// `nan` flag), x = n + f, 2^f by a degree-4 polynomial on [-0.5, 0.5] (relative error 4e-5, under bf16's
// 3.9e-3 rounding of p), 2^n by vscalefps. 7 operations per 16 values.
inline __m512 exp2_neg(__m512 x0) {
  const __m512 x = _mm512_max_ps(x0, _mm512_set1_ps(-127.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(9.6181291e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x0, _mm512_set1_ps(-126.0f), _CMP_GE_OQ), p, n);
}

// K of one kv head -> Kp[SKp/16][D/32][16 pairs][16 keys] (uint32 = one bf16 pair of a key's row), zero-padded.
void pack_k(const uint16_t* K, int64_t SK, int64_t SKp, int64_t D, uint32_t* Kp) {
  const int64_t ksteps = D / 32;
  for (int64_t jb = 0; jb < SKp / 16; ++jb)
    for (int64_t jj = 0; jj < 16; ++jj) {
      const int64_t j = jb * 16 + jj;
      const uint32_t* row = reinterpret_cast<const uint32_t*>(K + j * D);
      for (int64_t ks = 0; ks < ksteps; ++ks) {
        uint32_t* dst = Kp + ((jb * ksteps + ks) * 16) * 16 + jj;
        for (int64_t p = 0; p < 16; ++p) dst[p * 16] = j < SK ? row[ks * 16 + p] : 0u;
      }
    }
}

// V of one kv head -> Vp[SKp/32][D/16][16 key pairs][16 columns][2], zero-padded keys: rows j, j+1 interleaved.
void pack_v(const uint16_t* V, int64_t SK, int64_t SKp, int64_t D, uint16_t* Vp) {
  alignas(64) static const uint16_t idx_lo_[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx_lo = _mm512_load_si512(idx_lo_);
  const __m512i idx_hi = _mm512_add_epi16(idx_lo, _mm512_set1_epi16(16));
  const int64_t cblocks = D / 16;
  for (int64_t kk = 0; kk < SKp / 32; ++kk)
    for (int64_t q = 0; q < 16; ++q) {
      const int64_t j = kk * 32 + 2 * q;
      for (int64_t c0 = 0; c0 < D; c0 += 32) {   // 32 columns of rows j, j+1 -> two 16-column blocks
        __m512i r0 = j < SK ? _mm512_loadu_si512(V + j * D + c0) : _mm512_setzero_si512();
        __m512i r1 = j + 1 < SK ? _mm512_loadu_si512(V + (j + 1) * D + c0) : _mm512_setzero_si512();
        uint16_t* dst = Vp + ((kk * cblocks + c0 / 16) * 16 + q) * 32;
        _mm512_store_si512(dst, _mm512_permutex2var_epi16(r0, idx_lo, r1));
        _mm512_store_si512(dst + 16 * 32, _mm512_permutex2var_epi16(r0, idx_hi, r1));
      }
    }
}

struct Work {   // one thread's buffers, 64-byte aligned rows
  alignas(64) uint16_t q[BM * 128];   // query block, bf16, zero-padded rows
  alignas(64) float s[BM * BN_MAX];       // scores of one key block
  alignas(64) uint16_t p[BM * BN_MAX];    // probabilities, bf16 (A tiles of P V)
  alignas(64) float o[BM * 128];      // output accumulator
  alignas(64) float l[BM * 16];              // row sums, 16 partial sums per row
  alignas(64) float m[BM], alpha[BM];
  bool nan[BM];                        // the row saw a NaN score among its visible keys: its output is NaN
};

template <int D, int64_t BN>
void block(Tiles& T, Work& w, const uint16_t* Qh, const uint32_t* Kp, const uint16_t* Vp, uint16_t* Oh,
           int64_t q0, int64_t nq, int64_t SK, bool causal, float qscale) {
  constexpr int64_t KS = D / 32;   // k-steps of Q K^T
  // the query rows, zero-padded to BM (padding rows compute garbage-free zeros and are never written)
  for (int64_t r = 0; r < BM; ++r)
    for (int64_t c = 0; c < D; c += 32)
      _mm512_store_si512(w.q + r * D + c, r < nq ? _mm512_loadu_si512(Qh + (q0 + r) * D + c) : _mm512_setzero_si512());
  std::fill(w.o, w.o + BM * D, 0.0f);
  std::fill(w.m, w.m + BM, -INFINITY);
  std::fill(w.l, w.l + BM * 16, 0.0f);
  std::fill(w.nan, w.nan + BM, false);
  const int64_t kend = causal ? std::min(SK, q0 + nq) : SK;   // keys past the last query's diagonal: skipped
  for (int64_t j0 = 0; j0 < kend; j0 += BN) {
    const int64_t halves = std::min<int64_t>(BN / 32, (kend - j0 + 31) / 32);   // 32-key parts holding visible keys
    // S = Qb Kb^T, 32 x 32 per half
    for (int64_t hf = 0; hf < halves; ++hf) {
      T.zero<0>(); T.zero<1>(); T.zero<2>(); T.zero<3>();
      const uint32_t* kb = Kp + ((j0 + 32 * hf) / 16) * KS * 256;   // two 16-key blocks: kb, kb + KS * 256
      for (int64_t ks = 0; ks < KS; ++ks) {
        T.load<4>(w.q + ks * 32, D * 2);
        T.load<5>(w.q + 16 * D + ks * 32, D * 2);
        T.load<6>(kb + ks * 256, 64);
        T.load<7>(kb + (KS + ks) * 256, 64);
        T.dpbf16<0, 4, 6>(); T.dpbf16<1, 4, 7>(); T.dpbf16<2, 5, 6>(); T.dpbf16<3, 5, 7>();
      }
      float* s = w.s + 32 * hf;
      T.store<0>(s, BN * 4); T.store<1>(s + 16, BN * 4);
      T.store<2>(s + 16 * BN, BN * 4); T.store<3>(s + 16 * BN + 16, BN * 4);
    }
    // online softmax on the valid rows; columns past the row's last visible key -> p = 0. Per 16 scores: ~13
    // vector operations (scale, max, subtract, exp2, sum, half a vcvtne2ps2bf16); the row sum l stays a vector.
    const int64_t ncols = halves * 32;
    const __m512 vscale = _mm512_set1_ps(qscale);
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t vis = std::min(causal ? std::min(SK, q0 + r + 1) : SK, j0 + ncols) - j0;   // may be <= 0
      float* s = w.s + r * BN;
      // mx ignores NaN scores (vmaxps keeps its second operand, mx, when x is NaN); `nan` remembers them
      __m512 mx = _mm512_set1_ps(-INFINITY);
      __mmask16 nan = 0;
      if (vis >= ncols) {   // all visible: no masks (every block but the diagonal and the last)
        for (int64_t c = 0; c < ncols; c += 16) {
          const __m512 x = _mm512_mul_ps(_mm512_load_ps(s + c), vscale);
          _mm512_store_ps(s + c, x);
          mx = _mm512_max_ps(x, mx);
          nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        }
      } else {
        for (int64_t c = 0; c < ncols; c += 16) {
          const int64_t n = std::clamp<int64_t>(vis - c, 0, 16);
          const __mmask16 live = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
          const __m512 x = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), live, _mm512_load_ps(s + c), vscale);
          _mm512_store_ps(s + c, x);
          mx = _mm512_max_ps(x, mx);
          nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        }
      }
      w.nan[r] = w.nan[r] || nan != 0;
      const float m_old = w.m[r], m_new = std::max(m_old, _mm512_reduce_max_ps(mx));
      if (m_new == -INFINITY) {   // nothing visible yet (cannot happen top-left causal, kept for safety)
        w.alpha[r] = 1.0f;
        for (int64_t c = 0; c < ncols; c += 16)
          _mm256_store_si256((__m256i*)(w.p + r * BN + c), _mm256_setzero_si256());
        continue;
      }
      const float alpha = m_old == m_new ? 1.0f : std::exp2(m_old - m_new);
      const __m512 vm = _mm512_set1_ps(m_new);
      __m512 sum = _mm512_mul_ps(_mm512_load_ps(w.l + 16 * r), _mm512_set1_ps(alpha));
      for (int64_t c = 0; c < ncols; c += 32) {
        const __m512 p0 = exp2_neg(_mm512_sub_ps(_mm512_load_ps(s + c), vm));
        const __m512 p1 = exp2_neg(_mm512_sub_ps(_mm512_load_ps(s + c + 16), vm));
        _mm512_store_si512(w.p + r * BN + c, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));   // 32 bf16, nearest even
        sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
      }
      _mm512_store_ps(w.l + 16 * r, sum);
      w.m[r] = m_new;
      w.alpha[r] = alpha;
    }
    // O = O * alpha + P Vb (rows whose maximum did not move keep alpha = 1: no pass over them)
    if (j0 > 0)
      for (int64_t r = 0; r < nq; ++r) {
        if (w.alpha[r] == 1.0f) continue;
        const __m512 a = _mm512_set1_ps(w.alpha[r]);
        for (int64_t c = 0; c < D; c += 16)
          _mm512_store_ps(w.o + r * D + c, _mm512_mul_ps(_mm512_load_ps(w.o + r * D + c), a));
      }
    const uint16_t* vb = Vp + (j0 / 32) * (D / 16) * 512;
    for (int64_t dc = 0; dc < D; dc += 32) {
      float* o = w.o + dc;
      T.load<0>(o, D * 4); T.load<1>(o + 16, D * 4);
      T.load<2>(o + 16 * D, D * 4); T.load<3>(o + 16 * D + 16, D * 4);
      for (int64_t hf = 0; hf < halves; ++hf) {
        T.load<4>(w.p + hf * 32, BN * 2);
        T.load<5>(w.p + 16 * BN + hf * 32, BN * 2);
        const uint16_t* v = vb + (hf * (D / 16) + dc / 16) * 512;
        T.load<6>(v, 64);
        T.load<7>(v + 512, 64);
        T.dpbf16<0, 4, 6>(); T.dpbf16<1, 4, 7>(); T.dpbf16<2, 5, 6>(); T.dpbf16<3, 5, 7>();
      }
      T.store<0>(o, D * 4); T.store<1>(o + 16, D * 4);
      T.store<2>(o + 16 * D, D * 4); T.store<3>(o + 16 * D + 16, D * 4);
    }
  }
  for (int64_t r = 0; r < nq; ++r) {
    const __m512 inv = w.nan[r] ? _mm512_set1_ps(NAN)
                                : _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(w.l + 16 * r)));
    for (int64_t c = 0; c < D; c += 16)
      _mm256_storeu_si256((__m256i*)(Oh + (q0 + r) * D + c),
                          kb::bf16_round16(_mm512_mul_ps(_mm512_load_ps(w.o + r * D + c), inv)));
  }
}

}  // namespace

int attention_fwd_bf16(const kb::AttnTileArgs& a) {
  const int64_t B = a.B, H = a.H, HKV = a.HKV, SQ = a.SQ, SK = a.SK, D = a.D;
  if (B == 0 || SQ == 0) return 0;
  const int64_t SKp = (SK + BN_MAX - 1) / BN_MAX * BN_MAX, group = H / HKV;
  const int64_t per_head = SKp * D;   // bf16 elements of one packed K (and of one packed V)
  kb::Scratch kpack(size_t(B * HKV * per_head) * 2), vpack(size_t(B * HKV * per_head) * 2);
  if (!kpack.p || !vpack.p) return kb::set_error(kb::E_NOMEM, "attention_fwd_amx: out of memory");
  uint32_t* Kp = kpack.as<uint32_t>();
  uint16_t* Vp = vpack.as<uint16_t>();
  const int64_t qblocks = (SQ + BM - 1) / BM, tasks = B * H * qblocks;
  const float qscale = a.scale * 1.4426950408889634f;   // exp(x * scale) = exp2(x * scale * log2(e))
  const int nthreads = kb::threads_for(a.threads, B * H * SQ * SK * D, int64_t(1) << 20);
  int err = 0;
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * HKV; ++bh) {
      pack_k(a.k + bh * SK * D, SK, SKp, D, Kp + bh * per_head / 2);
      pack_v(a.v + bh * SK * D, SK, SKp, D, Vp + bh * per_head);
    }
    kb::Scratch wbuf(sizeof(Work));
    Work* w = wbuf.as<Work>();
    if (w) std::memset(w->p, 0, sizeof w->p);   // rows past a tail block's queries: finite, never written out
    if (!w) {
#pragma omp atomic write
      err = kb::E_NOMEM;
    }
    Tiles T;
    kb_tiles::TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.set(t, 16, 64);
    T.configure(cfg);   // per thread
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      if (!w) continue;
      // causal: the last query blocks see the most keys -- start them first
      const int64_t qb = a.causal ? qblocks - 1 - task % qblocks : task % qblocks, bh = task / qblocks;
      const int64_t b = bh / H, h = bh % H, kvh = b * HKV + h / group;
      const int64_t q0 = qb * BM, nq = std::min(BM, SQ - q0);
      const uint16_t* Qh = a.q + bh * SQ * D;
      uint16_t* Oh = a.o + bh * SQ * D;
      if (D == 64)
        block<64, 128>(T, *w, Qh, Kp + kvh * per_head / 2, Vp + kvh * per_head, Oh, q0, nq, SK, a.causal, qscale);
      else
        block<128, 64>(T, *w, Qh, Kp + kvh * per_head / 2, Vp + kvh * per_head, Oh, q0, nq, SK, a.causal, qscale);
    }
    T.release();
  }
  return err ? kb::set_error(err, "attention_fwd_amx: out of memory") : 0;
}

}  // namespace KB_TNS

#else  // entry point, baseline x86-64

// out = softmax(q k^T * scale, causal top-left) v for bf16 q, k, v, out; q, out [B, H, SQ, D]; k, v [B, HKV, SK,
// D]; contiguous; D = 64 or 128. AMX tiles where the CPU has them (kb_cpp_isa() == 3), else the AVX512-BF16
// tile model; E_ISA on CPUs with neither (kb_cpp_tile_backend() says which runs).
KB_API int kb_cpp_attention_fwd_amx(const void* q, const void* k, const void* v, void* o, int64_t B, int64_t H,
                                    int64_t HKV, int64_t SQ, int64_t SK, int64_t D, int causal, float scale,
                                    int threads) {
  if (!q || !k || !v || !o || B < 0 || H < 1 || HKV < 1 || H % HKV != 0 || SQ < 0 || SK < 1 ||
      !(scale > 0) || !std::isfinite(scale))
    return kb::set_error(kb::E_ARG, "attention_fwd_amx: bad arguments (B=%lld H=%lld HKV=%lld SQ=%lld SK=%lld)",
                         (long long)B, (long long)H, (long long)HKV, (long long)SQ, (long long)SK);
  if (D != 64 && D != 128)
    return kb::set_error(kb::E_ARG, "attention_fwd_amx: head dim %lld not supported (64 or 128)", (long long)D);
  kb::AttnTileArgs a{static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k),
                     static_cast<const uint16_t*>(v), static_cast<uint16_t*>(o), B, H, HKV, SQ, SK, D, causal,
                     scale, threads};
  switch (kb::tile_backend()) {
    case kb::TILES_AMX: return kb_amx::attention_fwd_bf16(a);
    case kb::TILES_ZMM: return kb_zbf16::attention_fwd_bf16(a);
    default: return kb::set_error(kb::E_ISA, "attention_fwd_amx: the CPU has neither AMX nor AVX512-BF16");
  }
}
#endif
