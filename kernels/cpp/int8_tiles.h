// int8_tiles.h -- the int8 tile packers of int8_tiles.cpp, for the kernels that reuse them (quantized GEMMs).
// Layouts are documented in int8_tiles.cpp; both namespaces hold the same code (AMX build, tile-model build).
#pragma once
#include <cstddef>
#include <cstdint>

// 16-row (16-column) blocks of a packed operand with `n` rows of A (columns of B): rounded up to even
inline int64_t s8_blocks(int64_t n) { return (n + 31) / 32 * 2; }
// bytes of a packed operand: s8_blocks(n) blocks x ceil(k / 64) k-steps x 1 KiB tiles
inline size_t s8_packed_bytes(int64_t n, int64_t k) { return size_t(s8_blocks(n)) * size_t((k + 63) / 64) * 1024; }

#define KB_INT8_TILES_DECLARE                                                                               \
  void pack_a_s8(const int8_t* A, int64_t lda, int64_t M, int64_t K, int8_t* Ap); /* Ap: s8_packed_bytes(M, K) */ \
  void pack_b_s8(const int8_t* B, int64_t ldb, int64_t K, int64_t N, int8_t* Bp); /* Bp: s8_packed_bytes(N, K) */
namespace kb_amx { KB_INT8_TILES_DECLARE }
namespace kb_zbf16 { KB_INT8_TILES_DECLARE }
#undef KB_INT8_TILES_DECLARE
