// quant_int8_gemm.cpp -- W8A8 GEMM on AVX512-VNNI: out[M,N] = (A[M,K] (int8) @ W[N,K]^T (int8)) * sa[m] * sw[n],
// int32 accumulation, fp32 scales, fp32 or bf16 output. v2 of the int8 GEMM for CPUs without AMX (AMD Zen 4),
// kb_cpp_gemm_w8a8_vnni_v2 (variant `cpp_vnni_v2`): the rung below v3 (quant_int8_gemm_v3.cpp, which says what this
// one lost: its accumulators were spilled to the stack on every k step); and the packer of the weights both read
// (kb_cpp_pack_w8_vnni; layout in quant_int8_gemm.h). The AMX int8 tile path (tdpbssd, int8_tiles.cpp) is the rung
// for Sapphire Rapids and is not wired in here.
//
// vpdpbusd multiplies *unsigned* bytes of one operand by *signed* bytes of the other, 4 products per 32-bit lane
// summed into the lane (16 lanes x 4 = 64 MACs per instruction). Signed activations are made unsigned by adding
// 128 (a xor 0x80, once per call into a zero-padded copy), and the extra 128 * sum_k W[n,k] is subtracted in
// the epilogue: `colsum` is computed once when
// the weights are packed (oneDNN's compensation scheme).
// Packed weights (kb_cpp_pack_w8_vnni, once per weight, outside the timing): for each block of 16 output channels,
// [K/4 quads][16 channels][4 bytes] -- 64 bytes per quad, one zmm -- zero-padded to K % 4 and N % 16, then
// colsum int32 [N padded to 16] = 128 * sum_k W[n, k].
// Micro-kernel: MR x 48 outputs (MR <= 8 rows of A, 3 blocks of 16 channels) in MR*3 zmm accumulators; per quad
// 3 weight loads, MR broadcasts of 4 activation bytes from memory, MR*3 vpdpbusd (v2: a is converted to
// unsigned once per call into a padded copy; v1 xored each broadcast scalar and handled the K % 4 tail apart).
// K is not blocked:
// one 48-channel panel of packed weights (48 * K bytes: 192 KiB at K = 4096) stays in L2 while all rows of A pass.
// Work: 2MNK integer ops; bytes: MK + NK (int8) + 4(M + N) scales + M N out.
// Threads: OpenMP over (row block, column panel) tiles, dynamic schedule.
// Measured: 0.84-1.04x bf16 torch.matmul at M = 128 and 2048 (README, quant_gemm; v3 2.0-2.3x in the same runs).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "quant_int8_gemm.h"

KB_DECLARE(int gemm_w8a8_vnni_v2(const kb::W8A8Args&))

#if KB_IMPL
#include <immintrin.h>

namespace KB_NS {
#if defined(KB_ISA_AVX512)
// vpdpbusd: only these functions are compiled for VNNI; the entry point checks the CPU has it before calling.
#pragma GCC push_options
#pragma GCC target("avx512vnni")
namespace {
constexpr int NB = 3;          // 16-channel blocks per micro-tile: 48 outputs
constexpr int MRMAX = 8;

template <int MR>
void micro(const kb::W8A8Args& g, const uint8_t* au, int64_t m0, int64_t jb0, int nb) {
  const int64_t kq = kb::w8_kq(g.K), np = kb::w8_np(g.N);
  const uint8_t* wp = g.w;
  const int32_t* colsum = reinterpret_cast<const int32_t*>(g.w + np * kq * 4);
  __m512i acc[MR][NB];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
  const uint8_t* arow = au + m0 * kq * 4;            // MR rows of a ^ 0x80, kq quads each (zero-padded)
  const uint8_t* b[NB];
  for (int j = 0; j < NB; ++j) b[j] = wp + (jb0 + (j < nb ? j : 0)) * kq * 64;
  for (int64_t q = 0; q < kq; ++q) {
    __m512i bw[NB];
#pragma GCC unroll 3
    for (int j = 0; j < NB; ++j) bw[j] = _mm512_loadu_si512(b[j] + q * 64);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t v;
      std::memcpy(&v, arow + (i * kq + q) * 4, 4);
      const __m512i ai = _mm512_set1_epi32(v);          // vpbroadcastd from memory
#pragma GCC unroll 3
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], ai, bw[j]);
    }
  }
  // epilogue: (acc - colsum) * sa[m] * sw[n]
  for (int j = 0; j < nb; ++j) {
    const int64_t n0 = (jb0 + j) * 16;
    const int nn = int(std::min<int64_t>(16, g.N - n0));
    const __mmask16 mk = nn >= 16 ? __mmask16(0xffff) : __mmask16((1u << nn) - 1u);
    const __m512i cs = _mm512_loadu_si512(colsum + n0);
    const __m512 sw = _mm512_maskz_loadu_ps(mk, g.sw + n0);
    for (int i = 0; i < MR; ++i) {
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][j], cs)), sw),
                                     _mm512_set1_ps(g.sa[m0 + i]));
      if (g.out_dtype == kb::F32) {
        _mm512_mask_storeu_ps(static_cast<float*>(g.out) + (m0 + i) * g.ldo + n0, mk, v);
      } else {
        alignas(64) float t[16];
        _mm512_store_ps(t, v);
        uint16_t* o = static_cast<uint16_t*>(g.out) + (m0 + i) * g.ldo + n0;
        for (int e = 0; e < nn; ++e) o[e] = kb::f32_to_bf16(t[e]);
      }
    }
  }
}

using MicroFn = void (*)(const kb::W8A8Args&, const uint8_t*, int64_t, int64_t, int);
constexpr MicroFn MICRO[MRMAX + 1] = {nullptr, micro<1>, micro<2>, micro<3>, micro<4>,
                                      micro<5>, micro<6>, micro<7>, micro<8>};
}  // namespace

int gemm_w8a8_vnni_v2(const kb::W8A8Args& g) {
  // a as unsigned bytes (a ^ 0x80 = a + 128), rows padded to whole quads with zeros (which meet the packed weights'
  // zero padding): M * K bytes, a pass over a before the product
  const int64_t kq = kb::w8_kq(g.K);
  kb::Scratch ubuf(size_t(g.M * kq * 4));
  if (!ubuf.p) return kb::set_error(kb::E_NOMEM, "gemm_w8a8_vnni_v2: out of memory");
  uint8_t* au = ubuf.as<uint8_t>();
  for (int64_t m = 0; m < g.M; ++m) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(g.a + m * g.lda);
    uint8_t* dst = au + m * kq * 4;
    for (int64_t k = 0; k < g.K; ++k) dst[k] = src[k] ^ 0x80;
    for (int64_t k = g.K; k < kq * 4; ++k) dst[k] = 0;
  }
  const int64_t nblocks = kb::w8_np(g.N) / 16;
  const int64_t panels = (nblocks + NB - 1) / NB, mblocks = (g.M + MRMAX - 1) / MRMAX;
  const int nthreads = kb::threads_for(g.threads, g.M * g.N * std::max<int64_t>(g.K, 1), int64_t(1) << 21);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
  for (int64_t t = 0; t < panels * mblocks; ++t) {
    const int64_t p = t / mblocks, ib = t % mblocks;          // rows fastest: a weight panel is reused from L2
    const int64_t m0 = ib * MRMAX;
    const int mr = int(std::min<int64_t>(MRMAX, g.M - m0));
    const int nb = int(std::min<int64_t>(NB, nblocks - p * NB));
    MICRO[mr](g, au, m0, p * NB, nb);
  }
  return 0;
}
#pragma GCC pop_options
#else
int gemm_w8a8_vnni_v2(const kb::W8A8Args&) {
  return kb::set_error(kb::E_ISA, "gemm_w8a8_vnni_v2: needs AVX-512 with VNNI");
}
#endif
}  // namespace KB_NS

#else  // entry points

// bytes of the packed weights of an [N, K] int8 weight (kb_cpp_pack_w8_vnni's output)
KB_API int64_t kb_cpp_w8_vnni_packed_bytes(int64_t N, int64_t K) { return int64_t(kb::w8_packed_bytes(N, K)); }

// Pack W[N, K] (int8, row stride ldw) for kb_cpp_gemm_w8a8_vnni into `packed` (kb_cpp_w8_vnni_packed_bytes bytes).
KB_API int kb_cpp_pack_w8_vnni(const void* w, void* packed, int64_t N, int64_t K, int64_t ldw) {
  if (!w || !packed || N <= 0 || K <= 0 || ldw < K)
    return kb::set_error(kb::E_ARG, "pack_w8_vnni: bad arguments (N=%lld K=%lld ldw=%lld)", (long long)N,
                         (long long)K, (long long)ldw);
  const int8_t* W = static_cast<const int8_t*>(w);
  uint8_t* P = static_cast<uint8_t*>(packed);
  const int64_t kq = kb::w8_kq(K), np = kb::w8_np(N);
  int32_t* colsum = reinterpret_cast<int32_t*>(P + np * kq * 4);
  for (int64_t jb = 0; jb < np / 16; ++jb)
    for (int64_t q = 0; q < kq; ++q)
      for (int64_t c = 0; c < 16; ++c)
        for (int64_t e = 0; e < 4; ++e) {
          const int64_t n = jb * 16 + c, k = 4 * q + e;
          P[((jb * kq + q) * 16 + c) * 4 + e] = uint8_t(n < N && k < K ? W[n * ldw + k] : 0);
        }
  for (int64_t n = 0; n < np; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; n < N && k < K; ++k) s += W[n * ldw + k];
    colsum[n] = 128 * s;
  }
  return 0;
}

// v2 of kb_cpp_gemm_w8a8_vnni (quant_int8_gemm_v3.cpp): the same arguments and packed weights; kept runnable as the
// rung below v3 (suite variant `cpp_vnni_v2`), so the figures in this header can be re-measured.
KB_API int kb_cpp_gemm_w8a8_vnni_v2(const void* a, const void* sa, const void* packed, const void* sw, void* out,
                                    int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldo, int out_dtype,
                                    int threads) {
  return kb::w8a8_entry("gemm_w8a8_vnni_v2", kb_avx512::gemm_w8a8_vnni_v2, a, sa, packed, sw, out, M, N, K, lda,
                        ldo, out_dtype, threads);
}
#endif
