// gemm_tc.cu: C[M,N] = A[M,K] @ B[K,N] on tensor cores, bf16 or fp16 inputs, fp32 accumulation, C in
// fp32 or in the input dtype (chosen by the caller; lib.py defaults to the input dtype, as torch.matmul).
// All three matrices row-major with row strides lda, ldb, ldc (elements).
//
// Algorithm: the classic shared-memory tiled GEMM on mma.sync (as in CUTLASS's SM80 "multistage" kernels):
//   - a block computes a 128x128 tile of C with 8 warps as 2 (M) x 4 (N); a warp owns 64x32 of C, i.e.
//     4 x 4 tiles of m16n8 in 64 fp32 registers per thread;
//   - K is walked in steps of 32 through a 3-stage ring of shared-memory tiles filled by cp.async (16-byte
//     copies that bypass the register file), so the loads of tile k+2 overlap the MMAs on tile k;
//   - fragments come from shared memory through ldmatrix (A as is, B with .trans since B is K-major in
//     memory); the rows of the tiles are padded by 16 bytes so the 8 row addresses of an ldmatrix fall in
//     8 distinct groups of 4 banks (A: 80-byte rows, B: 272-byte rows).
//   Edges: tiles that stick out of A or B are zero-filled (cp.async with src-size 0), so any M, N, K works.
//   cp.async needs 16-byte aligned sources; when K or N or a stride is not a multiple of 8 elements (or a
//   base pointer is not 16-byte aligned) the same kernel is instantiated with plain element loads instead.
// Work: 2*M*N*K FLOPs; per block-tile step 128*32*2*2 bytes of A and B for 2*128*128*32 FLOPs, i.e. 64
// FLOPs per byte of shared-memory fill; global traffic M*K*2*(N/128) + K*N*2*(M/128) + M*N*out bytes.
// Shared memory: 3 * (128*40 + 32*136) * 2 = 56,832 bytes (dynamic, above the 48 KiB default: opt-in).
// Improves on: first version. Measured: not yet measured on a GPU.
#include "include/kb_common.h"

namespace {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
constexpr int A_LD = BK + 8;   // 40 elements = 80 bytes per A row in shared memory
constexpr int B_LD = BN + 8;   // 136 elements = 272 bytes per B row
constexpr int A_STAGE = BM * A_LD, B_STAGE = BK * B_LD;  // elements per stage
constexpr int SMEM_BYTES = STAGES * (A_STAGE + B_STAGE) * 2;
constexpr int WM = 64, WN = 32;  // warp tile
constexpr int MT = WM / 16, NT = WN / 8;  // m16 x n8 tiles per warp: 4 x 4
}  // namespace

// Fill stage buffers As (BM x BK) and Bs (BK x BN) with the tiles at (m0, k0) of A and (k0, n0) of B.
// ASYNC: 16-byte cp.async chunks of 8 elements (needs K % 8 == 0, N % 8 == 0, aligned rows), a chunk
// being wholly inside or wholly outside the matrix; else element by element with bounds checks.
template <typename T, bool ASYNC>
__device__ __forceinline__ void load_tiles(T* As, T* Bs, const T* __restrict__ A, const T* __restrict__ B,
                                           int M, int N, int K, int64_t lda, int64_t ldb, int m0, int n0,
                                           int k0) {
  const int tid = threadIdx.x;
  if (ASYNC) {
    // A tile: 128 rows x 4 chunks = 512 chunks, 2 per thread. B tile: 32 rows x 16 chunks = 512 chunks.
    for (int i = 0; i < 2; ++i) {
      const int chunk = tid + i * THREADS;
      const int r = chunk / (BK / 8), c = (chunk % (BK / 8)) * 8;
      const bool ok = (m0 + r < M) && (k0 + c < K);
      const T* src = ok ? A + (int64_t)(m0 + r) * lda + (k0 + c) : A;
      kb::cp_async_16_zfill(As + r * A_LD + c, src, ok);
    }
    for (int i = 0; i < 2; ++i) {
      const int chunk = tid + i * THREADS;
      const int r = chunk / (BN / 8), c = (chunk % (BN / 8)) * 8;
      const bool ok = (k0 + r < K) && (n0 + c < N);
      const T* src = ok ? B + (int64_t)(k0 + r) * ldb + (n0 + c) : B;
      kb::cp_async_16_zfill(Bs + r * B_LD + c, src, ok);
    }
  } else {
    const T zero = kb::from_f32<T>(0.0f);
    for (int e = tid; e < BM * BK; e += THREADS) {
      const int r = e / BK, c = e % BK;
      As[r * A_LD + c] = (m0 + r < M && k0 + c < K) ? A[(int64_t)(m0 + r) * lda + (k0 + c)] : zero;
    }
    for (int e = tid; e < BK * BN; e += THREADS) {
      const int r = e / BN, c = e % BN;
      Bs[r * B_LD + c] = (k0 + r < K && n0 + c < N) ? B[(int64_t)(k0 + r) * ldb + (n0 + c)] : zero;
    }
  }
}

// kb-report: kb_gemm_tc_kernel threads=256 smem_dynamic=56832
template <typename T, typename OutT, bool ASYNC>
__global__ void __launch_bounds__(256) kb_gemm_tc_kernel(const T* __restrict__ A, const T* __restrict__ B,
                                                         OutT* __restrict__ C, int M, int N, int K,
                                                         int64_t lda, int64_t ldb, int64_t ldc) {
  extern __shared__ __align__(16) float kb_smem[];  // 16-byte aligned for cp.async and ldmatrix
  T* As = reinterpret_cast<T*>(kb_smem);              // STAGES x [BM][A_LD]
  T* Bs = As + STAGES * A_STAGE;                       // STAGES x [BK][B_LD]

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / 4, wn = warp % 4;              // warp position in the 2 x 4 grid
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int KT = (K + BK - 1) / BK;

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  // Prologue: tiles 0 .. STAGES-2 in flight, one commit group each (empty groups keep the count exact).
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load_tiles<T, ASYNC>(As + s * A_STAGE, Bs + s * B_STAGE, A, B, M, N, K, lda, ldb, m0, n0, s * BK);
    kb::cp_async_commit();
  }

  for (int kt = 0; kt < KT; ++kt) {
    // Groups committed so far: STAGES-1+kt. At most STAGES-2 pending => tile kt has landed (this
    // thread's copies); the barrier makes every thread's copies visible and also guarantees that all
    // warps finished computing on tile kt-1, whose stage the prefetch below overwrites.
    kb::cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int pf = kt + STAGES - 1;
    if (pf < KT) {
      const int s = pf % STAGES;
      load_tiles<T, ASYNC>(As + s * A_STAGE, Bs + s * B_STAGE, A, B, M, N, K, lda, ldb, m0, n0, pf * BK);
    }
    kb::cp_async_commit();

    const T* as = As + (kt % STAGES) * A_STAGE;
    const T* bs = Bs + (kt % STAGES) * B_STAGE;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      // A fragments (16x16 each): lanes 0-15 address rows 0-15 at column kk, lanes 16-31 rows 0-15 at
      // kk+8; x4 returns (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
      // = a0..a3 of the mma A layout.
      uint32_t af[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int row = wm * WM + i * 16 + (lane % 16);
        kb::ldmatrix_x4(af[i], as + row * A_LD + kk + (lane / 16) * 8);
      }
      // B fragments: B is [k][n] in shared memory, so .trans: lanes 0-15 address k rows kk..kk+15 at
      // column n, lanes 16-31 the same rows at n+8; r0,r1 = (b0,b1) of n-tile n, r2,r3 of n-tile n+8.
      uint32_t bf[NT][2];
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        uint32_t r[4];
        const int col = wn * WN + j * 8 + (lane / 16) * 8;
        kb::ldmatrix_x4_trans(r, bs + (kk + (lane % 16)) * B_LD + col);
        bf[j][0] = r[0]; bf[j][1] = r[1];
        bf[j + 1][0] = r[2]; bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) kb::Mma<T>::run(acc[i][j], af[i], bf[j], acc[i][j]);
    }
  }
  kb::cp_async_wait_all();

  // Epilogue: C layout c0,c1 = (row g, cols 2t, 2t+1), c2,c3 = (row g+8, same cols).
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int col = n0 + wn * WN + j * 8 + 2 * t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + wm * WM + i * 16 + g + h * 8;
        if (row >= M) continue;
        OutT* c = C + (int64_t)row * ldc + col;
        if (col < N) c[0] = kb::from_f32<OutT>(acc[i][j][2 * h]);
        if (col + 1 < N) c[1] = kb::from_f32<OutT>(acc[i][j][2 * h + 1]);
      }
    }
  }
}

template <typename T, typename OutT>
static int launch(const void* a, const void* b, void* c, int M, int N, int K, int64_t lda, int64_t ldb,
                  int64_t ldc, void* stream) {
  const bool aligned = (K % 8 == 0) && (N % 8 == 0) && (lda % 8 == 0) && (ldb % 8 == 0) &&
                       ((uintptr_t)a % 16 == 0) && ((uintptr_t)b % 16 == 0);
  const dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
  if (aligned) {
    auto kernel = kb_gemm_tc_kernel<T, OutT, true>;
    KB_OPT_IN_SMEM_ONCE(kernel, SMEM_BYTES);
    KB_LAUNCH(kernel, grid, dim3(THREADS), SMEM_BYTES, stream, (const T*)a, (const T*)b, (OutT*)c, M, N, K,
              lda, ldb, ldc);
  } else {
    auto kernel = kb_gemm_tc_kernel<T, OutT, false>;
    KB_OPT_IN_SMEM_ONCE(kernel, SMEM_BYTES);
    KB_LAUNCH(kernel, grid, dim3(THREADS), SMEM_BYTES, stream, (const T*)a, (const T*)b, (OutT*)c, M, N, K,
              lda, ldb, ldc);
  }
  return kb_check_launch("kb_cuda_gemm");
}

// dtype: 1 = bf16, 2 = f16 (A and B). out_dtype: 0 = fp32, or equal to dtype.
extern "C" int kb_cuda_gemm(const void* a, const void* b, void* c, int dtype, int out_dtype, int64_t M,
                            int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, void* stream) {
  if (M < 0 || N < 0 || K < 0 || M > 2147483647LL || N > 2147483647LL || K > 2147483647LL ||
      (M + BM - 1) / BM > 65535)
    return kb_set_error(KB_EINVAL, "kb_cuda_gemm: bad shape M=%lld N=%lld K=%lld", (long long)M,
                        (long long)N, (long long)K);
  if (out_dtype != KB_F32 && out_dtype != dtype)
    return kb_set_error(KB_EINVAL, "kb_cuda_gemm: out_dtype %d must be 0 (fp32) or the input dtype %d",
                        out_dtype, dtype);
  if (M == 0 || N == 0) return KB_OK;
  const int m = (int)M, n = (int)N, k = (int)K;
  if (dtype == KB_BF16)
    return out_dtype == KB_F32 ? launch<__nv_bfloat16, float>(a, b, c, m, n, k, lda, ldb, ldc, stream)
                               : launch<__nv_bfloat16, __nv_bfloat16>(a, b, c, m, n, k, lda, ldb, ldc, stream);
  if (dtype == KB_F16)
    return out_dtype == KB_F32 ? launch<__half, float>(a, b, c, m, n, k, lda, ldb, ldc, stream)
                               : launch<__half, __half>(a, b, c, m, n, k, lda, ldb, ldc, stream);
  return kb_set_error(KB_EINVAL, "kb_cuda_gemm: dtype %d not supported (1 = bf16, 2 = f16)", dtype);
}
