// int8_tiles.cpp -- the int8 AMX tile path: packing of int8 operands into tile layouts and C[M,N] (int32) =
// A[M,K] (int8) @ B[K,N] (int8) on tdpbssd (signed x signed bytes, groups of 4 along K, int32 accumulation).
// A building block for the quantization GEMMs (W8A8): their kernels take these packers and the micro-kernel,
// then add their scales and rounding in the epilogue. Compiled for AMX (kb_amx) and for the tile model
// (kb_zbf16, tiles.h), where tdpbssd is modelled in scalar code: it tests the layouts on CPUs without AMX and is
// not meant to be fast there.
//
// Layouts (one tile = 16 rows x 64 bytes = 1 KiB, loaded with stride 64):
//   A: Ap[M/16 row blocks][K/64 k-steps][16 rows][64 k]               int8, zero-padded past M and K
//   B: Bp[N/16 column blocks][K/64 k-steps][16 k-quads][16 columns][4] the VNNI layout for bytes: rows 4q..4q+3
//                                                                      of B interleaved per column, zero-padded
//   Block counts are rounded up to even (32 rows / columns: the micro-kernel's C block), s8_blocks().
// Micro-kernel: a 32 x 32 block of C in tmm0-3 over the whole K (2 A tiles, 2 B tiles per 64-deep k-step,
// 4 tdpbssd = 4 x 16 x 16 x 64 MACs = 131 K integer ops), stored once as int32.
// FLOPs (integer ops) 2MNK; bytes ideally MK + KN + 4MN.
// Measured: not timed here (this CPU has no AMX; the model's tdpbssd is scalar) -- correctness only, see
// tests/test_cpp_kernels.py::test_int8_tiles.
#include <omp.h>

#include <algorithm>

#include "kb_cpp.h"

namespace kb {
struct GemmS8Args {
  const int8_t* a; const int8_t* b; int32_t* c;
  int64_t M, N, K, lda, ldb, ldc;
  int threads;
};
}  // namespace kb

namespace kb_amx { int gemm_s8s8s32(const kb::GemmS8Args&); }
namespace kb_zbf16 { int gemm_s8s8s32(const kb::GemmS8Args&); }

#if defined(KB_AMX_IMPL) || defined(KB_ZBF16_IMPL)
#include "int8_tiles.h"
#include "tiles.h"

namespace KB_TNS {

void pack_a_s8(const int8_t* A, int64_t lda, int64_t M, int64_t K, int8_t* Ap) {
  const int64_t ksteps = (K + 63) / 64, mblocks = s8_blocks(M);
  for (int64_t ib = 0; ib < mblocks; ++ib)
    for (int64_t ks = 0; ks < ksteps; ++ks) {
      const int64_t kn = std::min<int64_t>(64, K - ks * 64);
      const __mmask64 m = kn >= 64 ? ~__mmask64(0) : (__mmask64(1) << kn) - 1;
      for (int64_t r = 0; r < 16; ++r) {
        const int64_t i = ib * 16 + r;
        const __m512i v = i < M ? _mm512_maskz_loadu_epi8(m, A + i * lda + ks * 64) : _mm512_setzero_si512();
        _mm512_store_si512(Ap + ((ib * ksteps + ks) * 16 + r) * 64, v);
      }
    }
}

void pack_b_s8(const int8_t* B, int64_t ldb, int64_t K, int64_t N, int8_t* Bp) {
  const int64_t ksteps = (K + 63) / 64, nblocks = s8_blocks(N);
  for (int64_t jb = 0; jb < nblocks; ++jb)
    for (int64_t ks = 0; ks < ksteps; ++ks)
      for (int64_t q = 0; q < 16; ++q) {
        int8_t* dst = Bp + ((jb * ksteps + ks) * 16 + q) * 64;
        for (int64_t c = 0; c < 16; ++c)
          for (int64_t e = 0; e < 4; ++e) {
            const int64_t k = ks * 64 + 4 * q + e, n = jb * 16 + c;
            dst[c * 4 + e] = k < K && n < N ? B[k * ldb + n] : int8_t(0);
          }
      }
}

int gemm_s8s8s32(const kb::GemmS8Args& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t ksteps = (K + 63) / 64;
  kb::Scratch apack(s8_packed_bytes(M, K)), bpack(s8_packed_bytes(N, K));
  if ((K > 0 && !apack.p) || (K > 0 && !bpack.p)) return kb::set_error(kb::E_NOMEM, "gemm_s8s8s32: out of memory");
  int8_t* Ap = apack.as<int8_t>();
  int8_t* Bp = bpack.as<int8_t>();
  const int nthreads = kb::threads_for(g.threads, M * N * std::max<int64_t>(K, 1), int64_t(1) << 21);
  const int64_t mtiles = (M + 31) / 32, ntiles = (N + 31) / 32;
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp single
    if (K > 0) {
      pack_a_s8(g.a, g.lda, M, K, Ap);
      pack_b_s8(g.b, g.ldb, K, N, Bp);
    }
    kb_tiles::Tiles T;
    kb_tiles::TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.set(t, 16, 64);
    T.configure(cfg);
    alignas(64) int32_t ct[32 * 32];
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < mtiles * ntiles; ++t) {
      const int64_t it = t % mtiles, jt = t / mtiles;
      const int8_t* a0 = Ap + 2 * it * ksteps * 1024;   // row blocks 2it, 2it + 1
      const int8_t* b0 = Bp + 2 * jt * ksteps * 1024;   // column blocks 2jt, 2jt + 1
      T.zero<0>(); T.zero<1>(); T.zero<2>(); T.zero<3>();
      for (int64_t ks = 0; ks < ksteps; ++ks) {
        T.load<4>(a0 + ks * 1024, 64);
        T.load<5>(a0 + (ksteps + ks) * 1024, 64);
        T.load<6>(b0 + ks * 1024, 64);
        T.load<7>(b0 + (ksteps + ks) * 1024, 64);
        T.dpbssd<0, 4, 6>(); T.dpbssd<1, 4, 7>(); T.dpbssd<2, 5, 6>(); T.dpbssd<3, 5, 7>();
      }
      T.store<0>(ct, 128); T.store<1>(ct + 16, 128); T.store<2>(ct + 16 * 32, 128); T.store<3>(ct + 16 * 32 + 16, 128);
      const int64_t rows = std::min<int64_t>(32, M - it * 32), cols = std::min<int64_t>(32, N - jt * 32);
      for (int64_t r = 0; r < rows; ++r)
        std::copy(ct + r * 32, ct + r * 32 + cols, g.c + (it * 32 + r) * g.ldc + jt * 32);
    }
    T.release();
  }
  return 0;
}

}  // namespace KB_TNS

#else  // entry point

// C[M,N] (int32) = A[M,K] (int8) @ B[K,N] (int8), row-major with row strides (elements); int32 wraps on overflow
// as the hardware does (|C| < 2^31 when K < 2^17). AMX where the CPU has it, else the tile model.
KB_API int kb_cpp_gemm_s8s8s32_tiles(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K,
                                     int64_t lda, int64_t ldb, int64_t ldc, int threads) {
  if (((!a || !b) && K > 0) || (!c && M > 0 && N > 0) || M < 0 || N < 0 || K < 0 || (M > 1 && lda < K) ||
      (K > 1 && ldb < N) || (M > 1 && ldc < N))
    return kb::set_error(kb::E_ARG, "gemm_s8s8s32: bad arguments (M=%lld N=%lld K=%lld)", (long long)M, (long long)N,
                         (long long)K);
  if (M == 0 || N == 0) return 0;
  kb::GemmS8Args g{static_cast<const int8_t*>(a), static_cast<const int8_t*>(b), static_cast<int32_t*>(c),
                   M, N, K, lda, ldb, ldc, threads};
  switch (kb::tile_backend()) {
    case kb::TILES_AMX: return kb_amx::gemm_s8s8s32(g);
    case kb::TILES_ZMM: return kb_zbf16::gemm_s8s8s32(g);
    default: return kb::set_error(kb::E_ISA, "gemm_s8s8s32: the CPU has neither AMX nor AVX512-BF16");
  }
}
#endif
