// sparse_bsr.cu: y[M, N] = x[M, K] @ W^T with W [N, K] block-sparse in BSR (sparsity/formats.py: blocks of
// b x b, b = 16 or 32, stored transposed, vals[j][kk][nn] = W[i*b + nn][c*b + kk]; int32 rowptr and cols), on
// tensor cores (mma.sync m16n8k16, bf16 or fp16 in, fp32 accumulation, y in the input dtype). v1.
//
// As in sparse_24_mma_sp.cu the kernel computes y^T = W x^T, so W's rows are the instruction's M side:
// a warp owns one block row i of W (b rows: b/16 m16 tiles) and 32 rows of x (4 n8 tiles); it walks the
// block row's stored blocks (rowptr[i] .. rowptr[i+1]-1) and, per 16 columns kk of a block, does
// (b/16) x 4 mma.m16n8k16. A fragments come from the transposed block (a0 = W[row g][cols 2t, 2t+1] =
// vals[j][2t][g], vals[j][2t+1][g]), B fragments from x rows (k = c*b + kk + 2t ...). A block of 4 warps
// covers 4 x 32 = 128 rows of x for the same block row. Loads are direct from global memory (16-bit,
// bounds-checked in M; N and K are multiples of b by construction). Block rows with no stored block write 0.
// Work: 2 * M * nnzb * b^2 FLOPs; bytes: stored values and indices once per 128 rows of x + x + y.
// Improves on: first version. Measured: not yet measured on a GPU; checked under the CUDA simulation.
#include "include/kb_common.h"

namespace {
constexpr int BS_WARPS = 4, BS_THREADS = 32 * BS_WARPS, BS_WM = 32;   // rows of x per warp

template <typename T> __device__ __forceinline__ uint16_t b16bits(T v) {
  uint16_t u;
  memcpy(&u, &v, 2);
  return u;
}
template <typename T> __device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  return (uint32_t)b16bits(lo) | ((uint32_t)b16bits(hi) << 16);
}
template <typename T> __device__ __forceinline__ T to_out(float f);
template <> __device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float f) { return __float2bfloat16(f); }
template <> __device__ __forceinline__ __half to_out<__half>(float f) { return __float2half(f); }

template <typename T> struct Mma16;
template <> struct Mma16<__nv_bfloat16> {
  static __device__ void run(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    kb::mma_m16n8k16_bf16(d, a, b, c);
  }
};
template <> struct Mma16<__half> {
  static __device__ void run(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    kb::mma_m16n8k16_f16(d, a, b, c);
  }
};
}  // namespace

// kb-report: kb_bsr_mma_kernel threads=128 smem_dynamic=0
template <typename T, int B>
__global__ void __launch_bounds__(128) kb_bsr_mma_kernel(const T* __restrict__ x, const int32_t* __restrict__ rowptr,
                                                         const int32_t* __restrict__ cols,
                                                         const T* __restrict__ vals, T* __restrict__ y, int M,
                                                         int64_t ldx, int64_t ldy) {
  constexpr int MT = B / 16;                                // m16 tiles of W rows per block row
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int i = blockIdx.x;                                 // block row of W
  const int m0 = (blockIdx.y * BS_WARPS + warp) * BS_WM;
  float acc[MT][4][4];
  for (int a = 0; a < MT; ++a)
    for (int j = 0; j < 4; ++j)
      for (int e = 0; e < 4; ++e) acc[a][j][e] = 0.f;
  const int j0 = rowptr[i], j1 = rowptr[i + 1];
  for (int jb = j0; jb < j1; ++jb) {
    const T* v = vals + (int64_t)jb * B * B;                // v[kk * B + nn]
    const int64_t kbase = (int64_t)cols[jb] * B;
    for (int kk = 0; kk < B; kk += 16) {
      uint32_t bf[4][2];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int m = m0 + 8 * j + g;
        const bool ok = m < M;
        const T* xr = x + (int64_t)(ok ? m : 0) * ldx + kbase + kk;
        bf[j][0] = ok ? pack2(xr[2 * t], xr[2 * t + 1]) : 0u;
        bf[j][1] = ok ? pack2(xr[2 * t + 8], xr[2 * t + 9]) : 0u;
      }
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        const int n = 16 * a + g;                           // row of W inside the block
        uint32_t af[4];
        af[0] = pack2(v[(kk + 2 * t) * B + n], v[(kk + 2 * t + 1) * B + n]);
        af[1] = pack2(v[(kk + 2 * t) * B + n + 8], v[(kk + 2 * t + 1) * B + n + 8]);
        af[2] = pack2(v[(kk + 2 * t + 8) * B + n], v[(kk + 2 * t + 9) * B + n]);
        af[3] = pack2(v[(kk + 2 * t + 8) * B + n + 8], v[(kk + 2 * t + 9) * B + n + 8]);
#pragma unroll
        for (int j = 0; j < 4; ++j) Mma16<T>::run(acc[a][j], af, bf[j], acc[a][j]);
      }
    }
  }
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + 8 * j + 2 * t;
      const int64_t n = (int64_t)i * B + 16 * a + g;
      if (m < M) {
        y[(int64_t)m * ldy + n] = to_out<T>(acc[a][j][0]);
        y[(int64_t)m * ldy + n + 8] = to_out<T>(acc[a][j][2]);
      }
      if (m + 1 < M) {
        y[(int64_t)(m + 1) * ldy + n] = to_out<T>(acc[a][j][1]);
        y[(int64_t)(m + 1) * ldy + n + 8] = to_out<T>(acc[a][j][3]);
      }
    }
}

template <typename T, int B>
static int launch_bsr(const void* x, const void* rowptr, const void* cols, const void* vals, void* y, int M, int N,
                      int64_t ldx, int64_t ldy, void* stream) {
  const dim3 grid(N / B, (M + BS_WARPS * BS_WM - 1) / (BS_WARPS * BS_WM));
  auto kernel = kb_bsr_mma_kernel<T, B>;
  KB_LAUNCH(kernel, grid, dim3(BS_THREADS), 0, stream, (const T*)x, (const int32_t*)rowptr, (const int32_t*)cols,
            (const T*)vals, (T*)y, M, ldx, ldy);
  return kb_check_launch("kb_cuda_bsr_gemm");
}

template <typename T>
static int launch_bsr_b(int block, const void* x, const void* rowptr, const void* cols, const void* vals, void* y,
                        int M, int N, int64_t ldx, int64_t ldy, void* stream) {
  return block == 16 ? launch_bsr<T, 16>(x, rowptr, cols, vals, y, M, N, ldx, ldy, stream)
                     : launch_bsr<T, 32>(x, rowptr, cols, vals, y, M, N, ldx, ldy, stream);
}

// y[M, N] = x[M, K] @ W^T, W in BSR (rowptr int32 [N/block + 1], cols int32 [nnzb], vals [nnzb, block, block]
// transposed blocks); block 16 or 32; dtype 1 = bf16, 2 = f16; row strides of x and y in elements.
extern "C" int kb_cuda_bsr_gemm(const void* x, const void* rowptr, const void* cols, const void* vals, void* y,
                                int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy, int block, int dtype,
                                void* stream) {
  if (M < 0 || N < 0 || K < 0 || (block != 16 && block != 32) || N % block || K % block || M > 2147483647LL ||
      N / block > 2147483647LL || (M + BS_WARPS * BS_WM - 1) / (BS_WARPS * BS_WM) > 65535 ||
      (M > 1 && (ldx < K || ldy < N)))
    return kb_set_error(KB_EINVAL, "kb_cuda_bsr_gemm: bad arguments M=%lld N=%lld K=%lld block=%d", (long long)M,
                        (long long)N, (long long)K, block);
  if (M == 0 || N == 0) return KB_OK;
  if (dtype == KB_BF16)
    return launch_bsr_b<__nv_bfloat16>(block, x, rowptr, cols, vals, y, (int)M, (int)N, ldx, ldy, stream);
  if (dtype == KB_F16) return launch_bsr_b<__half>(block, x, rowptr, cols, vals, y, (int)M, (int)N, ldx, ldy, stream);
  return kb_set_error(KB_EINVAL, "kb_cuda_bsr_gemm: dtype %d not supported (1 = bf16, 2 = f16)", dtype);
}
