// decode_paged_dp.cpp -- v2 of the C++ paged decode attention (kernels/cpp/decode_paged.cpp is v1, variant `cpp_v1`,
// and holds the argument checks): the same units (sequence, kv head, chunk of pages), split-K merge and online
// softmax (decode_sched.h), with the arithmetic on dot-product instructions that take the cache's 16-bit (or 8-bit,
// widened) values as they are, so no page is ever converted to an fp32 copy. For AVX512-BF16 CPUs (AMD Zen 4,
// Intel Cooper Lake and later). Two paths: the dot-product path takes bf16 q with bf16 KV, and bf16 or fp16 q with
// int8 KV, head dims that are multiples of 32; the fp32 path (2026-12-01) takes every other float cache (fp32, fp16,
// or bf16 with an fp32/fp16 q or d % 32 == 16) with any q: KV rows widened to fp32 in registers (vcvtph2ps, a shift,
// or as they are) into fp32 FMAs, the same steps, reductions and prefetch (v1 the rest: fp8 KV, int8 KV with fp32 q).
//
// Why (README's decode section): v1 converted each page's K and V rows to fp32 through L1 (load, widen, store,
// reload), took one horizontal sum per (query row, key) and one FMA per element and row: ~3,000 instructions per
// 16-token bf16 page of one kv head (8 KiB at d 128), 9.4 GB/s on cached data; from memory 4-5.5 GB/s per core, its
// one-page-ahead L1 prefetch the limit; and int8 KV (half the bytes, the same instructions) only 1.05-1.6x faster.
// Per 16 tokens (G = 4 query rows, d = 128), v2:
//   QK^T, key-outer: each key row loaded once (4 zmm) for the rows of its group, q's slices held in registers;
//     bf16 q x bf16 k on vdpbf16ps (a bf16 pair per lane, fp32 accumulate: exact products); int8 k widened to int16
//     (vpmovsxbw from memory) against q quantized per row to int16 (step max|q| / 32767: error <= 2^-16 of max|q|,
//     under a bf16/fp16 q's own rounding) on vpdpwssd (int32, exact). 4 rows x 4 keys reduced by one shuffle network
//     (fold4 + transpose_add4: ~10 instructions per key instead of 4 horizontal sums of ~9), in int32 for int8.
//   P V, token pairs: rows j and j+1 of V interleaved in registers (bf16: vpermt2w, 2 per 32 columns; int8 since
//     2026-12-01: vpunpck{l,h}bw of the two 32-byte rows then the widening, the accumulators left in the unpack's
//     column order and put back once per unit) into the pair layout the dot products want; bf16 V against P rounded
//     to bf16 pairs (vdpbf16ps); int8 V widened to int16 against P
//     in int16 (p * 32767 * vscale / the step's largest vscale, p <= 1: error <= 2^-16) on vpdpwssd, the step's int32
//     sums scaled into the fp32 accumulator once per step. 8 query rows x 32 columns per register block.
//   Online softmax steps of 32 tokens (two 16-token pages; whole pages, up to max(32, block size) tokens) over the
//     step's scattered row pointers: the per-step costs (max and sum reductions, the accumulators' loads and stores,
//     int32 -> fp32) are paid once per 32 tokens. 16-token steps: int8/bf16 KV 1.41-1.60x; 32: 1.55-2.02x. int8 KV
//     (2026-12-01): steps of 64 tokens and the page 4 ahead prefetched (KvI8::STEP, PD: the bytes of bf16's 32 / 2).
//   int8 KV's arithmetic (2026-12-01, b4 ctx1024 int8 in cache, one thread, temporary builds): QK 42%, PV 36%, the
//     rest (softmax, the step's row pointers, q's quantization) 22%; QK and PV run at ~1.4 cycles per vpdpwssd, the
//     dot-product port's rate: the same count of 16-bit dot products as bf16 (32 multiply-adds each), so int8 KV
//     cannot do its arithmetic faster than bf16 KV without 8-bit dot products (vpdpbusd, 64 per instruction); the
//     widening costs 3% (a build without it), the vpermt2w pairs 6% (replaced by the unpack above). This version:
//     int8 in cache 1.12x the previous (0.136 against 0.153 ms; 1.06x -> 0.94x bf16 KV's time); caches evicted
//     (b8 ctx2048 / 8192, rounds in shuffled order: a row's place in an unshuffled round moved times by 6-10%)
//     1.03-1.10x, int8 / bf16 KV 1.60-1.63x (ctx2048) and 1.76-1.82x (ctx8192) against the previous 1.54-1.57x
//     and 1.62-1.68x in the same runs (README's decode section: the run of record, load 4.4-4.6).
//   The page PD = 2 ahead is prefetched into L2 (T1): one page ahead into L1 (v1's T0) left v2 at 5.0-5.3 GB/s at b8
//     ctx8192, L2 at 1-4 pages ahead 8.4-9.5 GB/s (one thread, same run). DRAM gives 22-24 GB/s to one core here
//     (a sequential read of as many bytes, scripts/decode_ratio.py's `read` row).
//   What bounds it (2026-12-01, b8 ctx8192 bf16 KV, one thread, CPU time, temporary builds of this file; the
//     figures are the same run's): the arithmetic alone (every step's rows pointed at the unit's first page, so
//     in cache) 2.2 ms = 30 GB/s; the page touches alone (the same rows in the same order, the same prefetches,
//     one load per 64-byte line, no arithmetic) 4.8 ms = 14 GB/s, against 22-24 GB/s for a sequential read: the
//     random pages cost 40% of the bandwidth by themselves (a standalone model of the same access order gave the
//     same; walking all kv heads of a page together, 8 KiB contiguous per page, was slower: 11 against 15 GB/s;
//     prefetching every other line for the adjacent-line prefetcher to fill in: 2x slower). The whole kernel took
//     8.5 ms, more than the sum of the two: its burst of 128-256 prefetches per step (the page two ahead, all at
//     once) filled the core's miss buffers and stalled the arithmetic behind them. Now each line the step loads
//     (a K row's line in QK, a V row's in PV) issues the prefetch of the same line of the page two ahead:
//     6.3-7.1 ms, the sum of the two (1.16x at ctx8192, 1.37x at ctx2048 in the run of record; int8 KV 1.06x and
//     1.19x: its arithmetic, ~the same instructions on half the bytes, is the larger half). The two do not overlap
//     (the miss buffers bound both), so one core's ceiling for this access pattern is ~14 GB/s, 60% of its read.
//     Prefetch distances 2-6 pages, T0 / T2 hints, a second T0 prefetch one page ahead: no better. Blocks of 32 or
//     64 tokens instead of 16: bf16 KV the same (8.7-9.0 GB/s), int8 KV 1.1-1.2x (its longer softmax steps).
// Simulated and not built: P in u8 on vpdpbusd for int8 V (half PV's dot products). P per (row, step) on 255 levels
// of the step's max loses up to max/510 per weight where bf16 P loses p/512. A float64 model of the online softmax
// (steps of 64, the output's error against exact attention over the bf16 bound, worst of 20 draws of q, k, v ~ N(0, 1),
// d 128, contexts 5 / 33 / 129 / 2048): u8 P 0.41 / 0.50 / 0.33 / 0.08 of the bound, and 0.81 / 1.30 / 1.44 / 0.45
// with one key dominant (k_0 = q / 2): it fails; bf16 P 0.17 / 0.11 / 0.09 / 0.02 (0.04-0.06 dominant), int16 P (this
// file's int8 path) <= 0.022. So int8 KV keeps 16-bit P and q, and the same dot-product count as bf16 KV.
// Tried and dropped: int8 q on vpdpbusd (u8 x s8, k + 128, twice vpdpwssd's rate) for bf16 q with int8 KV cut the
// cached-data time by 12% but failed the bf16 tolerance by 2x at contexts of 2-33 keys (ragged b8, 6 seeds): q's
// int8 step (max|q| / 127) moves the scores by ~1e-2; the suite's test cases now include such a short context.
// Accuracy (worst error / the suite's bound, 6 seeds, ragged b8 ctx 2-129): bf16 KV 0.28 (v1 0.15: P rounded to
// bf16, <= 2^-9 relative per weight), int8 KV with bf16 q 0.15 and fp16 q 0.13 (v1 0.15 / 0.13).
// Non-finite q is not handled on the int8 path (its int16 quantization): decode q comes from a finite projection.
//
// Bytes and FLOPs as v1 (suites/decode.py). Measured with the burst prefetch (AMD EPYC Zen 4, one thread, CPU time,
// min of 10-15 round-robin calls, scripts/decode_ratio.py, b8 h8/2 d128 bf16 q, 2026-12-01, load average ~6 on 2
// cores shared with other engineers; v1 in the same runs; the interleaved prefetch's run of record is README's):
//   bf16 KV  ctx2048 2.0 ms (8.4 GB/s; v1 3.0 ms)    ctx8192 6.8-8.3 ms (8.1-9.9 GB/s; v1 14.8-16.3 ms)
//   int8 KV  ctx2048 1.06-1.08 ms (7.8-8.0 GB/s)      ctx8192 4.0-4.4 ms (7.7-8.4 GB/s)
//   int8 / bf16 KV: 1.83-1.87x at ctx2048, 1.55-2.02x at ctx8192 (v1 1.05-1.63x, 1.11-1.19x); cached data (b1
//   ctx2048): bf16 KV 24 GB/s, 2.6x v1. README's decode section has the run of record.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "decode_paged.h"

#if defined(KB_ZBF16_IMPL)
#define KB_NS kb_zbf16
#include "simd.h"
#include "decode_sched.h"

#pragma GCC push_options
#pragma GCC target("avx512vnni,avx512bf16")

namespace kb_zbf16 {
namespace {
constexpr int RQ = 4;          // query rows per QK register block (4 rows x 4 keys per reduction)
constexpr int RB = 8;          // query rows per PV register block (x 32 columns: 16 accumulators)
constexpr float PQ = 32767.f;  // int8-KV path: p in int16 = round(p * 32767), p in [0, 1]
constexpr int PD = 2;          // prefetch distance in pages (bf16 / fp32 paths; int8 KV: KvI8::PD)
constexpr int STEP = 32;       // tokens per online-softmax step (2 pages of 16; int8 KV: KvI8::STEP)

struct BufsDp {                                                 // per thread, 64-byte aligned
  alignas(64) int16_t Q[kb::DEC_MAX_ROWS * kb::DEC_MAX_D];       // bf16 bits (bf16 KV) or int16 q (int8 KV)
  alignas(64) float Qf[kb::DEC_MAX_ROWS * kb::DEC_MAX_D];        // fp32 q (the fp32 path: fp32 / fp16 KV)
  alignas(64) float Acc[kb::DEC_MAX_ROWS * kb::DEC_MAX_D];
  alignas(64) float S[kb::DEC_MAX_ROWS * (kb::DEC_MAX_BS + 16)];
  alignas(64) int16_t P[kb::DEC_MAX_ROWS * (kb::DEC_MAX_BS + 48)];   // pairs: bf16 (bf16 KV) or int16 (int8 KV)
  float qs[kb::DEC_MAX_ROWS];                                    // per row: the scale of its scores
  float m[kb::DEC_MAX_ROWS], l[kb::DEC_MAX_ROWS];
};

// KV element formats: a 32-element slice as 32 16-bit lanes, and its dot product into 16 accumulator lanes
struct KvBf16 {
  using E = uint16_t;
  using Acc = __m512;
  static constexpr int STEP = kb_zbf16::STEP, PD = kb_zbf16::PD;
  static __m512i load32(const E* p) { return _mm512_loadu_si512(p); }
  static Acc zero() { return _mm512_setzero_ps(); }
  static Acc dp(Acc acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
  static __m512 to_f32(Acc a) { return a; }
};
struct KvI8 {
  using E = int8_t;
  using Acc = __m512i;
  // 64 tokens per step (4 pages of 16), the page 4 ahead prefetched: as many bytes per step and ahead as bf16's
  // 32 and 2 (an int8 row is half a bf16 row), half the per-step costs per token (2026-12-01: 1.05-1.08x cold
  // at b8 ctx2048/8192 against 32 and 2; 128 and 8: 0.97-1.04x; bf16 KV with 64/4 or 128/8: 0.86-0.96x)
  static constexpr int STEP = 64, PD = 4;
  static __m512i load32(const E* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)p)); }
  static Acc zero() { return _mm512_setzero_si512(); }
  static Acc dp(Acc acc, __m512i a, __m512i b) { return _mm512_dpwssd_epi32(acc, a, b); }
  static __m512 to_f32(Acc a) { return _mm512_cvtepi32_ps(a); }
};

// 4 accumulators (rows 0..3, one key) -> 128-bit lane r = 4 partial sums of row r
inline __m512 fold4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 s0 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 s1 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x88), _mm512_shuffle_f32x4(s0, s1, 0xDD));
}
// the same two steps on int32 sums (int8 KV: exact, one conversion per 4 keys instead of one per key and row)
inline __m512i fold4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i s0 = _mm512_add_epi32(_mm512_shuffle_i32x4(a0, a1, 0x44), _mm512_shuffle_i32x4(a0, a1, 0xEE));
  const __m512i s1 = _mm512_add_epi32(_mm512_shuffle_i32x4(a2, a3, 0x44), _mm512_shuffle_i32x4(a2, a3, 0xEE));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(s0, s1, 0x88), _mm512_shuffle_i32x4(s0, s1, 0xDD));
}
inline __m512i transpose_add4(__m512i t0, __m512i t1, __m512i t2, __m512i t3) {
  const __m512i u01 = _mm512_add_epi32(_mm512_unpacklo_epi32(t0, t1), _mm512_unpackhi_epi32(t0, t1));
  const __m512i u23 = _mm512_add_epi32(_mm512_unpacklo_epi32(t2, t3), _mm512_unpackhi_epi32(t2, t3));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(u01, u23), _mm512_unpackhi_epi64(u01, u23));
}

// 4 keys' fold4 results -> 128-bit lane r = the scores of row r for keys 0..3
inline __m512 transpose_add4(__m512 t0, __m512 t1, __m512 t2, __m512 t3) {
  const __m512 u01 = _mm512_add_ps(_mm512_unpacklo_ps(t0, t1), _mm512_unpackhi_ps(t0, t1));   // x02 y02 x13 y13
  const __m512 u23 = _mm512_add_ps(_mm512_unpacklo_ps(t2, t3), _mm512_unpackhi_ps(t2, t3));   // z02 w02 z13 w13
  const __m512 lo = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u01), _mm512_castps_pd(u23)));
  const __m512 hi = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u01), _mm512_castps_pd(u23)));
  return _mm512_add_ps(lo, hi);
}

// pair interleave of two 32-element rows a, b: (a[c], b[c]) for c = 0..15 (lo) and 16..31 (hi)
alignas(64) const int16_t PAIR_LO[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                         8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
alignas(64) const int16_t PAIR_HI[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                         24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};

// The rows of the pages PD ahead, one K and one V row per token of the current step (k[j], v[j] for j < n): the
// step's loads issue their prefetches one 64-byte line at a time, interleaved with the arithmetic (see unit()).
struct Ahead {
  const char* const* k;
  const char* const* v;
  int n;
};
// Append to krow/vrow (n_nx rows so far) the rows of the page PD ahead of `page`, when that page starts before
// t1 (the end of the unit's range): its block from the table, up to BS rows at a stride of rs elements, from column
// `col` (the kv head's offset). Both step loops (the dp path and the fp32 path) collect them here.
template <int PDIST, class E>
static inline void collect_ahead(const int32_t* table, int64_t page, int BS, int64_t t1, int64_t rs, int64_t col,
                                 const E* Kc, const E* Vc, const char** krow, const char** vrow, int& n_nx) {
  const int64_t pp0 = (page + PDIST) * BS;
  if (pp0 >= t1) return;
  const int64_t nxt = (int64_t(table[page + PDIST]) * BS) * rs + col;
  const int nn = int(std::min<int64_t>(BS, t1 - pp0));
  for (int j = 0; j < nn && n_nx < kb::DEC_MAX_BS; ++j, ++n_nx) {
    krow[n_nx] = reinterpret_cast<const char*>(Kc + nxt + j * rs);
    vrow[n_nx] = reinterpret_cast<const char*>(Vc + nxt + j * rs);
  }
}
// prefetch into L2 the line at byte offset `off` of row j of the pages ahead, where a 64-byte line starts there.
// In asm: GCC 12 at -O3 deleted every _mm_prefetch / __builtin_prefetch of these addresses (0 prefetcht1 in the
// object; the kernel ran as slowly as with no prefetch at all), which `objdump -d | grep -c prefetcht1` shows.
inline void ahead(const char* const* rows, int n, int j, int off) {
  if (j < n && off % 64 == 0) asm volatile("prefetcht1 %0" : : "m"(*(rows[j] + off)));
}

// S[i][j] = Q[i] . K[j] for NR rows and keys j < nk, key-outer: each key row loaded once for the NR rows; DC = D / 32
// known at compile time (d 64, 128) keeps the NR x DC slices of q in registers (<= 16 zmm), else DC = 0 (reloaded).
// Each 64-byte line of key j loaded also prefetches the same line of key j of the pages ahead (`nx`).
template <class F, int NR, int DC>
inline void qk(const typename F::E* const* K, int nk, int D, const int16_t* Q, float* S, int SP, const Ahead& nx) {
  constexpr int QC = DC > 0 ? DC : 1;
  __m512i qv[NR][QC];
  if constexpr (DC > 0)
    for (int i = 0; i < NR; ++i)
      for (int c = 0; c < DC; ++c) qv[i][c] = _mm512_loadu_si512(Q + i * D + 32 * c);
  const int nc = DC > 0 ? DC : D / 32;
  for (int jb = 0; jb < nk; jb += 4) {
    typename F::Acc t[4];
#pragma GCC unroll 4
    for (int jj = 0; jj < 4; ++jj) {
      typename F::Acc acc[4];
      for (int i = 0; i < 4; ++i) acc[i] = F::zero();
      if (jb + jj < nk) {
        const typename F::E* kr = K[jb + jj];
#pragma GCC unroll 8
        for (int c = 0; c < nc; ++c) {
          const __m512i kv = F::load32(kr + 32 * c);
          ahead(nx.k, nx.n, jb + jj, int(32 * c * sizeof(typename F::E)));
#pragma GCC unroll 4
          for (int i = 0; i < NR; ++i)
            acc[i] = F::dp(acc[i], DC > 0 ? qv[i][DC > 0 ? c : 0] : _mm512_loadu_si512(Q + i * D + 32 * c), kv);
        }
      }
      t[jj] = fold4(acc[0], acc[1], acc[2], acc[3]);
    }
    alignas(64) float w[16];
    _mm512_store_ps(w, F::to_f32(transpose_add4(t[0], t[1], t[2], t[3])));
    for (int i = 0; i < NR; ++i) std::memcpy(S + i * SP + jb, w + 4 * i, 16);
  }
}

template <class F, int DC>
inline void qk_rows(int nr, const typename F::E* const* K, int nk, int D, const int16_t* Q, float* S, int SP,
                    const Ahead& nx) {
  switch (nr) {
    case 1: qk<F, 1, DC>(K, nk, D, Q, S, SP, nx); break;
    case 2: qk<F, 2, DC>(K, nk, D, Q, S, SP, nx); break;
    case 3: qk<F, 3, DC>(K, nk, D, Q, S, SP, nx); break;
    default: qk<F, 4, DC>(K, nk, D, Q, S, SP, nx); break;
  }
}

// A[i][:] += sum_j P[i][j] V[j][:] for NR rows over tokens j < nv (pairs; a row past n reads as 0), 32 columns
// at a time: NR x 2 accumulators, V rows j and j+1 interleaved into pairs (2 vpermt2w per 32 columns); each 64-byte
// line of V rows j, j+1 loaded prefetches the same lines of the pages ahead (`nx`)
template <class F, int NR>
inline void pv(const typename F::E* const* V, int n, int nv, int D, const int16_t* P, int PP, float* A, float vscale,
               const Ahead& nx) {
  constexpr bool INT = std::is_same_v<F, KvI8>;
  const __m512i ilo = _mm512_load_si512(PAIR_LO), ihi = _mm512_load_si512(PAIR_HI);
  for (int c = 0; c < D; c += 32) {
    typename F::Acc lo[NR], hi[NR];
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      if constexpr (INT) {
        lo[i] = F::zero();
        hi[i] = F::zero();
      } else {
        lo[i] = load(A + i * D + c);
        hi[i] = load(A + i * D + c + 16);
      }
    }
    for (int j = 0; j < nv; j += 2) {
      __m512i plo, phi;
      if constexpr (INT) {
        // int8: rows j, j+1 interleaved bytewise inside each 128-bit lane (vpunpck{l,h}bw, ymm), then widened: the
        // pairs of columns {0-7, 16-23} (plo) and {8-15, 24-31} (phi) of the block. The accumulators keep that
        // column order for the whole unit (unpermute_i8 puts it back once) instead of 2 vpermt2w per pair here.
        const __m256i va = _mm256_loadu_si256((const __m256i*)(V[j] + c));
        const __m256i vb = j + 1 < n ? _mm256_loadu_si256((const __m256i*)(V[j + 1] + c)) : _mm256_setzero_si256();
        plo = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(va, vb));
        phi = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(va, vb));
      } else {
        const __m512i va = F::load32(V[j] + c);
        const __m512i vb = j + 1 < n ? F::load32(V[j + 1] + c) : _mm512_setzero_si512();
        plo = _mm512_permutex2var_epi16(va, ilo, vb);
        phi = _mm512_permutex2var_epi16(va, ihi, vb);
      }
      ahead(nx.v, nx.n, j, int(c * sizeof(typename F::E)));
      ahead(nx.v, nx.n, j + 1, int(c * sizeof(typename F::E)));
#pragma GCC unroll 8
      for (int i = 0; i < NR; ++i) {
        int32_t pair;
        std::memcpy(&pair, P + i * PP + j, 4);
        const __m512i pp = _mm512_set1_epi32(pair);
        lo[i] = F::dp(lo[i], pp, plo);
        hi[i] = F::dp(hi[i], pp, phi);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      float* acc = A + i * D + c;
      if constexpr (INT) {
        store(acc, fma(F::to_f32(lo[i]), set1(vscale), load(acc)));
        store(acc + 16, fma(F::to_f32(hi[i]), set1(vscale), load(acc + 16)));
      } else {
        store(acc, lo[i]);
        store(acc + 16, hi[i]);
      }
    }
  }
}

// int8 KV's PV leaves each 32-column block of Acc as columns {0-7, 16-23, 8-15, 24-31} (pv's unpack order): back
// to 0..31, once per unit (R x D / 32 x 2 shuffles)
inline void unpermute_i8(float* A, int R, int D) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < D; c += 32) {
      float* x = A + r * D + c;
      const __m512 lo = load(x), hi = load(x + 16);
      store(x, _mm512_shuffle_f32x4(lo, hi, 0x44));
      store(x + 16, _mm512_shuffle_f32x4(lo, hi, 0xEE));
    }
}

// One unit: rows r = s * G + g (query s, head hk * G + g) against tokens [t0, t1) of sequence b, kv head hk.
template <class T, class F>
void unit(const kb::DecodeArgs& a, int64_t b, int64_t hk, int64_t t0, int64_t t1, BufsDp& bf, float* part, T* O) {
  using E = typename F::E;
  constexpr bool INT = std::is_same_v<F, KvI8>;
  const int D = int(a.D), BS = int(a.BS);
  const int64_t G = a.H / a.HKV, SQ = a.SQ, L = a.lens[b];
  const int R = int(G * SQ);
  const T* Q = static_cast<const T*>(a.q);
  const float qscale = a.scale * LOG2E;
  for (int r = 0; r < R; ++r) {                      // q rows: bf16 bits as they are, or int16 per row
    const T* src = Q + kb::dec_row(a, b, hk, r);
    int16_t* dst = bf.Q + r * D;
    if constexpr (!INT) {
      std::memcpy(dst, src, size_t(D) * 2);
      bf.qs[r] = qscale;
    } else {
      vf mx = zero();
      for (int c = 0; c < D; c += W) mx = max(mx, _mm512_abs_ps(load(src + c)));
      const float amax = hmax(mx), step = amax > 0.f ? amax / 32767.f : 1.f;
      const vf inv = set1(1.f / step);
      for (int c = 0; c < D; c += W)
        _mm256_storeu_si256((__m256i*)(dst + c), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(mul(load(src + c), inv))));
      bf.qs[r] = qscale * step;
    }
    bf.m[r] = -INFINITY;
    bf.l[r] = 0.f;
  }
  std::fill(bf.Acc, bf.Acc + R * D, 0.f);
  const E* Kc = static_cast<const E*>(a.k);
  const E* Vc = static_cast<const E*>(a.v);
  const int64_t rs = a.HKV * a.D;                       // row stride inside a block
  const int32_t* table = a.tables + b * a.MAXB;
  // a step: whole pages (or the unit's ends of pages) while they fit in max(STEP, BS) tokens -- the per-step costs
  // (softmax reductions, the accumulators' loads and stores, int32 -> fp32) are paid once per 32 tokens (int8 KV 64)
  const int SMAX = std::max(F::STEP, BS);
  const int SP = (SMAX + W - 1) / W * W + W;            // S row pitch (floats)
  const int PP = SP + 32;                               // P row pitch (16-bit elements; even)
  const E* krow[kb::DEC_MAX_BS];                        // the step's key and value rows (pages are scattered)
  const E* vrow[kb::DEC_MAX_BS];
  alignas(64) float ksv[kb::DEC_MAX_BS + 16];           // per token: its page's K scale, V scale / the step's max
  alignas(64) float vsv[kb::DEC_MAX_BS + 16];
  const char* krow_nx[kb::DEC_MAX_BS];                  // the rows of the pages PD ahead, token for token
  const char* vrow_nx[kb::DEC_MAX_BS];
  for (int64_t p0 = t0; p0 < t1;) {
    int n = 0, n_nx = 0;
    float vmaxsc = 0.f;
    for (int64_t p = p0; p < t1;) {
      const int64_t page = p / BS, blk = table[page];
      const int64_t j0 = p - page * BS;
      const int np = int(std::min<int64_t>(t1, (page + 1) * BS) - p);
      if (n > 0 && n + np > SMAX) break;
      const E* kb0 = Kc + (blk * BS + j0) * rs + hk * a.D;
      const E* vb0 = Vc + (blk * BS + j0) * rs + hk * a.D;
      const float ksc = a.ks ? a.ks[blk * a.ks_bstride + hk] : 1.f;
      const float vsc = a.vs ? a.vs[blk * a.vs_bstride + hk] : 1.f;
      for (int j = 0; j < np; ++j) {
        krow[n + j] = kb0 + j * rs;
        vrow[n + j] = vb0 + j * rs;
        ksv[n + j] = ksc;
        vsv[n + j] = vsc;
      }
      vmaxsc = std::max(vmaxsc, vsc);
      // the page PD ahead is at a random block the hardware prefetcher cannot guess: its rows are prefetched into
      // L2 (T1), one 64-byte line next to each line this step loads (qk, pv), not in one burst here. A burst of
      // 128-256 prefetches per step (v2 until 2026-12-01) filled the core's miss buffers and stalled the
      // arithmetic behind them: at b8 ctx8192 bf16 KV the kernel took longer (8.5 ms) than the page touches alone
      // (4.8 ms, same order and prefetches, no arithmetic) plus the arithmetic alone on cached rows (2.2 ms);
      // interleaved: 6.3-7.0 ms (one thread, same runs; README's decode section).
      collect_ahead<F::PD>(table, page, BS, t1, rs, hk * a.D, Kc, Vc, krow_nx, vrow_nx, n_nx);
      n += np;
      p += np;
    }
    for (int j = n; j < (n + W - 1) / W * W; ++j) ksv[j] = vsv[j] = 0.f;   // whole vectors are read below
    if (!(vmaxsc > 0.f)) vmaxsc = 1.f;
    if constexpr (INT)                                  // P carries V scale / the step's max: one int32 sum per step
      for (int j = 0; j < n; j += W) store(vsv + j, mul(load(vsv + j), set1(PQ / vmaxsc)));
    // visible keys: row r sees tokens up to L - SQ + s, i.e. `vis_r` of this step's n; the last row sees the most
    const int vmax = int(std::clamp<int64_t>(L - p0, 0, n));
    // S = Q K^T (raw dot products; scaled below): key-outer, 4 rows x 4 keys per reduction
    for (int r0 = 0; r0 < R; r0 += RQ) {
      float* S = bf.S + r0 * SP;
      const int16_t* Qr = bf.Q + r0 * D;
      const int nr = std::min(RQ, R - r0);
      const Ahead nx{krow_nx, vrow_nx, r0 == 0 ? n_nx : 0};     // K lines ahead: with the first row block's keys
      if (D == 128) qk_rows<F, 4>(nr, krow, vmax, D, Qr, S, SP, nx);
      else if (D == 64) qk_rows<F, 2>(nr, krow, vmax, D, Qr, S, SP, nx);
      else qk_rows<F, 0>(nr, krow, vmax, D, Qr, S, SP, nx);
    }
    // online softmax over the step per row; P (bf16 or int16, pairs) replaces S; P is 0 past the row's visible keys
    int vis_blk[kb::DEC_MAX_ROWS];
    for (int r = 0; r < R; ++r) {
      const int64_t s = r / G;
      const int vis = int(std::clamp<int64_t>(L - SQ + s + 1 - p0, 0, n));
      vis_blk[r] = vis;
      float* Sr = bf.S + r * SP;
      int16_t* Pr = bf.P + r * PP;
      if (vis == 0) {
        for (int j = 0; j < n; j += W) _mm256_storeu_si256((__m256i*)(Pr + j), _mm256_setzero_si256());
        continue;
      }
      const vf sc = set1(bf.qs[r]);
      vf mxv = set1(-INFINITY);
      for (int j = 0; j < vis; j += W) {
        const __mmask16 mk = tail(vis - j);
        vf x = mul(_mm512_maskz_loadu_ps(mk, Sr + j), sc);
        if constexpr (INT) x = mul(x, load(ksv + j));
        store(Sr + j, x);
        mxv = _mm512_mask_max_ps(mxv, mk, mxv, x);
      }
      const float mx = std::max(bf.m[r], hmax(mxv));
      const float alpha = std::exp2(bf.m[r] - mx);       // m = -inf at the start: alpha = 0 (Acc is 0 anyway)
      vf sumv = zero();
      for (int j = 0; j < n; j += W) {
        const vf pv = j < vis ? keep(exp2(sub(load(Sr + j), set1(mx))), vis - j) : zero();
        sumv = add(sumv, pv);
        if constexpr (INT)
          _mm256_storeu_si256((__m256i*)(Pr + j),
                              _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(mul(pv, load(vsv + j)))));
        else
          _mm256_storeu_si256((__m256i*)(Pr + j), (__m256i)_mm512_cvtneps_pbh(pv));
      }
      bf.m[r] = mx;
      bf.l[r] = bf.l[r] * alpha + hsum(sumv);
      if (alpha != 1.f) {
        float* acc = bf.Acc + r * D;
        for (int c = 0; c < D; c += W) store(acc + c, mul(load(acc + c), set1(alpha)));
      }
    }
    // Acc += P V over token pairs (j, j+1): V's two rows interleaved into pairs in registers
    const float vscale = INT ? vmaxsc / PQ : 1.f;
    for (int r0 = 0; r0 < R; r0 += RB) {
      const int nr = std::min(RB, R - r0);
      const Ahead nx{krow_nx, vrow_nx, r0 == 0 ? n_nx : 0};     // V lines ahead: with the first row block's rows
      int vb = 0;                                          // the most keys a row of this block sees
      for (int i = 0; i < nr; ++i) vb = std::max(vb, vis_blk[r0 + i]);
      float* A = bf.Acc + r0 * D;
      const int16_t* P = bf.P + r0 * PP;
      switch (nr) {
        case 1: pv<F, 1>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        case 2: pv<F, 2>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        case 3: pv<F, 3>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        case 4: pv<F, 4>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        case 5: pv<F, 5>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        case 6: pv<F, 6>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        case 7: pv<F, 7>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
        default: pv<F, 8>(vrow, n, vb, D, P, PP, A, vscale, nx); break;
      }
    }
    p0 += n;
  }
  if constexpr (INT) unpermute_i8(bf.Acc, R, D);
  write_unit(a, b, hk, R, D, bf, part, O);
}

// ---- the fp32 path: fp32, fp16 or bf16 KV with any q (bf16 KV with bf16 q and d % 32 == 0 takes vdpbf16ps above) --
// KV rows widened to fp32 in registers (vcvtph2ps / a shift for bf16 / as they are), fp32 FMAs against fp32 q and P:
// exact products, no page copied through L1 (v1's cost), the same key-outer QK with 4 rows x 4 keys per shuffle
// reduction, the same steps of 32 tokens and the same prefetch of the pages ahead as the dot-product path.

// S[i][j] = Q[i] . K[j] (fp32) for NR rows and keys j < nk, 16 columns per FMA
template <class E, int NR>
inline void qk_f32(const E* const* K, int nk, int D, const float* Q, float* S, int SP, const Ahead& nx) {
  for (int jb = 0; jb < nk; jb += 4) {
    __m512 t[4];
#pragma GCC unroll 4
    for (int jj = 0; jj < 4; ++jj) {
      __m512 acc[4] = {zero(), zero(), zero(), zero()};
      if (jb + jj < nk) {
        const E* kr = K[jb + jj];
        for (int c = 0; c < D; c += W) {
          const vf kv = load(kr + c);
          ahead(nx.k, nx.n, jb + jj, int(c * sizeof(E)));
#pragma GCC unroll 4
          for (int i = 0; i < NR; ++i) acc[i] = fma(load(Q + i * D + c), kv, acc[i]);
        }
      }
      t[jj] = fold4(acc[0], acc[1], acc[2], acc[3]);
    }
    alignas(64) float w[16];
    _mm512_store_ps(w, transpose_add4(t[0], t[1], t[2], t[3]));
    for (int i = 0; i < NR; ++i) std::memcpy(S + i * SP + jb, w + 4 * i, 16);
  }
}

// A[i][:] += sum_{j < nv} P[i][j] V[j][:] (fp32) for NR rows, 32 columns (16 at a ragged end) per register block
template <class E, int NR>
inline void pv_f32(const E* const* V, int nv, int D, const float* P, int PP, float* A, const Ahead& nx) {
  for (int c = 0; c < D; c += 2 * W) {
    const bool two = c + 2 * W <= D;                     // d % 32 == 16: the last block is one vector wide
    vf lo[NR], hi[NR];
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      lo[i] = load(A + i * D + c);
      hi[i] = two ? load(A + i * D + c + W) : zero();
    }
    for (int j = 0; j < nv; ++j) {
      const vf v0 = load(V[j] + c), v1 = two ? load(V[j] + c + W) : zero();
      ahead(nx.v, nx.n, j, int(c * sizeof(E)));
      ahead(nx.v, nx.n, j, int((c + W) * sizeof(E)));
#pragma GCC unroll 8
      for (int i = 0; i < NR; ++i) {
        const vf pp = set1(P[i * PP + j]);
        lo[i] = fma(pp, v0, lo[i]);
        hi[i] = fma(pp, v1, hi[i]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      store(A + i * D + c, lo[i]);
      if (two) store(A + i * D + c + W, hi[i]);
    }
  }
}

template <class T, class E>
void unit_f32(const kb::DecodeArgs& a, int64_t b, int64_t hk, int64_t t0, int64_t t1, BufsDp& bf, float* part,
              T* O) {
  const int D = int(a.D), BS = int(a.BS);
  const int64_t G = a.H / a.HKV, SQ = a.SQ, L = a.lens[b];
  const int R = int(G * SQ);
  const T* Q = static_cast<const T*>(a.q);
  for (int r = 0; r < R; ++r) {                      // q rows in fp32, pre-scaled by scale * log2(e)
    const T* src = Q + kb::dec_row(a, b, hk, r);
    const vf sc = set1(a.scale * LOG2E);
    for (int c = 0; c < D; c += W) store(bf.Qf + r * D + c, mul(load(src + c), sc));
    bf.m[r] = -INFINITY;
    bf.l[r] = 0.f;
  }
  std::fill(bf.Acc, bf.Acc + R * D, 0.f);
  const E* Kc = static_cast<const E*>(a.k);
  const E* Vc = static_cast<const E*>(a.v);
  const int64_t rs = a.HKV * a.D;
  const int32_t* table = a.tables + b * a.MAXB;
  const int SMAX = std::max(STEP, BS);
  const int SP = (SMAX + W - 1) / W * W + W;            // S row pitch (floats): P replaces S in place
  const E* krow[kb::DEC_MAX_BS];
  const E* vrow[kb::DEC_MAX_BS];
  const char* krow_nx[kb::DEC_MAX_BS];
  const char* vrow_nx[kb::DEC_MAX_BS];
  for (int64_t p0 = t0; p0 < t1;) {
    int n = 0, n_nx = 0;
    for (int64_t p = p0; p < t1;) {                     // the step's pages, and the rows of the pages PD ahead
      const int64_t page = p / BS, blk = table[page];
      const int64_t j0 = p - page * BS;
      const int np = int(std::min<int64_t>(t1, (page + 1) * BS) - p);
      if (n > 0 && n + np > SMAX) break;
      for (int j = 0; j < np; ++j) {
        krow[n + j] = Kc + (blk * BS + j0 + j) * rs + hk * a.D;
        vrow[n + j] = Vc + (blk * BS + j0 + j) * rs + hk * a.D;
      }
      collect_ahead<PD>(table, page, BS, t1, rs, hk * a.D, Kc, Vc, krow_nx, vrow_nx, n_nx);
      n += np;
      p += np;
    }
    const int vmax = int(std::clamp<int64_t>(L - p0, 0, n));
    for (int r0 = 0; r0 < R; r0 += RQ) {
      float* S = bf.S + r0 * SP;
      const float* Qr = bf.Qf + r0 * D;
      const Ahead nx{krow_nx, vrow_nx, r0 == 0 ? n_nx : 0};
      switch (std::min(RQ, R - r0)) {
        case 1: qk_f32<E, 1>(krow, vmax, D, Qr, S, SP, nx); break;
        case 2: qk_f32<E, 2>(krow, vmax, D, Qr, S, SP, nx); break;
        case 3: qk_f32<E, 3>(krow, vmax, D, Qr, S, SP, nx); break;
        default: qk_f32<E, 4>(krow, vmax, D, Qr, S, SP, nx); break;
      }
    }
    // online softmax over the step per row, P = 2^(s - m) in place of S; 0 past the row's visible keys
    int vis_blk[kb::DEC_MAX_ROWS];
    for (int r = 0; r < R; ++r) {
      const int64_t s = r / G;
      const int vis = int(std::clamp<int64_t>(L - SQ + s + 1 - p0, 0, n));
      vis_blk[r] = vis;
      float* Sr = bf.S + r * SP;
      if (vis == 0) {
        for (int j = 0; j < n; j += W) store(Sr + j, zero());
        continue;
      }
      vf mxv = set1(-INFINITY);
      for (int j = 0; j < vis; j += W) mxv = _mm512_mask_max_ps(mxv, tail(vis - j), mxv, load(Sr + j));
      const float mx = std::max(bf.m[r], hmax(mxv));
      const float alpha = std::exp2(bf.m[r] - mx);
      vf sumv = zero();
      for (int j = 0; j < n; j += W) {
        const vf pv = j < vis ? keep(exp2(sub(load(Sr + j), set1(mx))), vis - j) : zero();
        sumv = add(sumv, pv);
        store(Sr + j, pv);
      }
      bf.m[r] = mx;
      bf.l[r] = bf.l[r] * alpha + hsum(sumv);
      if (alpha != 1.f) {
        float* acc = bf.Acc + r * D;
        for (int c = 0; c < D; c += W) store(acc + c, mul(load(acc + c), set1(alpha)));
      }
    }
    for (int r0 = 0; r0 < R; r0 += RB) {
      const int nr = std::min(RB, R - r0);
      const Ahead nx{krow_nx, vrow_nx, r0 == 0 ? n_nx : 0};
      int vb = 0;                                          // the most keys a row of this block sees
      for (int i = 0; i < nr; ++i) vb = std::max(vb, vis_blk[r0 + i]);
      float* A = bf.Acc + r0 * D;
      const float* P = bf.S + r0 * SP;
      switch (nr) {
        case 1: pv_f32<E, 1>(vrow, vb, D, P, SP, A, nx); break;
        case 2: pv_f32<E, 2>(vrow, vb, D, P, SP, A, nx); break;
        case 3: pv_f32<E, 3>(vrow, vb, D, P, SP, A, nx); break;
        case 4: pv_f32<E, 4>(vrow, vb, D, P, SP, A, nx); break;
        case 5: pv_f32<E, 5>(vrow, vb, D, P, SP, A, nx); break;
        case 6: pv_f32<E, 6>(vrow, vb, D, P, SP, A, nx); break;
        case 7: pv_f32<E, 7>(vrow, vb, D, P, SP, A, nx); break;
        default: pv_f32<E, 8>(vrow, vb, D, P, SP, A, nx); break;
      }
    }
    p0 += n;
  }
  write_unit(a, b, hk, R, D, bf, part, O);
}

template <class T, class E>
int run_f32(const kb::DecodeArgs& a) {
  return decode_schedule<T, BufsDp>(a, [&a](int64_t b, int64_t hk, int64_t t0, int64_t t1, BufsDp& bf, float* part,
                                            T* O) { unit_f32<T, E>(a, b, hk, t0, t1, bf, part, O); });
}

template <class T>
int run_f32_kv(const kb::DecodeArgs& a) {
  if (a.kv_dtype == kb::KV_F32) return run_f32<T, float>(a);
  if (a.kv_dtype == kb::KV_F16) return run_f32<T, f16>(a);
  return run_f32<T, bf16>(a);
}

template <class T, class F>
int run(const kb::DecodeArgs& a) {
  return decode_schedule<T, BufsDp>(a, [&a](int64_t b, int64_t hk, int64_t t0, int64_t t1, BufsDp& bf, float* part,
                                            T* O) { unit<T, F>(a, b, hk, t0, t1, bf, part, O); });
}
}  // namespace

// the dot-product path: bf16 q with bf16 KV, bf16 / fp16 q with int8 KV (AVX512-VNNI), d % 32 == 0
static bool dp_path(const kb::DecodeArgs& a) {
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  if (a.D % 32 != 0) return false;
  if (a.kv_dtype == kb::KV_BF16) return a.q_dtype == kb::BF16;
  return a.kv_dtype == kb::KV_I8 && vnni && (a.q_dtype == kb::BF16 || a.q_dtype == kb::F16);
}

// the fp32 path: every other float KV (fp32, fp16, bf16) with any q; d % 16 == 0 (the entry point's limit)
static bool f32_path(const kb::DecodeArgs& a) {
  return a.D % 16 == 0 && (a.kv_dtype == kb::KV_F32 || a.kv_dtype == kb::KV_F16 || a.kv_dtype == kb::KV_BF16);
}

bool decode_paged_dp_applies(const kb::DecodeArgs& a) {
  return kb::tile_backend() != kb::TILES_NONE && (dp_path(a) || f32_path(a));
}

int decode_paged_dp(const kb::DecodeArgs& a) {
  if (dp_path(a)) {
    if (a.kv_dtype == kb::KV_BF16) return run<bf16, KvBf16>(a);
    return a.q_dtype == kb::BF16 ? run<bf16, KvI8>(a) : run<f16, KvI8>(a);
  }
  if (a.q_dtype == kb::BF16) return run_f32_kv<bf16>(a);
  if (a.q_dtype == kb::F16) return run_f32_kv<f16>(a);
  return run_f32_kv<float>(a);
}
}  // namespace kb_zbf16
#pragma GCC pop_options
#endif

#if !defined(KB_ZBF16_IMPL) && !defined(KB_AMX_IMPL)   // the entry point (compiled once, baseline x86-64)
// Paged decode attention, the ladder's top rung: arguments as kb_cpp_decode_paged_v1 (decode_paged.cpp), checked
// there; v2 (this file) where it applies on this CPU, v1 elsewhere.
KB_API int kb_cpp_decode_paged(const void* q, const void* k_cache, const void* v_cache, const void* block_tables,
                               const void* seq_lens, const void* k_scale, const void* v_scale, void* out, int64_t B,
                               int64_t SQ, int64_t H, int64_t D, int64_t NB, int64_t BS, int64_t HKV, int64_t KD,
                               int64_t vNB, int64_t vBS, int64_t vHKV, int64_t vD, int64_t tb_rows, int64_t MAXB,
                               int64_t n_lens, int64_t ks_rows, int64_t ks_cols, int64_t ks_bstride, int64_t vs_rows,
                               int64_t vs_cols, int64_t vs_bstride, float scale, int q_dtype, int kv_dtype,
                               int threads) {
  return kb::decode_entry(2, q, k_cache, v_cache, block_tables, seq_lens, k_scale, v_scale, out, B, SQ, H, D, NB,
                         BS, HKV, KD, vNB, vBS, vHKV, vD, tb_rows, MAXB, n_lens, ks_rows, ks_cols, ks_bstride,
                         vs_rows, vs_cols, vs_bstride, scale, q_dtype, kv_dtype, threads);
}
#endif
