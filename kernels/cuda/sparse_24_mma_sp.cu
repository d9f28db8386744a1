// sparse_24_mma_sp.cu: y[M, N] = x[M, K] @ W^T with W [N, K] 2:4-sparse, on the sparse tensor cores
// (mma.sp m16n8k32, bf16 or fp16 in, fp32 accumulation, y in the input dtype). v1.
//
// The weight is read in the project's compressed format (sparsity/formats.py), exactly as the C++ kernel
// reads it: vals [N, K/2] (the two kept values of every 4-wide chunk, increasing column order) and meta
// int32 [N, ceil(K/32)] (2 bits per kept value; value j of a row in bits 2*(j % 16) of word j / 16). That
// is already the PTX ISA metadata layout for m16n8k32 16-bit types: one word covers 32 columns of a row, its
// low half the first 16 columns (four nibbles, one per chunk, first index in the low 2 bits), so the lane
// that supplies row g's and row g+8's metadata for columns 16h..16h+15 (lane 4g + h, sparsity selector 0)
// takes bits 16h..16h+15 of each row's word (kb_device.h, kb::mma_sp_m16n8k32_*). No host reordering.
//
// The sparse operand of mma.sp is A (the M side of the instruction), so the kernel computes y^T = W x^T:
// A = 16 rows of W (compressed 16 x 16 per 32 columns of K), B = x^T (x row-major [M, K] is B "col"),
// D = 16 rows of N x 8 rows of x. A block of 4 warps covers 64 rows of W (16 per warp) x 32 rows of x
// (4 m16n8k32 tiles per warp, 16 fp32 accumulators per thread); K is walked 32 columns at a time.
// Fragments are loaded straight from global memory (16-bit loads, bounds-checked: any M, N and K % 4 == 0);
// chunks past K get value 0 and the valid metadata nibble 0b0100. No shared memory, no barriers.
// Work: 2 * M * N * K/2 FLOPs (the kept half); bytes: N*K/2 * 2 (values) + N*K/16 (indices) + x + y.
// Improves on: first version (v2 would stage x and W through shared memory with cp.async, as gemm_tc.cu).
// Measured: not yet measured on a GPU; checked under the CUDA simulation (mma.sp modelled with its metadata).
#include "include/kb_common.h"

namespace {
constexpr int SP_WARPS = 4, SP_THREADS = 32 * SP_WARPS;
constexpr int SP_BN = 16 * SP_WARPS;   // rows of W per block
constexpr int SP_BM = 32;              // rows of x per block (4 n8 tiles)

template <typename T> __device__ __forceinline__ uint16_t bits16(T v) {
  uint16_t u;
  memcpy(&u, &v, 2);
  return u;
}
template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float f) { return __float2bfloat16(f); }
template <> __device__ __forceinline__ __half from_float<__half>(float f) { return __float2half(f); }

template <typename T> struct MmaSp;
template <> struct MmaSp<__nv_bfloat16> {
  static __device__ void run(float d[4], const uint32_t a[4], const uint32_t b[4], const float c[4], uint32_t e) {
    kb::mma_sp_m16n8k32_bf16(d, a, b, c, e);
  }
};
template <> struct MmaSp<__half> {
  static __device__ void run(float d[4], const uint32_t a[4], const uint32_t b[4], const float c[4], uint32_t e) {
    kb::mma_sp_m16n8k32_f16(d, a, b, c, e);
  }
};

// two 16-bit elements p[0], p[1] (low, high) if `ok`, else zeros
template <typename T>
__device__ __forceinline__ uint32_t pair_or_zero(const T* p, bool ok) {
  if (!ok) return 0u;
  return (uint32_t)bits16(p[0]) | ((uint32_t)bits16(p[1]) << 16);
}

// the 16 metadata bits of one row for columns k16..k16+15 (k16 a multiple of 16): nibbles of chunks past K
// (or of rows past N) become 0b0100 (positions 0 and 1, of values that are zero)
__device__ __forceinline__ uint32_t meta16(const int32_t* __restrict__ meta, int64_t mw, int row, int N, int k16,
                                           int K) {
  if (row >= N) return 0x4444u;
  const uint32_t word = (uint32_t)meta[(int64_t)row * mw + k16 / 32];
  uint32_t bits = (word >> (k16 % 32)) & 0xffffu;
  const int valid = (K - k16) / 4;     // whole chunks of this row inside K (K % 4 == 0)
  if (valid < 4) {
    const uint32_t keep = valid <= 0 ? 0u : (1u << (4 * valid)) - 1u;
    bits = (bits & keep) | (0x4444u & ~keep);
  }
  return bits;
}
}  // namespace

// kb-report: kb_sparse24_mma_sp_kernel threads=128 smem_dynamic=0
template <typename T>
__global__ void __launch_bounds__(128) kb_sparse24_mma_sp_kernel(const T* __restrict__ x,
                                                                 const T* __restrict__ vals,
                                                                 const int32_t* __restrict__ meta,
                                                                 T* __restrict__ y, int M, int N, int K,
                                                                 int64_t ldx, int64_t ldy) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * SP_BN + warp * 16;           // this warp's 16 rows of W
  const int m0 = blockIdx.y * SP_BM;
  const int64_t half = K / 2, mw = (half + 15) / 16;
  const int r0 = n0 + g, r1 = n0 + g + 8;
  float acc[4][4];
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
  for (int k0 = 0; k0 < K; k0 += 32) {
    // A: kept values of chunk t (columns k0+4t..) and chunk 4+t (k0+16+4t..) of rows r0 and r1
    const int kc0 = k0 / 2 + 2 * t, kc1 = kc0 + 8;
    uint32_t a[4];
    a[0] = pair_or_zero(vals + (int64_t)r0 * half + kc0, r0 < N && kc0 < half);
    a[1] = pair_or_zero(vals + (int64_t)r1 * half + kc0, r1 < N && kc0 < half);
    a[2] = pair_or_zero(vals + (int64_t)r0 * half + kc1, r0 < N && kc1 < half);
    a[3] = pair_or_zero(vals + (int64_t)r1 * half + kc1, r1 < N && kc1 < half);
    // metadata (selector 0): lane 4g + h supplies rows r0 (low half) and r1 (high half), columns k0+16h..
    const int h = t & 1;
    const uint32_t e = meta16(meta, mw, r0, N, k0 + 16 * h, K) | (meta16(meta, mw, r1, N, k0 + 16 * h, K) << 16);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + 8 * j + g;                         // B column g = row m of x
      const bool mok = m < M;
      const T* xr = x + (int64_t)(mok ? m : 0) * ldx;
      uint32_t b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int k = k0 + 2 * t + 8 * r;
        b[r] = pair_or_zero(xr + k, mok && k < K);
      }
      MmaSp<T>::run(acc[j], a, b, acc[j], e);
    }
  }
  // D: (row r0 of W = column n of y, rows 2t, 2t+1 of the 8 = rows m of y); d2, d3 for r1
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int m = m0 + 8 * j + 2 * t;
    if (r0 < N && m < M) y[(int64_t)m * ldy + r0] = from_float<T>(acc[j][0]);
    if (r0 < N && m + 1 < M) y[(int64_t)(m + 1) * ldy + r0] = from_float<T>(acc[j][1]);
    if (r1 < N && m < M) y[(int64_t)m * ldy + r1] = from_float<T>(acc[j][2]);
    if (r1 < N && m + 1 < M) y[(int64_t)(m + 1) * ldy + r1] = from_float<T>(acc[j][3]);
  }
}

template <typename T>
static int launch_sp(const void* x, const void* vals, const void* meta, void* y, int M, int N, int K, int64_t ldx,
                     int64_t ldy, void* stream) {
  const dim3 grid((N + SP_BN - 1) / SP_BN, (M + SP_BM - 1) / SP_BM);
  auto kernel = kb_sparse24_mma_sp_kernel<T>;
  KB_LAUNCH(kernel, grid, dim3(SP_THREADS), 0, stream, (const T*)x, (const T*)vals, (const int32_t*)meta, (T*)y,
            M, N, K, ldx, ldy);
  return kb_check_launch("kb_cuda_gemm_24");
}

// y[M, N] = x[M, K] @ W^T, W 2:4 compressed (vals [N, K/2] row stride K/2, meta int32 [N, ceil(K/32)]), K % 4 == 0;
// dtype 1 = bf16, 2 = f16 (x, vals, y); row strides of x and y in elements.
extern "C" int kb_cuda_gemm_24(const void* x, const void* vals, const void* meta, void* y, int64_t M, int64_t N,
                               int64_t K, int64_t ldx, int64_t ldy, int dtype, void* stream) {
  if (M < 0 || N < 0 || K < 4 || K % 4 || M > 2147483647LL || N > 2147483647LL || K > 2147483647LL ||
      (M + SP_BM - 1) / SP_BM > 65535 || (M > 1 && (ldx < K || ldy < N)))
    return kb_set_error(KB_EINVAL, "kb_cuda_gemm_24: bad shape M=%lld N=%lld K=%lld (K %% 4 == 0)", (long long)M,
                        (long long)N, (long long)K);
  if (M == 0 || N == 0) return KB_OK;
  if (dtype == KB_BF16)
    return launch_sp<__nv_bfloat16>(x, vals, meta, y, (int)M, (int)N, (int)K, ldx, ldy, stream);
  if (dtype == KB_F16) return launch_sp<__half>(x, vals, meta, y, (int)M, (int)N, (int)K, ldx, ldy, stream);
  return kb_set_error(KB_EINVAL, "kb_cuda_gemm_24: dtype %d not supported (1 = bf16, 2 = f16)", dtype);
}
