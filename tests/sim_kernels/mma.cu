// mma.cu: tensor-core tiles D = A(16x16) * B(16x8) with the fragment layouts of the PTX ISA
// (mma.m16n8k16.row.col). One warp per tile. The planted bug swaps fragment registers a1 and a2 (rows
// g+8 and columns 2t+8 confused), which gives wrong results here as on the GPU.
#include "sim_test.h"

template <typename T>
__device__ __forceinline__ uint32_t pair(const T* p) {  // two consecutive 16-bit elements, p[0] low
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
template <typename T> struct MmaOf;
template <> struct MmaOf<__nv_bfloat16> {
  static __device__ void run(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    kb::mma_m16n8k16_bf16(d, a, b, c);
  }
};
template <> struct MmaOf<__half> {
  static __device__ void run(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    kb::mma_m16n8k16_f16(d, a, b, c);
  }
};

// A: tiles x [16][16] row-major, B: tiles x [16][8] row-major (k, n), D: tiles x [16][8] fp32 = A*B + C.
template <typename T, bool kSwapBug>
__global__ void mma_direct_kernel(float* D, const T* A, const T* B, const float* C) {
  const int tile = blockIdx.x, lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const T* a = A + tile * 256;
  const T* b = B + tile * 128;
  uint32_t af[4], bf[2];
  af[0] = pair(a + g * 16 + 2 * t);
  af[1] = pair(a + (g + 8) * 16 + 2 * t);
  af[2] = pair(a + g * 16 + 2 * t + 8);
  af[3] = pair(a + (g + 8) * 16 + 2 * t + 8);
  if (kSwapBug) { uint32_t s = af[1]; af[1] = af[2]; af[2] = s; }
  // B fragments hold two consecutive k of one column n = g: not contiguous in a row-major B.
  T b0[2] = {b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]};
  T b1[2] = {b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]};
  bf[0] = pair(b0);
  bf[1] = pair(b1);
  const float* c = C + tile * 128;
  float cf[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  MmaOf<T>::run(d, af, bf, cf);
  float* o = D + tile * 128;
  o[g * 8 + 2 * t] = d[0];
  o[g * 8 + 2 * t + 1] = d[1];
  o[(g + 8) * 8 + 2 * t] = d[2];
  o[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// Same product through shared memory, fragments loaded with ldmatrix (A: x4; B: x2.trans of row-major B),
// accumulating in place (d aliases c).
template <typename T>
__global__ void mma_ldmatrix_kernel(float* D, const T* A, const T* B, const float* C) {
  __shared__ __align__(16) T As[16][16];
  __shared__ __align__(16) T Bs[16][8];
  const int tile = blockIdx.x, lane = threadIdx.x, g = lane / 4, t = lane % 4;
  for (int i = lane; i < 256; i += 32) As[i / 16][i % 16] = A[tile * 256 + i];
  for (int i = lane; i < 128; i += 32) Bs[i / 8][i % 8] = B[tile * 128 + i];
  __syncwarp();
  uint32_t af[4], bf[2];
  kb::ldmatrix_x4(af, &As[lane % 16][(lane / 16) * 8]);
  kb::ldmatrix_x2_trans(bf, &Bs[lane % 16][0]);
  const float* c = C + tile * 128;
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  MmaOf<T>::run(acc, af, bf, acc);
  float* o = D + tile * 128;
  o[g * 8 + 2 * t] = acc[0];
  o[g * 8 + 2 * t + 1] = acc[1];
  o[(g + 8) * 8 + 2 * t] = acc[2];
  o[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// dtype 1 = bf16, 2 = f16; mode 0 = direct, 1 = direct with the swapped fragment, 2 = ldmatrix.
SIMTEST simtest_mma(float* D, const void* A, const void* B, const float* C, int tiles, int dtype, int mode) {
  if (dtype == 1) {
    typedef __nv_bfloat16 T;
    const T* a = (const T*)A; const T* b = (const T*)B;
    if (mode == 0) KB_LAUNCH((mma_direct_kernel<T, false>), tiles, 32, 0, nullptr, D, a, b, C);
    if (mode == 1) KB_LAUNCH((mma_direct_kernel<T, true>), tiles, 32, 0, nullptr, D, a, b, C);
    if (mode == 2) KB_LAUNCH(mma_ldmatrix_kernel<T>, tiles, 32, 0, nullptr, D, a, b, C);
  } else {
    typedef __half T;
    const T* a = (const T*)A; const T* b = (const T*)B;
    if (mode == 0) KB_LAUNCH((mma_direct_kernel<T, false>), tiles, 32, 0, nullptr, D, a, b, C);
    if (mode == 1) KB_LAUNCH((mma_direct_kernel<T, true>), tiles, 32, 0, nullptr, D, a, b, C);
    if (mode == 2) KB_LAUNCH(mma_ldmatrix_kernel<T>, tiles, 32, 0, nullptr, D, a, b, C);
  }
  SIMTEST_RETURN();
}
