// quant_int8_gemm.h -- what the W8A8 GEMM rungs share: the arguments, the packed weight layout, the argument checks.
// The layout is written by kb_cpp_pack_w8_vnni (quant_int8_gemm.cpp, the only packer) and read by both rungs:
// v2 (quant_int8_gemm.cpp, `cpp_vnni_v2`) and v3 (quant_int8_gemm_v3.cpp, `cpp_vnni`, the model path).
//   for each block of 16 output channels: [K/4 quads][16 channels][4 bytes] -- 64 bytes per quad, one zmm, the
//   4 k bytes of a channel adjacent as vpdpbusd wants them -- zero-padded to K % 4 and N % 16; then
//   colsum int32 [N padded to 16] = 128 * sum_k W[n, k] (the compensation of the activations' +128 offset).
#pragma once
#include <cstdint>

#include "kb_cpp.h"

namespace kb {
struct W8A8Args {
  const int8_t* a; const float* sa; const uint8_t* w; const float* sw; void* out;
  int64_t M, N, K, lda, ldo;
  int out_dtype, threads;
};
inline int64_t w8_kq(int64_t K) { return (K + 3) / 4; }
inline int64_t w8_np(int64_t N) { return (N + 15) / 16 * 16; }
inline size_t w8_packed_bytes(int64_t N, int64_t K) {   // weights, then the column sums
  return size_t(w8_np(N)) * size_t(w8_kq(K)) * 4 + size_t(w8_np(N)) * 4;
}
inline const int32_t* w8_colsum(const uint8_t* packed, int64_t N, int64_t K) {
  return reinterpret_cast<const int32_t*>(packed + w8_np(N) * w8_kq(K) * 4);
}

// The entry points' checks (both rungs take the same arguments): 0, or the error code with its message recorded.
inline int w8a8_check(const char* name, const W8A8Args& g, bool cpu_ok) {
  if (!g.a || !g.sa || !g.w || !g.sw || !g.out || g.M < 0 || g.N <= 0 || g.K <= 0 || (g.M > 1 && g.lda < g.K) ||
      (g.M > 1 && g.ldo < g.N))
    return set_error(E_ARG, "%s: bad arguments (M=%lld N=%lld K=%lld)", name, (long long)g.M, (long long)g.N,
                     (long long)g.K);
  if (g.out_dtype != F32 && g.out_dtype != BF16)
    return set_error(E_DTYPE, "%s: output dtype %d (float32 or bfloat16)", name, g.out_dtype);
  if (g.K >= (int64_t(1) << 16))   // |sum| <= 255 * 128 * K must stay below 2^31
    return set_error(E_ARG, "%s: K=%lld could overflow the int32 accumulators", name, (long long)g.K);
  if (isa() < ISA_AVX512 || !cpu_ok) return set_error(E_ISA, "%s: this CPU has no AVX512-VNNI", name);
  return OK;
}

// The body both rungs' C entry points share (a C ABI cannot share the argument list itself): the arguments into
// W8A8Args, the checks, the empty product, then `kernel` (the rung).
inline int w8a8_entry(const char* name, int (*kernel)(const W8A8Args&), const void* a, const void* sa,
                      const void* packed, const void* sw, void* out, int64_t M, int64_t N, int64_t K, int64_t lda,
                      int64_t ldo, int out_dtype, int threads) {
  W8A8Args g{static_cast<const int8_t*>(a), static_cast<const float*>(sa), static_cast<const uint8_t*>(packed),
             static_cast<const float*>(sw), out, M, N, K, lda, ldo, out_dtype, threads};
  if (int e = w8a8_check(name, g, __builtin_cpu_supports("avx512vnni"))) return e;
  if (M == 0) return 0;
  return kernel(g);
}
}  // namespace kb
