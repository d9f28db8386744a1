// decode_paged.h -- what the paged decode kernels share: their arguments (checked once by the entry point in
// decode_paged.cpp) and the rungs of the ladder: v1 (decode_paged.cpp, fp32 FMAs, every dtype, both ISAs) and v2
// (decode_paged_dp.cpp, AVX512-BF16 / AVX512-VNNI dot products, bf16 q with bf16 or int8 KV, fp16 q with int8 KV).
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
}  // namespace kb

KB_DECLARE(int decode_paged(const kb::DecodeArgs&))
namespace kb_zbf16 {
bool decode_paged_dp_applies(const kb::DecodeArgs&);   // v2 takes these dtypes and head dims on this CPU
int decode_paged_dp(const kb::DecodeArgs&);
}
