// gemm.h -- the arguments of the GEMM kernels (gemm.cpp: fp32 AVX-512/AVX2; gemm_amx_bf16.cpp: bf16 on AMX;
// gemm_bf16_dp.cpp: bf16 on AVX512-BF16).
#pragma once
#include <cstdint>

namespace kb {
struct GemmArgs {
  const void* a; const void* b; void* c;
  int64_t M, N, K, lda, ldb, ldc;
  int dtype, threads;
};
}  // namespace kb

namespace kb_amx {
int gemm_bf16(const kb::GemmArgs& g);   // bf16 in and out, fp32 accumulation; needs kb::isa() >= ISA_AMX
}
namespace kb_zbf16 {
int gemm_bf16(const kb::GemmArgs& g);   // gemm_bf16_dp.cpp: the same on AVX512-BF16; kb::tile_backend() == TILES_ZMM
int gemm_bf16_kc512(const kb::GemmArgs& g);   // its earlier rung: K-slices of 512 (variant cpp_kc512)
}
