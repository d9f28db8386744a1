// decode_sched.h -- the work schedule of the paged decode kernels (v1 decode_paged.cpp, v2 decode_paged_dp.cpp),
// written once: units = (sequence, kv head, chunk of pages) over the OpenMP threads, then the merge of the chunks of
// split sequences (flash-decoding's second pass: o = sum_c 2^(m_c - M) Acc_c / sum_c 2^(m_c - M) l_c).
// Chunks: >= 8 units per thread (load balance over ragged lengths), 64 .. 2048 tokens, a whole number of pages.
// A unit is `unit(b, hk, t0, t1, bufs, part, out)`: part == nullptr -> it normalizes into out itself; else it
// leaves (m, l, Acc[D]) per query row at `part`. Included after simd.h: the code goes in namespace KB_NS.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "decode_paged.h"

namespace KB_NS {
// out row = acc[0, D) / l (the softmax's normalization), at dec_row(a, b, hk, r)
template <class T>
inline void store_normalized(const kb::DecodeArgs& a, T* O, int64_t b, int64_t hk, int64_t r, const float* acc,
                             float l) {
  T* dst = O + kb::dec_row(a, b, hk, r);
  const vf inv = set1(1.f / l);
  for (int64_t c = 0; c < a.D; c += W) store(dst + c, mul(load(acc + c), inv));
}

// A unit's write-out, the same in every rung: a sequence in one unit normalizes its R rows into out; a chunk of a
// split sequence leaves m, l, Acc[D] per row at `part` for the merge.
template <class T, class Bufs>
inline void write_unit(const kb::DecodeArgs& a, int64_t b, int64_t hk, int R, int D, const Bufs& bf, float* part,
                       T* O) {
  for (int r = 0; r < R; ++r) {
    if (part == nullptr) {
      store_normalized(a, O, b, hk, r, bf.Acc + r * D, bf.l[r]);
    } else {
      float* pr = part + r * (D + 2);
      pr[0] = bf.m[r];
      pr[1] = bf.l[r];
      std::copy(bf.Acc + r * D, bf.Acc + (r + 1) * D, pr + 2);
    }
  }
}

template <class T, class Bufs, class Unit>
int decode_schedule(const kb::DecodeArgs& a, Unit&& unit) {
  const int64_t B = a.B, HKV = a.HKV, BS = a.BS, D = a.D;
  const int64_t R = a.H / HKV * a.SQ;
  const int T_ = kb::threads_or_default(a.threads);
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) total += a.lens[b];
  int64_t chunk = std::clamp<int64_t>(total * HKV / (8 * T_), 64, 2048);
  chunk = std::max<int64_t>(BS, (chunk + BS - 1) / BS * BS);
  const auto chunks = [&a, chunk](int64_t b) { return (a.lens[b] + chunk - 1) / chunk; };   // of sequence b
  std::vector<int64_t> first(B + 1, 0);               // first unit of sequence b (units of b: chunks(b) x HKV)
  std::vector<int64_t> part_off(B + 1, 0);            // partial results of sequences split into several chunks
  for (int64_t b = 0; b < B; ++b) {
    const int64_t nch = chunks(b);
    first[b + 1] = first[b] + HKV * nch;
    part_off[b + 1] = part_off[b] + (nch > 1 ? nch * HKV * R * (D + 2) : 0);
  }
  const int64_t units = first[B];
  kb::Scratch part(size_t(part_off[B]) * sizeof(float));
  if (part_off[B] && !part.p) return kb::set_error(kb::E_NOMEM, "decode_paged: out of memory");
  T* O = static_cast<T*>(a.o);
  int err = 0;
#pragma omp parallel num_threads(kb::threads_for(a.threads, total * HKV * R * D, int64_t(1) << 16))
  {
    kb::Scratch mem(sizeof(Bufs));
    if (!mem.p) {
#pragma omp atomic write
      err = kb::E_NOMEM;
    }
    Bufs* bf = mem.as<Bufs>();
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < units; ++u) {
      if (!bf) continue;
      const int64_t b = std::upper_bound(first.begin(), first.end(), u) - first.begin() - 1;
      const int64_t nch = chunks(b);
      const int64_t k = u - first[b], hk = k / nch, c = k % nch;
      const int64_t t0 = c * chunk, t1 = std::min<int64_t>(a.lens[b], t0 + chunk);
      float* pp = nch > 1 ? part.as<float>() + part_off[b] + (hk * nch + c) * R * (D + 2) : nullptr;
      unit(b, hk, t0, t1, *bf, pp, O);
    }
    // merge the chunks of split sequences (implicit barrier above)
#pragma omp for schedule(dynamic, 4)
    for (int64_t w = 0; w < B * HKV * R; ++w) {
      const int64_t b = w / (HKV * R), hk = (w / R) % HKV, r = w % R;
      const int64_t nch = chunks(b);
      if (nch < 2) continue;
      const float* base = part.as<float>() + part_off[b] + hk * nch * R * (D + 2) + r * (D + 2);
      float M = -INFINITY;
      for (int64_t c = 0; c < nch; ++c) M = std::max(M, base[c * R * (D + 2)]);
      alignas(64) float o[kb::DEC_MAX_D];
      std::fill(o, o + D, 0.f);
      float l = 0.f;
      for (int64_t c = 0; c < nch; ++c) {
        const float* pc = base + c * R * (D + 2);
        if (pc[1] == 0.f) continue;                    // a chunk past this query's last visible key
        const float f = std::exp2(pc[0] - M);
        l += f * pc[1];
        for (int64_t i = 0; i < D; i += W) store(o + i, fma(set1(f), load(pc + 2 + i), load(o + i)));
      }
      store_normalized(a, O, b, hk, r, o, l);
    }
  }
  return err ? kb::set_error(err, "decode_paged: out of memory") : 0;
}
}  // namespace KB_NS
