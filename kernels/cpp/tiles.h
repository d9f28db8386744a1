// tiles.h -- the AMX tile operations the tile kernels use (attention_fwd_amx.cpp, int8_tiles.cpp), with two
// back ends selected at compile time:
//   KB_TILES_AMX  Intel AMX (Sapphire Rapids and later): the instructions themselves -- ldtilecfg, tileloadd,
//                 tilestored, tilezero, tdpbf16ps, tdpbssd. 8 tile registers of up to 16 rows x 64 bytes;
//                 one tdpbf16ps = a 16x32 bf16 A tile times a 32x16 bf16 B tile (VNNI pairs) into 16x16 fp32:
//                 16 K FLOPs per instruction, 1024 FLOP/cycle/core.
//   KB_TILES_ZMM  the same operations on AVX-512 with AVX512-BF16 (vdpbf16ps): a register file of 8 tiles in
//                 memory (8 KiB, L1), obeying the same tile configuration (rows, bytes per row; loads zero the
//                 rest of a tile, as tileloadd does). It is the model that tests the tile kernels' blocking,
//                 packing and tails on any AVX512-BF16 CPU (AMD Zen 4 has no AMX) and their fast path there:
//                 one 16x16x32 tdpbf16ps = 256 vdpbf16ps (64 FLOPs each) on 16 accumulator registers (16
//                 independent chains against vdpbf16ps's ~6-cycle latency), one B row load per 16.
// The int8 tdpbssd (signed x signed bytes, groups of 4 along K, int32 accumulation) is modelled in scalar
// code on the ZMM back end: it exists to test the int8 packing (int8_tiles.cpp), not to be fast there.
// Kernels hold one `Tiles` object per thread (empty on AMX) and name tiles by compile-time numbers.
// The back end follows the compilation (CMakeLists.txt compiles each tile kernel twice): KB_AMX_IMPL -> AMX in
// namespace kb_amx, KB_ZBF16_IMPL -> the AVX512-BF16 model in namespace kb_zbf16; a kernel writes its code once
// in `namespace KB_TNS`.
#pragma once
#if defined(KB_AMX_IMPL)
#define KB_TILES_AMX 1
#define KB_TNS kb_amx
#elif defined(KB_ZBF16_IMPL)
#define KB_TILES_ZMM 1
#define KB_TNS kb_zbf16
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// inlined into the kernels (as the instructions are on AMX); never a call through the PLT
#define KB_TILE_INLINE inline __attribute__((always_inline))

namespace kb_tiles {

struct alignas(64) TileConfig {   // the 64-byte ldtilecfg operand, palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  void set(int t, int nrows, int bytes_per_row) { rows[t] = uint8_t(nrows); colsb[t] = uint16_t(bytes_per_row); }
};

#if defined(KB_TILES_AMX)
// GCC's tile intrinsics paste the tile number into inline assembly (%%tmm##N), so each number is spelled out.
#define KB_TILE_EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
// the kernels' convention: C tiles tmm0-3, A tiles tmm4-5, B tiles tmm6-7
#define KB_TILE_DP(X) X(0, 4, 6) X(0, 4, 7) X(0, 5, 6) X(0, 5, 7) X(1, 4, 6) X(1, 4, 7) X(1, 5, 6) X(1, 5, 7) \
                      X(2, 4, 6) X(2, 4, 7) X(2, 5, 6) X(2, 5, 7) X(3, 4, 6) X(3, 4, 7) X(3, 5, 6) X(3, 5, 7)
struct Tiles {
  static constexpr const char* name = "amx";
  void configure(const TileConfig& c) { _tile_loadconfig(&c); }
  void release() { _tile_release(); }
  template <int T> void zero() {
#define KB_X(i) if constexpr (T == i) _tile_zero(i);
    KB_TILE_EACH(KB_X)
#undef KB_X
  }
  template <int T> void load(const void* p, int64_t stride) {
#define KB_X(i) if constexpr (T == i) _tile_loadd(i, p, stride);
    KB_TILE_EACH(KB_X)
#undef KB_X
  }
  template <int T> void store(void* p, int64_t stride) {
#define KB_X(i) if constexpr (T == i) _tile_stored(i, p, stride);
    KB_TILE_EACH(KB_X)
#undef KB_X
  }
  template <int C, int A, int B> void dpbf16() {
    static_assert(C >= 0 && C < 4 && A >= 4 && A < 6 && B >= 6 && B < 8, "C in tmm0-3, A in tmm4-5, B in tmm6-7");
#define KB_X(c, a, b) if constexpr (C == c && A == a && B == b) _tile_dpbf16ps(c, a, b);
    KB_TILE_DP(KB_X)
#undef KB_X
  }
  template <int C, int A, int B> void dpbssd() {
    static_assert(C >= 0 && C < 4 && A >= 4 && A < 6 && B >= 6 && B < 8, "C in tmm0-3, A in tmm4-5, B in tmm6-7");
#define KB_X(c, a, b) if constexpr (C == c && A == a && B == b) _tile_dpbssd(c, a, b);
    KB_TILE_DP(KB_X)
#undef KB_X
  }
};

#elif defined(KB_TILES_ZMM)
struct Tiles {
  static constexpr const char* name = "avx512-bf16";
  TileConfig cfg;
  alignas(64) uint8_t t[8][16][64];
  // Where each tile's rows are: t[i] (stride 64), or -- a full tile loaded without KB_TILES_STRICT -- the memory it
  // was loaded from, read when a dp uses it (no copy). Tile kernels never write a loaded tile's memory before the
  // tile's last use (the ASan build defines KB_TILES_STRICT: every load copies, exactly as tileloadd does).
  const uint8_t* src[8];
  int64_t ld[8];

  void configure(const TileConfig& c) {
    cfg = c;
    std::memset(t, 0, sizeof t);
    for (int i = 0; i < 8; ++i) { src[i] = t[i][0]; ld[i] = 64; }
  }
  void release() {}
  template <int T> KB_TILE_INLINE void zero() { std::memset(t[T], 0, sizeof t[T]); src[T] = t[T][0]; ld[T] = 64; }
  template <int T> KB_TILE_INLINE void load(const void* p, int64_t stride) {
    const int rows = cfg.rows[T], cols = cfg.colsb[T];
#if !defined(KB_TILES_STRICT)
    if (rows == 16 && cols == 64) { src[T] = static_cast<const uint8_t*>(p); ld[T] = stride; return; }
#endif
    const __mmask64 m = cols >= 64 ? ~__mmask64(0) : (__mmask64(1) << cols) - 1;
    for (int r = 0; r < 16; ++r) {
      __m512i v = r < rows ? _mm512_maskz_loadu_epi8(m, static_cast<const uint8_t*>(p) + r * stride)
                           : _mm512_setzero_si512();
      _mm512_store_si512(t[T][r], v);
    }
    src[T] = t[T][0]; ld[T] = 64;
  }
  template <int T> KB_TILE_INLINE void store(void* p, int64_t stride) {
    const int rows = cfg.rows[T], cols = cfg.colsb[T];
    const __mmask64 m = cols >= 64 ? ~__mmask64(0) : (__mmask64(1) << cols) - 1;
    for (int r = 0; r < rows; ++r)
      _mm512_mask_storeu_epi8(static_cast<uint8_t*>(p) + r * stride, m, _mm512_loadu_si512(src[T] + r * ld[T]));
  }
  template <int T> KB_TILE_INLINE float* own() {   // the tile's rows in t[T], for an accumulator
    if (src[T] != t[T][0]) {
      for (int r = 0; r < 16; ++r) _mm512_store_si512(t[T][r], _mm512_loadu_si512(src[T] + r * ld[T]));
      src[T] = t[T][0]; ld[T] = 64;
    }
    return reinterpret_cast<float*>(t[T]);
  }
  // C[m][n] += sum_k A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1]; M = rows(C), N = colsb(C)/4, K = colsb(A)/4.
  template <int C, int A, int B> KB_TILE_INLINE void dpbf16() {
    const int M = cfg.rows[C], N = cfg.colsb[C] / 4, K = cfg.colsb[A] / 4;
    const uint8_t* a = src[A];
    const uint8_t* b = src[B];
    const int64_t lda = ld[A], ldb = ld[B];
    float* c = own<C>();
    auto bcast = [&](int m, int k) {
      return (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int*>(a + m * lda + 4 * k));
    };
    if (M == 16 && N == 16 && K == 16) {   // full tiles: 16 accumulator registers, one B row per k
      __m512 acc[16];
#pragma GCC unroll 16
      for (int m = 0; m < 16; ++m) acc[m] = _mm512_load_ps(c + 16 * m);
#pragma GCC unroll 4
      for (int k = 0; k < 16; ++k) {
        const __m512bh bk = (__m512bh)_mm512_loadu_si512(b + k * ldb);
#pragma GCC unroll 16
        for (int m = 0; m < 16; ++m) acc[m] = _mm512_dpbf16_ps(acc[m], bcast(m, k), bk);
      }
#pragma GCC unroll 16
      for (int m = 0; m < 16; ++m) _mm512_store_ps(c + 16 * m, acc[m]);
      return;
    }
    const __mmask16 nm = N >= 16 ? __mmask16(0xffff) : __mmask16((1u << N) - 1u);
    for (int m = 0; m < M; ++m) {
      __m512 acc = _mm512_load_ps(c + 16 * m);
      for (int k = 0; k < K; ++k) acc = _mm512_dpbf16_ps(acc, bcast(m, k), (__m512bh)_mm512_loadu_si512(b + k * ldb));
      _mm512_mask_store_ps(c + 16 * m, nm, acc);
    }
  }
  // C[m][n] += sum_k sum_i int8 A[m][4k+i] * int8 B[k][4n+i] (int32, wrapping as the hardware does)
  template <int C, int A, int B> void dpbssd() {
    const int M = cfg.rows[C], N = cfg.colsb[C] / 4, K = cfg.colsb[A] / 4;
    own<C>();
    const int8_t* a = reinterpret_cast<const int8_t*>(src[A]);
    const int8_t* b = reinterpret_cast<const int8_t*>(src[B]);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        int32_t c;
        std::memcpy(&c, &t[C][m][4 * n], 4);
        uint32_t acc = uint32_t(c);
        for (int k = 0; k < K; ++k)
          for (int i = 0; i < 4; ++i)
            acc += uint32_t(int32_t(a[m * ld[A] + 4 * k + i]) * int32_t(b[k * ld[B] + 4 * n + i]));
        std::memcpy(&t[C][m][4 * n], &acc, 4);
      }
  }
};
#endif

}  // namespace kb_tiles
