// probes.cpp -- ceilings of this CPU, measured by native loops (the peak suite's `cpp` variants; stored in
// results/peaks/ and used for `% peak`). Four probes, each checkable against a closed form so a compiler
// that drops work, or a loop that runs fewer iterations than declared, fails the check instead of reporting
// an impossible figure:
//
// 1. Streaming-store copy (kb_cpp_probe_stream_copy): dst = src with non-temporal stores (vmovntps). Bytes:
//    read n + write n. A plain copy (torch's copy_) reads each destination line before writing it
//    (read-for-ownership), so DRAM moves 3n bytes for 2n counted, and the row kernels that use streaming
//    stores (softmax, norms) measured above "100% of peak" against it. This probe is the ceiling those
//    kernels can reach: one read stream and one write stream, no RFO. Threads split the array statically.
// 2. Vector FMA peak (kb_cpp_probe_fma): ACC independent accumulator registers per thread, each updated
//    acc = acc * m + c for `iters` iterations. ACC = 16 zmm (or ymm) chains cover the FMA latency (4 cycles)
//    times two FMA pipes with room to spare. FLOPs: 2 per lane per iteration = blocks x 16 x ACC_LANES x 2 x
//    iters. Closed form: acc_n = m^n acc_0 + c (1 - m^n) / (1 - m).
// 3. AVX512-BF16 dot peak (kb_cpp_probe_dpbf16, in probes_bf16.cpp): vdpbf16ps, 32 bf16 products summed
//    in pairs into 16 fp32 lanes = 64 FLOPs per instruction. Closed form: acc_n = acc_0 + n (a.b per lane).
// The AMX tile probes are in probes_amx.cpp.
// 4. Sequential read (kb_cpp_probe_read, 2026-12-01): out[0] = the xor of the n 32-bit words of src, one vector
//    load (64 bytes with AVX-512) xored into an accumulator per iteration, threads split the array statically.
//    Bytes: read n x 4, nothing written but 4 bytes: the ceiling of the kernels that only read (paged decode
//    reads the KV cache and writes a row per query). Closed form: the xor of the words (exact,
//    any order), so a loop that skipped a line fails the check; the result is stored, so the loads stay in the
//    object (`objdump -d` shows vpxord / vpxor with memory operands in probe_read).
//
// Measured: see docs/peaks.md (the figures, the theoretical peak beside them, and the machine's load).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kb_cpp.h"

#if KB_IMPL
namespace KB_NS {

#if defined(KB_ISA_AVX512)
using vec = __m512;
constexpr int W = 16;
constexpr int ACC = 16;   // independent FMA chains per thread: 16 of the 32 zmm registers
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
static inline void vstream(float* p, vec v) { _mm512_stream_ps(p, v); }   // p 64-byte aligned
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vset1(float x) { return _mm512_set1_ps(x); }
#else
using vec = __m256;
constexpr int W = 8;
constexpr int ACC = 12;   // 12 of the 16 ymm registers (m, c and spare left free: no spills)
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
static inline void vstream(float* p, vec v) { _mm256_stream_ps(p, v); }   // p 32-byte aligned
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vset1(float x) { return _mm256_set1_ps(x); }
#endif

// Copy n floats with streaming stores. The head up to dst's alignment and the tail are copied plainly.
int probe_stream_copy(const float* src, float* dst, int64_t n, int threads) {
  const int nt = kb::threads_for(threads, n, 1 << 16);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    // Split at multiples of 64 floats (4 KiB lines groups) so each thread's chunk starts aligned like dst.
    const int64_t per = (n / T + 63) / 64 * 64;
    const int64_t lo = std::min<int64_t>(n, per * t), hi = std::min<int64_t>(n, per * (t + 1));
    int64_t i = lo;
    while (i < hi && (reinterpret_cast<uintptr_t>(dst + i) % (W * 4)) != 0) { dst[i] = src[i]; ++i; }
    for (; i + 4 * W <= hi; i += 4 * W) {         // 4 vectors per iteration: one 64-byte line or more
      vec a = vload(src + i), b = vload(src + i + W), c = vload(src + i + 2 * W), d = vload(src + i + 3 * W);
      vstream(dst + i, a); vstream(dst + i + W, b); vstream(dst + i + 2 * W, c); vstream(dst + i + 3 * W, d);
    }
    for (; i < hi; ++i) dst[i] = src[i];
    _mm_sfence();                                   // the streaming stores are visible before we return
  }
  return 0;
}

// out[blk][j] for blk < blocks, j < ACC * W: ACC chains of W lanes, starting from init[blk][j].
// FMA latency 4 cycles x 2 pipes = 8 chains in flight needed; ACC >= 12 hides it.
int probe_fma(const float* init, float* out, int64_t blocks, int64_t iters, float m, float c, int threads) {
  const int nt = kb::threads_for(threads, blocks, 1);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* in = init + blk * ACC * W;
    vec a[ACC];
    for (int k = 0; k < ACC; ++k) a[k] = vload(in + k * W);
    const vec vm = vset1(m), vc = vset1(c);
    for (int64_t it = 0; it < iters; ++it) {
      // ACC independent FMAs; the empty asm keeps the compiler from folding iterations (it cannot see
      // through it, so every FMA of every iteration is executed, in a register).
#pragma GCC unroll 16
      for (int k = 0; k < ACC; ++k) {
        a[k] = vfma(a[k], vm, vc);
        __asm__ volatile("" : "+v"(a[k]));
      }
    }
    float* o = out + blk * ACC * W;
    for (int k = 0; k < ACC; ++k) vstore(o + k * W, a[k]);
  }
  return 0;
}

int probe_block_floats() { return ACC * W; }

#if defined(KB_ISA_AVX512)
using ivec = __m512i;
static inline ivec iload(const uint32_t* p) { return _mm512_loadu_si512(p); }
static inline ivec ixor(ivec a, ivec b) { return _mm512_xor_si512(a, b); }
static inline ivec izero() { return _mm512_setzero_si512(); }
#else
using ivec = __m256i;
static inline ivec iload(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static inline ivec ixor(ivec a, ivec b) { return _mm256_xor_si256(a, b); }
static inline ivec izero() { return _mm256_setzero_si256(); }
#endif

// out[0] = xor of src[0:n] (32-bit words), read once front to back by each thread's contiguous chunk. One vpxord
// with a memory operand per 64 bytes: the hardware prefetcher keeps the lines coming. Four chains (4 loads per
// iteration) kept four accumulators plus register moves and read 8-10% slower than numpy's float32 sum of the same
// buffer (17-19 against 20-21 GB/s, one thread, same run); GCC folds an 8-chain loop into this one (xor is
// associative): 25-27 against 21-24 GB/s (2026-12-01, CPU 1, load average 11-14, one thread, 8-256 MiB).
int probe_read(const uint32_t* src, uint32_t* out, int64_t n, int threads) {
  const int nt = kb::threads_for(threads, n, 1 << 16);
  uint32_t total = 0;
#pragma omp parallel num_threads(nt) reduction(^ : total)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t per = (n / T + 63) / 64 * 64;     // chunks of whole 4 KiB groups of lines
    const int64_t lo = std::min<int64_t>(n, per * t), hi = std::min<int64_t>(n, per * (t + 1));
    ivec acc = izero();
    int64_t i = lo;
    for (; i + W <= hi; i += W) acc = ixor(acc, iload(src + i));
    alignas(64) uint32_t lanes[W];
    std::memcpy(lanes, &acc, sizeof lanes);
    uint32_t x = 0;
    for (int k = 0; k < W; ++k) x ^= lanes[k];
    for (; i < hi; ++i) x ^= src[i];
    total ^= x;
  }
  *out = total;
  return 0;
}

}  // namespace KB_NS
#endif

#if !KB_IMPL
KB_DECLARE(int probe_stream_copy(const float*, float*, int64_t, int))
KB_DECLARE(int probe_fma(const float*, float*, int64_t, int64_t, float, float, int))
KB_DECLARE(int probe_block_floats())
KB_DECLARE(int probe_read(const uint32_t*, uint32_t*, int64_t, int))
namespace kb_probe_ext {   // probes_ext.cpp: compiled with -mavx512bf16 -mamx-*, called only where present
int dpbf16(const float* init, const uint16_t* ab, float* out, int64_t blocks, int64_t iters, int threads);
int amx(int kind, const void* a, const void* b, void* out, int64_t blocks, int64_t iters, int threads);
}

// dst[0:n] = src[0:n] (float32) with streaming stores; src and dst must not overlap.
KB_API int kb_cpp_probe_stream_copy(const void* src, void* dst, int64_t n, int threads) {
  if (n < 0 || (n > 0 && (!src || !dst))) return kb::set_error(kb::E_ARG, "probe_stream_copy: bad arguments");
  return KB_DISPATCH(probe_stream_copy, static_cast<const float*>(src), static_cast<float*>(dst), n, threads);
}

// out[0] = the xor of the n 32-bit words at src (read once, sequentially; float32 data read as its bits).
KB_API int kb_cpp_probe_read(const void* src, void* out, int64_t n, int threads) {
  if (n < 0 || !out || (n > 0 && !src)) return kb::set_error(kb::E_ARG, "probe_read: bad arguments");
  return KB_DISPATCH(probe_read, static_cast<const uint32_t*>(src), static_cast<uint32_t*>(out), n, threads);
}

// Floats per block of kb_cpp_probe_fma in the ISA in use: chains x lanes (16 x 16 for AVX-512, 12 x 8 for
// AVX2); its init and out are [blocks, this] floats.
KB_API int kb_cpp_probe_block_floats(void) { return KB_DISPATCH(probe_block_floats); }

// out = the FMA recurrence acc = acc * m + c run `iters` times from init; [blocks, block_floats] fp32.
KB_API int kb_cpp_probe_fma(const void* init, void* out, int64_t blocks, int64_t iters, float m, float c,
                            int threads) {
  if (blocks < 0 || iters < 0 || (blocks > 0 && (!init || !out)))
    return kb::set_error(kb::E_ARG, "probe_fma: bad arguments");
  return KB_DISPATCH(probe_fma, static_cast<const float*>(init), static_cast<float*>(out), blocks, iters, m, c,
                     threads);
}
#endif

#if !KB_IMPL
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

// Is the vector bf16 dot product there (AVX512-BF16), and may this process use the AMX tiles of `kind`
// (1 = bf16, 3 = int8)? 0 = yes, else the reason in kb_cpp_last_error.
static int need_bf16() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512bf16"))
    return kb::set_error(kb::E_ISA, "this CPU has no AVX512-BF16 (vdpbf16ps)");
  return 0;
}
static int need_amx(int kind) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1u))
    return kb::set_error(kb::E_ISA, "this CPU has no AMX (CPUID.7.0:EDX AMX-TILE)");
  if (kind == kb::BF16 && !((d >> 22) & 1u)) return kb::set_error(kb::E_ISA, "this CPU has no AMX-BF16");
  if (kind == 3 && !((d >> 25) & 1u)) return kb::set_error(kb::E_ISA, "this CPU has no AMX-INT8");
  const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
    return kb::set_error(kb::E_ISA, "Linux did not grant the AMX tile state (arch_prctl; kernel < 5.16?)");
  return 0;
}

// 0 when the probe can run here, else E_ISA with the reason: kind 0 = vdpbf16ps, 1 = AMX bf16, 3 = AMX int8.
KB_API int kb_cpp_probe_available(int kind) { return kind == 0 ? need_bf16() : need_amx(kind); }

// out[blk][16 x 16 lanes] = init + iters x (pairwise dot of ab[0:32] and ab[32:64] per lane), vdpbf16ps.
KB_API int kb_cpp_probe_dpbf16(const void* init, const void* ab, void* out, int64_t blocks, int64_t iters,
                               int threads) {
  if (blocks < 0 || iters < 0 || (blocks > 0 && (!init || !ab || !out)))
    return kb::set_error(kb::E_ARG, "probe_dpbf16: bad arguments");
  if (int rc = need_bf16()) return rc;
  return kb_probe_ext::dpbf16(static_cast<const float*>(init), static_cast<const uint16_t*>(ab),
                              static_cast<float*>(out), blocks, iters, threads);
}

// AMX tile peak. kind 1: a = two 16x32 bf16 tiles, b = two 16x32 bf16 tiles in VNNI layout (16 k-pairs x
// 16 columns x 2), out = [blocks][4][16][16] fp32 = iters x (A_i @ B_j) for (i, j) in (0,0),(0,1),(1,0),(1,1).
// kind 3: the same with int8 (a: 16x64, b: 16 k-quads x 16 columns x 4) into int32.
KB_API int kb_cpp_probe_amx(int kind, const void* a, const void* b, void* out, int64_t blocks, int64_t iters,
                            int threads) {
  if ((kind != kb::BF16 && kind != 3) || blocks < 0 || iters < 0 || (blocks > 0 && (!a || !b || !out)))
    return kb::set_error(kb::E_ARG, "probe_amx: bad arguments");
  if (int rc = need_amx(kind)) return rc;
  return kb_probe_ext::amx(kind, a, b, out, blocks, iters, threads);
}
#endif
