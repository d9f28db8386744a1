// mma_sp.cu: one sparse tensor-core tile D = A(16x32, 2:4) * B(32x8) + C with mma.sp m16n8k32 and the PTX ISA
// metadata layout (selector 0), A given as the compressed 16x16 kept values and one metadata word per row
// (sparsity/formats.py: 2 bits per kept value). Mode 1 plants a bug: lanes 4g and 4g+1 supply each other's
// half of the metadata (columns 16..31 described as 0..15), which gives wrong results here as on the GPU.
// Mode 2 passes zero metadata (indices 0 and 0: not two increasing positions), which the simulation rejects.
#include <type_traits>

#include "sim_test.h"

template <typename T>
__device__ __forceinline__ uint32_t sp_pair(const T* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// Ac: tiles x [16][16] kept values; E: tiles x [16] metadata words; B: tiles x [32][8] row-major (k, n).
template <typename T>
__global__ void mma_sp_kernel(float* D, const T* Ac, const uint32_t* E, const T* B, const float* C, int mode) {
  const int tile = blockIdx.x, lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const T* a = Ac + tile * 256;
  const T* b = B + tile * 256;
  const uint32_t* e = E + tile * 16;
  uint32_t af[4], bf[4];
  af[0] = sp_pair(a + g * 16 + 2 * t);
  af[1] = sp_pair(a + (g + 8) * 16 + 2 * t);
  af[2] = sp_pair(a + g * 16 + 2 * t + 8);
  af[3] = sp_pair(a + (g + 8) * 16 + 2 * t + 8);
  for (int r = 0; r < 4; ++r) {
    T two[2] = {b[(2 * t + 8 * r) * 8 + g], b[(2 * t + 8 * r + 1) * 8 + g]};
    bf[r] = sp_pair(two);
  }
  const int h = mode == 1 ? 1 - (t & 1) : (t & 1);
  uint32_t meta = ((e[g] >> (16 * h)) & 0xffffu) | (((e[g + 8] >> (16 * h)) & 0xffffu) << 16);
  if (mode == 2) meta = 0;
  const float* c = C + tile * 128;
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  if constexpr (std::is_same<T, __half>::value) kb::mma_sp_m16n8k32_f16(d, af, bf, acc, meta);
  else kb::mma_sp_m16n8k32_bf16(d, af, bf, acc, meta);
  float* o = D + tile * 128;
  o[g * 8 + 2 * t] = d[0];
  o[g * 8 + 2 * t + 1] = d[1];
  o[(g + 8) * 8 + 2 * t] = d[2];
  o[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// dtype 1 = bf16, 2 = f16; mode 0 = right, 1 = metadata halves swapped, 2 = zero metadata.
SIMTEST simtest_mma_sp(float* D, const void* A, const uint32_t* E, const void* B, const float* C, int tiles,
                       int dtype, int mode) {
  if (dtype == 1) {
    typedef __nv_bfloat16 T;
    KB_LAUNCH(mma_sp_kernel<T>, tiles, 32, 0, nullptr, D, (const T*)A, E, (const T*)B, C, mode);
  } else {
    typedef __half T;
    KB_LAUNCH(mma_sp_kernel<T>, tiles, 32, 0, nullptr, D, (const T*)A, E, (const T*)B, C, mode);
  }
  SIMTEST_RETURN();
}
