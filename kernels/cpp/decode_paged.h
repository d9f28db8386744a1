// decode_paged.h -- what the paged decode kernels share: their arguments (checked once by the entry point in
// decode_paged.cpp) and the rungs of the ladder: v1 (decode_paged.cpp, fp32 FMAs, every dtype, both ISAs) and v2
// (decode_paged_dp.cpp, AVX512-BF16 CPUs: AVX512-BF16 / AVX512-VNNI dot products for bf16 q with bf16 or int8 KV and
// fp16 q with int8 KV; fp32 FMAs on rows widened in registers for every other float cache).
#pragma once
#include <cstdint>

#include "kb_cpp.h"

namespace kb {
enum KvDtype : int { KV_F32 = 0, KV_BF16 = 1, KV_F16 = 2, KV_I8 = 3, KV_FP8 = 4 };
struct DecodeArgs {
  const void* q; const void* k; const void* v; const int32_t* tables; const int32_t* lens;
  const float* ks; const float* vs; void* o;
  int64_t B, SQ, H, HKV, D, NB, BS, MAXB, ks_bstride, vs_bstride;
  float scale;
  int q_dtype, kv_dtype, threads;
};
constexpr int64_t DEC_MAX_ROWS = 64;    // G * SQ query rows per unit
constexpr int64_t DEC_MAX_D = 256;
constexpr int64_t DEC_MAX_BS = 256;

// The element offset, in q and in out ([B, SQ, H, D]), of a unit's query row r = s * G + g: query s of sequence b,
// head hk * G + g (G = H / HKV query heads per kv head hk).
inline int64_t dec_row(const DecodeArgs& a, int64_t b, int64_t hk, int64_t r) {
  const int64_t G = a.H / a.HKV, s = r / G, g = r % G;
  return ((b * a.SQ + s) * a.H + hk * G + g) * a.D;
}

// Both entry points (kb_cpp_decode_paged: rung 2, decode_paged_dp.cpp; kb_cpp_decode_paged_v1: rung 1) check every
// argument here (decode_paged.cpp) and run v2 where rung >= 2 and it applies, else v1.
int decode_entry(int rung, const void* q, const void* k_cache, const void* v_cache, const void* block_tables,
                 const void* seq_lens, const void* k_scale, const void* v_scale, void* out, int64_t B, int64_t SQ,
                 int64_t H, int64_t D, int64_t NB, int64_t BS, int64_t HKV, int64_t KD, int64_t vNB, int64_t vBS,
                 int64_t vHKV, int64_t vD, int64_t tb_rows, int64_t MAXB, int64_t n_lens, int64_t ks_rows,
                 int64_t ks_cols, int64_t ks_bstride, int64_t vs_rows, int64_t vs_cols, int64_t vs_bstride, float scale,
                 int q_dtype, int kv_dtype, int threads);
}  // namespace kb

KB_DECLARE(int decode_paged(const kb::DecodeArgs&))
namespace kb_zbf16 {
bool decode_paged_dp_applies(const kb::DecodeArgs&);   // v2 takes these dtypes and head dims on this CPU
int decode_paged_dp(const kb::DecodeArgs&);
}
