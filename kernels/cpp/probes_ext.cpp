// probes_ext.cpp -- the ceiling probes that need instructions beyond AVX-512F (see probes.cpp for the
// others and for how every probe is checked). Compiled once with -mavx512bf16 -mamx-tile -mamx-bf16
// -mamx-int8; the entry points in probes.cpp call in here only after CPUID (and, for AMX, Linux's grant of
// the tile state) said the instructions are there.
//
// vdpbf16ps peak: 16 independent accumulators (zmm) per thread; one instruction = 32 bf16 products summed
// in pairs into 16 fp32 lanes = 64 FLOPs (32 multiplies + 32 adds).
// AMX tile peak (Intel SDM, "Intel AMX"): tiles tmm0-3 accumulate C (16 x 16 fp32 or int32 each), tmm4-5
// hold two A tiles, tmm6-7 two B tiles; per iteration four independent tile products
//   tdpbf16ps: 16 x 16 x 32 multiply-adds = 16384 FLOPs each; tdpbssd: 16 x 16 x 64 = 32768 int8 ops each.
// Sapphire Rapids issues one tile product per 16 cycles per core: 1024 bf16 FLOP/cycle, 2048 int8 op/cycle.
// The tiles are loaded once per block (from L1), so the loop measures TMUL alone, as the datasheet counts it.
// NOT RUN on the machine these were written on (an AMD EPYC without AMX): the AMX rows there are `skipped`.
#include <immintrin.h>
#include <omp.h>

#include <cstring>

#include "kb_cpp.h"

namespace kb_probe_ext {

int dpbf16(const float* init, const uint16_t* ab, float* out, int64_t blocks, int64_t iters, int threads) {
  constexpr int ACC = 16;
  const int nt = kb::threads_for(threads, blocks, 1);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    __m512bh va, vb;
    std::memcpy(&va, ab, 64);
    std::memcpy(&vb, ab + 32, 64);
    __m512 acc[ACC];
    for (int k = 0; k < ACC; ++k) acc[k] = _mm512_loadu_ps(init + (blk * ACC + k) * 16);
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
      for (int k = 0; k < ACC; ++k) {
        acc[k] = _mm512_dpbf16_ps(acc[k], va, vb);
        __asm__ volatile("" : "+v"(acc[k]));      // every instruction of every iteration is executed
      }
    }
    for (int k = 0; k < ACC; ++k) _mm512_storeu_ps(out + (blk * ACC + k) * 16, acc[k]);
  }
  return 0;
}

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

template <int KIND>
static void amx_blocks(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t blocks, int64_t iters) {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);
#pragma omp for schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, a, 64); _tile_loadd(5, a + 1024, 64);
    _tile_loadd(6, b, 64); _tile_loadd(7, b + 1024, 64);
    for (int64_t it = 0; it < iters; ++it) {
      if constexpr (KIND == kb::BF16) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
      } else {
        _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7); _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
      }
    }
    uint8_t* o = out + blk * 4 * 1024;              // 4 tiles of 16 x 16 x 4 bytes
    _tile_stored(0, o, 64); _tile_stored(1, o + 1024, 64); _tile_stored(2, o + 2048, 64);
    _tile_stored(3, o + 3072, 64);
  }
  _tile_release();
}

int amx(int kind, const void* a, const void* b, void* out, int64_t blocks, int64_t iters, int threads) {
  const int nt = kb::threads_for(threads, blocks, 1);
  auto A = static_cast<const uint8_t*>(a), B = static_cast<const uint8_t*>(b);
  auto O = static_cast<uint8_t*>(out);
#pragma omp parallel num_threads(nt)
  {
    if (kind == kb::BF16) amx_blocks<kb::BF16>(A, B, O, blocks, iters);
    else amx_blocks<3>(A, B, O, blocks, iters);
  }
  return 0;
}

}  // namespace kb_probe_ext
