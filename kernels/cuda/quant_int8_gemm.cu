// quant_int8_gemm.cu: W8A8 GEMM on int8 tensor cores, out[M,N] = (a[M,K] int8 @ w[N,K]^T int8) * sa[m] * sw[n],
// int32 accumulation (mma.sync.m16n8k32.s8.s8.s32: 8192 integer ops per instruction), fp32 scales, out in
// fp32 / bf16 / fp16. The suite quant_gemm's `cuda_mma` variant (scheme w8a8).
//
// v1, the simplest correct rung: no shared memory. Each warp owns a 16 x 32 tile of out (4 mma n-tiles of 8);
// per 32-deep k step it loads its A fragment (4 x 4 bytes: rows g, g+8, k columns 4t.., 16+4t..) and, per
// n-tile, its B fragment (column n = output channel: w[n][k + 4t..] and w[n][k + 16 + 4t..], 4 contiguous bytes
// each since w is [N, K] row-major = B column-major) straight from global memory (L1/L2 serve the reuse: each
// A byte is read by the 1 warp of its rows per block column, each w byte by the 4 warps of a block). Ragged M,
// N and K are masked byte by byte (zeros contribute nothing), so any shape and alignment works.
// Bytes: MK + NK (int8) + 4(M + N) + MN * out itemsize ideally; FLOPs (integer ops) 2MNK.
// Next rungs: cp.async double buffering into shared memory with ldmatrix, larger warp tiles.
// Measured: not yet measured on a GPU (none lent to this task); checked under kernels/cuda/sim.
#include "include/kb_common.h"

namespace {

constexpr int WARPS = 4;          // warps per block, stacked along M: a block covers 64 x 32 of out

// 4 consecutive int8 of a row (k0..k0+3, zero where k >= K or the row does not exist), packed little-endian
__device__ __forceinline__ uint32_t load4(const int8_t* __restrict__ row, int64_t k0, int64_t K, bool ok) {
  uint32_t v = 0;
  if (!ok) return 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (k0 + i < K) v |= (uint32_t)(uint8_t)row[k0 + i] << (8 * i);
  return v;
}

}  // namespace

// kb-report: kb_gemm_w8a8_kernel threads=128 smem_dynamic=0
template <typename T>
__global__ void __launch_bounds__(128) kb_gemm_w8a8_kernel(const int8_t* __restrict__ a, const float* __restrict__ sa,
                                                           const int8_t* __restrict__ w, const float* __restrict__ sw,
                                                           T* __restrict__ out, int64_t M, int64_t N, int64_t K,
                                                           int64_t lda, int64_t ldw, int64_t ldo) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t m0 = ((int64_t)blockIdx.y * WARPS + warp) * 16, n0 = (int64_t)blockIdx.x * 32;
  const bool r0 = m0 + g < M, r1 = m0 + g + 8 < M;
  const int8_t* a0 = a + (r0 ? (m0 + g) * lda : 0);
  const int8_t* a1 = a + (r1 ? (m0 + g + 8) * lda : 0);
  int32_t acc[4][4];
#pragma unroll
  for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
  for (int64_t k = 0; k < K; k += 32) {
    uint32_t af[4];
    af[0] = load4(a0, k + 4 * t, K, r0);
    af[1] = load4(a1, k + 4 * t, K, r1);
    af[2] = load4(a0, k + 16 + 4 * t, K, r0);
    af[3] = load4(a1, k + 16 + 4 * t, K, r1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + 8 * j + g;
      const bool ok = n < N;
      const int8_t* wr = w + (ok ? n * ldw : 0);
      uint32_t bf[2];
      bf[0] = load4(wr, k + 4 * t, K, ok);
      bf[1] = load4(wr, k + 16 + 4 * t, K, ok);
      kb::mma_m16n8k32_s8(acc[j], af, bf, acc[j]);
    }
  }
  // c[0], c[1]: row g, columns 2t, 2t+1 of the n-tile; c[2], c[3]: row g + 8
  const float s0 = r0 ? sa[m0 + g] : 0.0f, s1 = r1 ? sa[m0 + g + 8] : 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t n = n0 + 8 * j + 2 * t + e;
      if (n >= N) continue;
      const float swn = sw[n];
      if (r0) out[(m0 + g) * ldo + n] = kb::from_f32<T>((float)acc[j][e] * s0 * swn);
      if (r1) out[(m0 + g + 8) * ldo + n] = kb::from_f32<T>((float)acc[j][2 + e] * s1 * swn);
    }
}

template <typename T>
static int launch(const void* a, const void* sa, const void* w, const void* sw, void* out, int64_t M, int64_t N,
                  int64_t K, int64_t lda, int64_t ldw, int64_t ldo, void* stream) {
  const dim3 grid((unsigned)((N + 31) / 32), (unsigned)((M + 16 * WARPS - 1) / (16 * WARPS)));
  auto kernel = kb_gemm_w8a8_kernel<T>;
  KB_LAUNCH(kernel, grid, dim3(32 * WARPS), 0, stream, static_cast<const int8_t*>(a), static_cast<const float*>(sa),
            static_cast<const int8_t*>(w), static_cast<const float*>(sw), static_cast<T*>(out), M, N, K, lda, ldw,
            ldo);
  return kb_check_launch("gemm_w8a8");
}

// out[M, N] (dtype: 0 fp32, 1 bf16, 2 fp16) = (a[M, K] @ w[N, K]^T) * sa[m] * sw[n]; a, w int8 row-major with row
// strides lda, ldw; int32 accumulation (wraps past 2^31: |sum| <= 128 * 128 * K stays below it for K < 2^17).
extern "C" int kb_cuda_gemm_w8a8(const void* a, const void* sa, const void* w, const void* sw, void* out, int64_t M,
                                 int64_t N, int64_t K, int64_t lda, int64_t ldw, int64_t ldo, int dtype,
                                 void* stream) {
  if (!a || !sa || !w || !sw || !out || M < 0 || N < 0 || K < 0 || (M > 1 && lda < K) || (N > 1 && ldw < K) ||
      (M > 1 && ldo < N))
    return kb_set_error(KB_EINVAL, "gemm_w8a8: bad arguments (M=%lld N=%lld K=%lld)", (long long)M, (long long)N,
                        (long long)K);
  if (K >= (int64_t(1) << 17)) return kb_set_error(KB_EINVAL, "gemm_w8a8: K=%lld could overflow int32", (long long)K);
  if (M == 0 || N == 0) return KB_OK;
  switch (dtype) {
    case 0: return launch<float>(a, sa, w, sw, out, M, N, K, lda, ldw, ldo, stream);
    case 1: return launch<__nv_bfloat16>(a, sa, w, sw, out, M, N, K, lda, ldw, ldo, stream);
    case 2: return launch<__half>(a, sa, w, sw, out, M, N, K, lda, ldw, ldo, stream);
    default: return kb_set_error(KB_EINVAL, "gemm_w8a8: unknown dtype code %d", dtype);
  }
}
