// kb_device.h: the nvcc side of kb_cuda.h. The launch macros and the tensor-core / async-copy wrappers
// that kernels in kernels/cuda/ may use (docs/CONTRACTS.md §3), written as inline PTX with the semantics
// and fragment layouts of the PTX ISA. The CPU simulation (sim/kb_sim.h) implements the same list, so a
// kernel that uses only these runs unchanged on both. Nothing else in kernels/cuda/ may use inline asm.
//
// PTX references (PTX ISA 8.x, "Warp-level matrix instructions"):
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: A 16x16 row-major, B 16x8 col-major,
//     C/D 16x8 fp32. With g = lane/4 and t = lane%4 (each register holds two 16-bit elements, low half first):
//       A: a0 = (row g,   cols 2t,2t+1)  a1 = (row g+8, cols 2t,2t+1)
//          a2 = (row g,   cols 2t+8,+9)  a3 = (row g+8, cols 2t+8,+9)
//       B: b0 = (rows k 2t,2t+1, col g)  b1 = (rows k 2t+8,2t+9, col g)
//       C: c0,c1 = (row g, cols 2t,2t+1) c2,c3 = (row g+8, cols 2t,2t+1)
//   ldmatrix.sync.aligned.m8n8.x{2,4}[.trans].shared.b16: lanes 8i..8i+7 give the addresses of the 8 rows
//     (16 bytes each) of matrix i; register r[i] of lane l holds matrix i's (row l/4, cols 2(l%4), +1),
//     or with .trans its (rows 2(l%4), +1, col l/4). For .x2 only lanes 0..15 supply addresses.
//   cp.async.cg.shared.global [dst], [src], 16, src_size: copies src_size bytes and zero-fills the rest.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Launch through a macro so the simulation can run the same call. `kernel` must be a single token or a
// function pointer variable (template arguments contain commas: `auto k = f<64, true>; KB_LAUNCH(k, ...)`).
#define KB_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  (kernel)<<<(grid), (block), (smem_bytes), (cudaStream_t)(stream)>>>(__VA_ARGS__)

// Opt in to more than 48 KiB of dynamic shared memory for `kernel`; evaluates to a cudaError_t.
#define KB_SET_MAX_DYNAMIC_SMEM(kernel, bytes) \
  cudaFuncSetAttribute((const void*)(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(bytes))

namespace kb {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// D = A * B + C on tensor cores, one warp, bf16 inputs, fp32 accumulate (2*16*8*16 = 4096 FLOPs).
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// Same with fp16 inputs.
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// Sparse D = A * B + C with A 2:4-sparse (16x32, stored compressed as 16x16), B 32x8, fp32 accumulate:
// mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.{bf16,f16}.{bf16,f16}.f32, sparsity selector 0
// (2*16*8*32 = 8192 dense-equivalent FLOPs, half of them multiplied). PTX ISA 8.5+, sm_80+.
//   A (compressed): the m16n8k16 A layout of the 16x16 kept values: a0 = (row g, kept 2t,2t+1) = the two kept
//     values of row g's 4-wide chunk t (columns 4t..4t+3); a1 = row g+8, chunk t; a2 = row g, chunk 4+t
//     (columns 16+4t..); a3 = row g+8, chunk 4+t.
//   B: b0 = (rows k 2t,2t+1, col g), b1 = rows 2t+8,+9, b2 = rows 2t+16,+17, b3 = rows 2t+24,+25.
//   e (metadata, selector 0: lanes with t = 0 and 1 supply it): for lane 4g + h (h = 0, 1), bits 0..15 =
//     row g, columns 16h..16h+15, bits 16..31 = row g+8, same columns; chunk j of those 16 columns in bits
//     4j..4j+3, the first kept index (0..3) in the low 2 bits, the second, larger one in the high 2 bits.
__device__ __forceinline__ void mma_sp_m16n8k32_bf16(float d[4], const uint32_t a[4], const uint32_t b[4],
                                                     const float c[4], uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%12,%13,%14,%15}, %16, 0x0;\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]), "r"(e));
}

__device__ __forceinline__ void mma_sp_m16n8k32_f16(float d[4], const uint32_t a[4], const uint32_t b[4],
                                                    const float c[4], uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%12,%13,%14,%15}, %16, 0x0;\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]), "r"(e));
}

// D = A * B + C on tensor cores, one warp, int8 inputs, int32 accumulate (2*16*8*32 = 8192 integer ops; IMMA).
__device__ __forceinline__ void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2],
                                                const int32_t c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}

// Four 8x8 b16 matrices from shared memory; `smem` is this lane's row address (16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(smem)));
}

// 16-byte global -> shared copy that bypasses L1 (.cg); both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}

// As cp_async_16 but writes 16 zero bytes instead when !valid (gmem is then not read, yet must be a
// valid address expression: pass the tensor's base pointer).
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// Two floats -> one register of two 16-bit values, `lo` in bits 0..15 (round to nearest even).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace kb
