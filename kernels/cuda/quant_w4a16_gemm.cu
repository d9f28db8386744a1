// quant_w4a16_gemm.cu: W4A16 dequantizing GEMM on tensor cores, out[M,N] = x[M,K] @ W^T with W int4 in quant/'s
// int4_weight_only layout (packed[N, K/2], even k in the low nibble; groups of G along K with an fp32 scale and a
// uint8 zero point each: W[n,k] = s[n,k/G] * (q - z[n,k/G])); x and out bf16 or fp16, fp32 accumulation
// (mma.sync.m16n8k16: 4096 FLOPs per instruction). The suite quant_gemm's `cuda_w4a16` variant (scheme w4).
//
// v1, the simplest correct rung, as quant_int8_gemm.cu: no shared memory. Each warp owns a 16 x 32 tile of out
// (4 mma n-tiles of 8); per 16-deep k step it loads its A fragment from x (rows g, g+8; k pairs 2t, 2t+8) and,
// per n-tile, dequantizes its B fragment in registers: column n = g of the tile is w's row n, whose k pairs 2t
// and 2t+8 are ONE packed byte each (k0 and 2t even), so a lane reads 2 bytes, the group's scale and zero point
// (a 16-deep step lies inside one group: G is a multiple of 16), and computes s * (q - z) for 4 values.
// Ragged M and N are masked (zero fragments, stores skipped); K is a multiple of G by the layout.
// Bytes: N*K/2 + 5*N*K/G of weights per block row of 64 x-rows (L2 serves the 4 warps of a block), M*K*2 of x,
// M*N*2 of out; FLOPs 2MNK. Decode (M <= 16) is weight-bytes bound: 3 of a block's 4 warps idle at M = 1
// (next rung: split K across warps for M <= 16, cp.async of packed weights into shared memory, ldmatrix for x).
// Measured: not yet measured on a GPU (none lent to this task); checked under kernels/cuda/sim.
#include "include/kb_common.h"

namespace {

constexpr int W4_WARPS = 4;        // warps per block, stacked along M: a block covers 64 x 32 of out

template <typename T> __device__ __forceinline__ uint32_t pair_bits(T lo, T hi) {
  uint16_t a, b;
  memcpy(&a, &lo, 2);
  memcpy(&b, &hi, 2);
  return (uint32_t)a | ((uint32_t)b << 16);
}

// x[row][k], x[row][k + 1] packed (zero when the row does not exist)
template <typename T> __device__ __forceinline__ uint32_t load_pair(const T* __restrict__ row, int64_t k, bool ok) {
  return ok ? pair_bits(row[k], row[k + 1]) : 0u;
}

// the two weights of one packed byte (even k low nibble, k + 1 high), dequantized and packed as a T pair
template <typename T> __device__ __forceinline__ uint32_t dequant_pair(uint8_t byte, float s, float sz) {
  const float lo = (float)(byte & 0xF) * s - sz, hi = (float)(byte >> 4) * s - sz;    // s * q - s * z
  return pair_bits(kb::from_f32<T>(lo), kb::from_f32<T>(hi));
}

template <typename T> struct W4Mma;
template <> struct W4Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    kb::mma_m16n8k16_bf16(d, a, b, d);
  }
};
template <> struct W4Mma<__half> {
  static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    kb::mma_m16n8k16_f16(d, a, b, d);
  }
};

}  // namespace

// kb-report: kb_gemm_w4a16_kernel threads=128 smem_dynamic=0
template <typename T>
__global__ void __launch_bounds__(128) kb_gemm_w4a16_kernel(const T* __restrict__ x, const uint8_t* __restrict__ packed,
                                                            const float* __restrict__ scale,
                                                            const uint8_t* __restrict__ zero, T* __restrict__ out,
                                                            int64_t M, int64_t N, int64_t K, int group, int64_t ldx,
                                                            int64_t ldo) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = ((int64_t)blockIdx.y * W4_WARPS + warp) * 16, n0 = (int64_t)blockIdx.x * 32;
  const bool r0 = m0 + g < M, r1 = m0 + g + 8 < M;
  const T* x0 = x + (r0 ? (m0 + g) * ldx : 0);
  const T* x1 = x + (r1 ? (m0 + g + 8) * ldx : 0);
  const int64_t groups = K / group;
  float acc[4][4];
#pragma unroll
  for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  for (int64_t k = 0; k < K; k += 16) {
    uint32_t af[4];
    af[0] = load_pair(x0, k + 2 * t, r0);
    af[1] = load_pair(x1, k + 2 * t, r1);
    af[2] = load_pair(x0, k + 2 * t + 8, r0);
    af[3] = load_pair(x1, k + 2 * t + 8, r1);
    const int64_t gi = k / group;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 8 * j + g;
      uint32_t bf[2] = {0u, 0u};
      if (n < N) {
        const uint8_t* wr = packed + n * (K / 2);
        const float s = scale[n * groups + gi], sz = s * (float)zero[n * groups + gi];
        bf[0] = dequant_pair<T>(wr[(k + 2 * t) / 2], s, sz);
        bf[1] = dequant_pair<T>(wr[(k + 2 * t + 8) / 2], s, sz);
      }
      W4Mma<T>::run(acc[j], af, bf);
    }
  }
  // c[0], c[1]: row g, columns 2t, 2t+1 of the n-tile; c[2], c[3]: row g + 8
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t n = n0 + 8 * j + 2 * t + e;
      if (n >= N) continue;
      if (r0) out[(m0 + g) * ldo + n] = kb::from_f32<T>(acc[j][e]);
      if (r1) out[(m0 + g + 8) * ldo + n] = kb::from_f32<T>(acc[j][2 + e]);
    }
}

template <typename T>
static int launch_w4a16(const void* x, const void* packed, const void* scale, const void* zero, void* out, int64_t M,
                        int64_t N, int64_t K, int group, int64_t ldx, int64_t ldo, void* stream) {
  const dim3 grid((unsigned)((N + 31) / 32), (unsigned)((M + 16 * W4_WARPS - 1) / (16 * W4_WARPS)));
  auto kernel = kb_gemm_w4a16_kernel<T>;
  KB_LAUNCH(kernel, grid, dim3(32 * W4_WARPS), 0, stream, static_cast<const T*>(x),
            static_cast<const uint8_t*>(packed), static_cast<const float*>(scale), static_cast<const uint8_t*>(zero),
            static_cast<T*>(out), M, N, K, group, ldx, ldo);
  return kb_check_launch("gemm_w4a16");
}

// out[M, N] = x[M, K] @ W^T; W: packed uint8 [N, K/2] (contiguous), scale fp32 and zero uint8 [N, K/group]
// (contiguous); x and out bf16 (dtype 1) or fp16 (2) with row strides ldx, ldo; group a multiple of 16 dividing K.
extern "C" int kb_cuda_gemm_w4a16(const void* x, const void* packed, const void* scale, const void* zero, void* out,
                                  int64_t M, int64_t N, int64_t K, int group, int64_t ldx, int64_t ldo, int dtype,
                                  void* stream) {
  if (!x || !packed || !scale || !zero || !out || M < 0 || N < 0 || K < 0 || group <= 0 || group % 16 ||
      K % group || (M > 1 && (ldx < K || ldo < N)) || (M + 16 * W4_WARPS - 1) / (16 * W4_WARPS) > 65535)
    return kb_set_error(KB_EINVAL, "gemm_w4a16: bad arguments (M=%lld N=%lld K=%lld group=%d: the group must be a "
                        "multiple of 16 dividing K)", (long long)M, (long long)N, (long long)K, group);
  if (M == 0 || N == 0) return KB_OK;
  switch (dtype) {
    case KB_BF16: return launch_w4a16<__nv_bfloat16>(x, packed, scale, zero, out, M, N, K, group, ldx, ldo, stream);
    case KB_F16: return launch_w4a16<__half>(x, packed, scale, zero, out, M, N, K, group, ldx, ldo, stream);
    default: return kb_set_error(KB_EINVAL, "gemm_w4a16: dtype %d not supported (1 = bf16, 2 = f16)", dtype);
  }
}
