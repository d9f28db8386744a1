// kb_sim.h: a CPU simulation of the CUDA execution model, so the .cu files of kernels/cuda/ compile with the
// host C++ compiler (-x c++ -DKB_CUDA_SIM) and run on machines without a GPU. Test infrastructure: it checks
// results, never speed. In the line of MCUDA (Stratton et al., LCPC 2008: a block's threads serialized,
// split at barriers) and HIP-CPU (a block's threads as fibers on one OS thread); written from scratch.
//
// Execution model (the runtime is kb_sim_*.cpp, see kb_sim_internal.h):
//   - A launch runs its blocks on a pool of OS threads (KB_SIM_THREADS, default: the number of cores).
//   - Each CUDA thread of a block is a cooperative fiber on the OS thread that runs the block. A fiber runs
//     until it reaches a barrier (__syncthreads), a warp collective (shuffle, ballot, __syncwarp, mma,
//     ldmatrix) or its end; the scheduler then runs the next fiber. A barrier is released when every thread
//     of the block waits at it; a warp collective executes when every lane named in its mask waits at it,
//     with the values all lanes brought (like a warp-level barrier). A thread that exits or waits where
//     the others never come is reported as divergent barrier use, with the kernel's name, never a hang.
//   - KB_SIM_SCHEDULE_SEED=<n> permutes, per block and per barrier interval, the order in which threads
//     run between barriers; results that change with the seed reveal a missing barrier or a race.
//   - __shared__ is `thread_local`: one instance per OS thread, and an OS thread runs one block at a time,
//     so one instance per block. `extern __shared__` arrays are defined by the build (kb_sim.cmake) as
//     aliases of one per-OS-thread buffer of KB_SIM_MAX_DYNAMIC_SMEM bytes; at each block start its first
//     smem_bytes are filled with 0xFF (NaN for fp32/bf16/fp16) and, under AddressSanitizer, the rest is
//     poisoned so an access past the launch's dynamic shared memory is reported.
//   - Tensor-core mma and ldmatrix are computed with the fragment layouts of the PTX ISA, cp.async copies
//     are deferred to the wait that covers them (so reading shared memory before the wait sees stale data).
//
// Not simulated (the build stops with a message naming it): nvcuda::wmma (<mma.h>), cooperative groups,
// inline PTX asm, textures and surfaces. Not checked: timing, memory coalescing, bank conflicts, register
// or shared memory limits of a real SM (only the 48 KiB opt-in and the 227 KiB maximum of dynamic smem).
#pragma once
#ifndef KB_CUDA_SIM
#error "kb_sim.h is the CPU simulation of CUDA: compile with -DKB_CUDA_SIM (kernels include kb_cuda.h)"
#endif
#if defined(__CUDACC__)
#error "kb_sim.h is for the host compiler; nvcc builds use kb_device.h"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define KB_SIM_MAX_DYNAMIC_SMEM 232448  // 227 KiB: the per-block maximum of sm_90 (sm_80: 163 KiB)
#define KB_SIM_DEFAULT_DYNAMIC_SMEM 49152  // 48 KiB without the opt-in attribute

// ---------------------------------------------------------------------------------------------------
// Qualifiers and keywords.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ thread_local
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
// __restrict__ is already a GNU C++ keyword.

// ---------------------------------------------------------------------------------------------------
// Vector types and dims.
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#define KB_SIM_VEC2(T, N, A) \
  struct alignas(A) N##2 { T x, y; }; \
  static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define KB_SIM_VEC4(T, N, A) \
  struct alignas(A) N##4 { T x, y, z, w; }; \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
KB_SIM_VEC2(float, float, 8)
KB_SIM_VEC4(float, float, 16)
KB_SIM_VEC2(int, int, 8)
KB_SIM_VEC4(int, int, 16)
KB_SIM_VEC2(unsigned, uint, 8)
KB_SIM_VEC4(unsigned, uint, 16)
KB_SIM_VEC2(double, double, 16)
KB_SIM_VEC2(short, short, 4)
KB_SIM_VEC2(unsigned short, ushort, 4)
KB_SIM_VEC4(signed char, char, 4)
KB_SIM_VEC4(unsigned char, uchar, 4)
struct float3 { float x, y, z; };
static inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
static inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

// ---------------------------------------------------------------------------------------------------
// Runtime types shared with the runtime (kb_sim_*.cpp).
typedef struct kb_sim_stream* cudaStream_t;
typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999,
} cudaError_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };

namespace kb_sim {
#pragma GCC visibility push(hidden)  // the runtime is private to each library that embeds it

// One lane's part of a warp collective: what it brings, where its result goes. The runtime executes the
// collective once every lane of the mask has arrived, with the ops of all 32 lanes.
enum CollKind : int {
  COLL_SYNCWARP = 1, COLL_SHFL_IDX, COLL_SHFL_UP, COLL_SHFL_DOWN, COLL_SHFL_XOR, COLL_BALLOT, COLL_ANY,
  COLL_ALL, COLL_MMA_BF16, COLL_MMA_F16, COLL_LDMATRIX, COLL_MATCH_ANY, COLL_MMA_S8, COLL_MMA_SP_BF16,
  COLL_MMA_SP_F16
};
struct CollOp {
  int kind;
  unsigned mask;       // lanes that take part (as given by the kernel)
  const char* what;    // the intrinsic's name for messages
  const char* file;
  int line;
  uint64_t value;      // shuffle / ballot input (raw bits)
  uint64_t result;     // shuffle / ballot output
  int size;            // bytes of `value`
  int arg;             // source lane / delta / lane mask; ldmatrix: number of matrices
  int width;           // shuffle width; ldmatrix: 1 if .trans
  void* out;           // mma: float d[4]; ldmatrix: uint32_t r[n]
  // mma.sp: in1 = b[4], `value` = the metadata register e, `arg` = the sparsity selector
  const void* in0;     // mma: a[4]; ldmatrix: row address
  const void* in1;     // mma: b[2]
  const void* in2;     // mma: c[4]
};

struct BlockInfo {
  uint3 blockIdx;
  dim3 blockDim;
  dim3 gridDim;
  const char* kernel;
};
struct ThreadInfo {  // the current CUDA thread of this OS thread; switched with the fibers
  uint3 threadIdx;
  const BlockInfo* block;
  unsigned linear;   // threadIdx linearized (x fastest)
};
extern thread_local ThreadInfo* t_cur;

// Runtime entry points (kb_sim_fiber.cpp, kb_sim_scheduler.cpp, kb_sim_api.cpp).
void syncthreads(const char* file, int line);
void warp_collective(CollOp* op);
[[noreturn]] void kernel_fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void cp_async(void* dst, const void* src, int bytes, bool valid, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int n);
typedef void (*BodyFn)(void* ctx);
void launch(const char* name, const void* kernel_id, dim3 grid, dim3 block, size_t smem, BodyFn body,
            void* ctx);
cudaError_t set_max_dynamic_smem(const void* kernel_id, long bytes);
cudaError_t get_last_error(bool clear);
const char* error_string(cudaError_t e);

#pragma GCC visibility pop
}  // namespace kb_sim

// ---------------------------------------------------------------------------------------------------
// Built-in variables. They read the current fiber's state, so they are right after every switch.
#define threadIdx (::kb_sim::t_cur->threadIdx)
#define blockIdx (::kb_sim::t_cur->block->blockIdx)
#define blockDim (::kb_sim::t_cur->block->blockDim)
#define gridDim (::kb_sim::t_cur->block->gridDim)
constexpr int warpSize = 32;

#define __syncthreads() ::kb_sim::syncthreads(__FILE__, __LINE__)
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#define __trap() ::kb_sim::kernel_fail("__trap() called at %s:%d", __FILE__, __LINE__)
static inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
static inline void __nanosleep(unsigned) {}

// ---------------------------------------------------------------------------------------------------
// Warp collectives. Each lane deposits its part and waits; see CollOp.
namespace kb_sim {
template <class T>
static inline uint64_t to_bits(const T& v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "kb_sim: warp shuffles take a trivially copyable type of at most 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
static inline T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}
template <class T>
static inline T shfl(int kind, const char* what, unsigned mask, T v, int arg, int width, const char* file,
                     int line) {
  CollOp op{};
  op.kind = kind; op.mask = mask; op.what = what; op.file = file; op.line = line;
  op.value = to_bits(v); op.size = (int)sizeof(T); op.arg = arg; op.width = width;
  warp_collective(&op);
  return from_bits<T>(op.result);
}
static inline unsigned vote(int kind, const char* what, unsigned mask, int pred, const char* file, int line) {
  CollOp op{};
  op.kind = kind; op.mask = mask; op.what = what; op.file = file; op.line = line;
  op.value = pred ? 1 : 0; op.size = 4;
  warp_collective(&op);
  return (unsigned)op.result;
}
}  // namespace kb_sim

#define __shfl_sync(mask, v, lane, ...) \
  ::kb_sim::shfl(::kb_sim::COLL_SHFL_IDX, "__shfl_sync", (mask), (v), (lane), KB_SIM_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::kb_sim::shfl(::kb_sim::COLL_SHFL_UP, "__shfl_up_sync", (mask), (v), (int)(delta), KB_SIM_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::kb_sim::shfl(::kb_sim::COLL_SHFL_DOWN, "__shfl_down_sync", (mask), (v), (int)(delta), KB_SIM_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lanemask, ...) \
  ::kb_sim::shfl(::kb_sim::COLL_SHFL_XOR, "__shfl_xor_sync", (mask), (v), (lanemask), KB_SIM_WIDTH(__VA_ARGS__), __FILE__, __LINE__)
#define KB_SIM_WIDTH(...) (::kb_sim::width_or_32(0, ##__VA_ARGS__))
namespace kb_sim {
static inline int width_or_32(int) { return 32; }
static inline int width_or_32(int, int w) { return w; }
}  // namespace kb_sim
#define __ballot_sync(mask, pred) \
  ::kb_sim::vote(::kb_sim::COLL_BALLOT, "__ballot_sync", (mask), (pred), __FILE__, __LINE__)
#define __any_sync(mask, pred) \
  ((int)::kb_sim::vote(::kb_sim::COLL_ANY, "__any_sync", (mask), (pred), __FILE__, __LINE__))
#define __all_sync(mask, pred) \
  ((int)::kb_sim::vote(::kb_sim::COLL_ALL, "__all_sync", (mask), (pred), __FILE__, __LINE__))
#define __syncwarp(...) \
  ((void)::kb_sim::vote(::kb_sim::COLL_SYNCWARP, "__syncwarp", ::kb_sim::mask_or_full(0, ##__VA_ARGS__), 0, __FILE__, __LINE__))
namespace kb_sim {
static inline unsigned mask_or_full(int) { return 0xffffffffu; }
static inline unsigned mask_or_full(int, unsigned m) { return m; }
}  // namespace kb_sim
// An expression that stops the build with `msg` wherever the unsupported feature is used.
#define KB_SIM_UNSUPPORTED(msg) ([] { static_assert(false, msg); return 0; }())
// Pre-Volta shuffles without a mask are not part of CUDA 13; name the replacement.
#define __shfl(...) KB_SIM_UNSUPPORTED("kb_sim: __shfl without _sync is not simulated (use __shfl_sync)")
#define __shfl_xor(...) KB_SIM_UNSUPPORTED("kb_sim: __shfl without _sync is not simulated (__shfl_xor: use __shfl_xor_sync)")
#define __shfl_down(...) KB_SIM_UNSUPPORTED("kb_sim: __shfl without _sync is not simulated (__shfl_down: use __shfl_down_sync)")
#define __activemask() KB_SIM_UNSUPPORTED("kb_sim: __activemask() is not simulated (its value depends on the hardware's scheduling)")

// ---------------------------------------------------------------------------------------------------
// Atomics (global memory is shared between the OS threads that run blocks: real atomics).
namespace kb_sim {
template <class T, class F>
static inline T atomic_rmw(T* p, F f) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "kb_sim: atomics on 4- or 8-byte types");
  typedef typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type U;
  U* up = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(up, __ATOMIC_RELAXED);
  for (;;) {
    T o; memcpy(&o, &old, sizeof(T));
    T n = f(o);
    U nb; memcpy(&nb, &n, sizeof(T));
    if (__atomic_compare_exchange_n(up, &old, nb, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return o;
  }
}
}  // namespace kb_sim
template <class T> static inline T atomicAdd(T* p, T v) { return ::kb_sim::atomic_rmw(p, [v](T o) { return (T)(o + v); }); }
template <class T> static inline T atomicSub(T* p, T v) { return ::kb_sim::atomic_rmw(p, [v](T o) { return (T)(o - v); }); }
template <class T> static inline T atomicExch(T* p, T v) { return ::kb_sim::atomic_rmw(p, [v](T) { return v; }); }
template <class T> static inline T atomicMax(T* p, T v) {
  static_assert(std::is_integral<T>::value, "kb_sim: atomicMax is defined for integer types only (as in CUDA)");
  return ::kb_sim::atomic_rmw(p, [v](T o) { return o > v ? o : v; });
}
template <class T> static inline T atomicMin(T* p, T v) {
  static_assert(std::is_integral<T>::value, "kb_sim: atomicMin is defined for integer types only (as in CUDA)");
  return ::kb_sim::atomic_rmw(p, [v](T o) { return o < v ? o : v; });
}
template <class T> static inline T atomicAnd(T* p, T v) { return ::kb_sim::atomic_rmw(p, [v](T o) { return (T)(o & v); }); }
template <class T> static inline T atomicOr(T* p, T v) { return ::kb_sim::atomic_rmw(p, [v](T o) { return (T)(o | v); }); }
template <class T> static inline T atomicXor(T* p, T v) { return ::kb_sim::atomic_rmw(p, [v](T o) { return (T)(o ^ v); }); }
template <class T> static inline T atomicCAS(T* p, T cmp, T v) {
  static_assert(std::is_integral<T>::value && (sizeof(T) == 4 || sizeof(T) == 8), "kb_sim: atomicCAS on 4/8-byte integers");
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;  // the old value either way
}
static inline unsigned atomicInc(unsigned* p, unsigned lim) {
  return ::kb_sim::atomic_rmw(p, [lim](unsigned o) { return o >= lim ? 0u : o + 1; });
}

// ---------------------------------------------------------------------------------------------------
// Math intrinsics: the fast-math ones (__expf...) are computed exactly, which is within their error bound.
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
// glibc's math.h declares its own __expf, __logf...: these are macros (math.h is included above).
#define __expf(x) (::expf(x))
#define __exp10f(x) (::exp10f(x))
#define __logf(x) (::logf(x))
#define __log2f(x) (::log2f(x))
#define __sinf(x) (::sinf(x))
#define __cosf(x) (::cosf(x))
#define __tanf(x) (::tanf(x))
#define __powf(x, y) (::powf((x), (y)))
#define __tanhf(x) (::tanhf(x))
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x != x ? 0.0f : x)); }
static inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
static inline float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
// CUDA's overloaded min/max of device code.
#define KB_SIM_MINMAX(T) \
  static inline T min(T a, T b) { return a < b ? a : b; } \
  static inline T max(T a, T b) { return a > b ? a : b; }
KB_SIM_MINMAX(int)
KB_SIM_MINMAX(unsigned)
KB_SIM_MINMAX(long)
KB_SIM_MINMAX(unsigned long)
KB_SIM_MINMAX(long long)
KB_SIM_MINMAX(unsigned long long)
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// ---------------------------------------------------------------------------------------------------
// 16-bit floating point types, bit-exact: round to nearest even, NaN kept NaN.
namespace kb_sim {
static inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline float bf16_bits_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_f16_bits(float f) { _Float16 h = (_Float16)f; uint16_t b; memcpy(&b, &h, 2); return b; }
static inline float f16_bits_to_f32(uint16_t b) { _Float16 h; memcpy(&h, &b, 2); return (float)h; }
}  // namespace kb_sim

#define KB_SIM_HALF_TYPE(N, TOB, TOF)                                                              \
  struct N {                                                                                       \
    uint16_t __x = 0; /* constant-initialized: a thread_local (static __shared__) array of it needs */ \
    N() = default;    /* no TLS init guard, which every thread would write (a race to the checker) */ \
    template <class T, class = typename std::enable_if<std::is_arithmetic<T>::value>::type>        \
    N(T v) : __x(::kb_sim::TOB((float)v)) {}                                                       \
    operator float() const { return ::kb_sim::TOF(__x); }                                          \
    N& operator+=(N o) { return *this = N(float(*this) + float(o)); }                              \
    N& operator-=(N o) { return *this = N(float(*this) - float(o)); }                              \
    N& operator*=(N o) { return *this = N(float(*this) * float(o)); }                              \
    N& operator/=(N o) { return *this = N(float(*this) / float(o)); }                              \
  };                                                                                               \
  static inline N operator+(N a, N b) { return N(float(a) + float(b)); }                           \
  static inline N operator-(N a, N b) { return N(float(a) - float(b)); }                           \
  static inline N operator*(N a, N b) { return N(float(a) * float(b)); }                           \
  static inline N operator/(N a, N b) { return N(float(a) / float(b)); }                           \
  static inline N operator-(N a) { N r = a; r.__x ^= 0x8000u; return r; }                          \
  static inline bool operator==(N a, N b) { return float(a) == float(b); }                         \
  static inline bool operator!=(N a, N b) { return float(a) != float(b); }                         \
  static inline bool operator<(N a, N b) { return float(a) < float(b); }                           \
  static inline bool operator>(N a, N b) { return float(a) > float(b); }                           \
  static inline bool operator<=(N a, N b) { return float(a) <= float(b); }                         \
  static inline bool operator>=(N a, N b) { return float(a) >= float(b); }                         \
  struct alignas(4) N##2 { N x, y; };
KB_SIM_HALF_TYPE(__half, f32_to_f16_bits, f16_bits_to_f32)
KB_SIM_HALF_TYPE(__nv_bfloat16, f32_to_bf16_bits, bf16_bits_to_f32)
#undef KB_SIM_HALF_TYPE
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2 && sizeof(__half2) == 4, "16-bit types");

static inline __half __float2half(float f) { return __half(f); }
static inline __half __float2half_rn(float f) { return __half(f); }
static inline float __half2float(__half h) { return float(h); }
static inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
static inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
static inline float2 __half22float2(__half2 v) { return float2{float(v.x), float(v.y)}; }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
static inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
static inline float2 __bfloat1622float2(__nv_bfloat162 v) { return float2{float(v.x), float(v.y)}; }
static inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline float __low2float(__half2 v) { return float(v.x); }
static inline float __high2float(__half2 v) { return float(v.y); }
static inline float __low2float(__nv_bfloat162 v) { return float(v.x); }
static inline float __high2float(__nv_bfloat162 v) { return float(v.y); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __half __ushort_as_half(unsigned short b) { __half h; h.__x = b; return h; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { __nv_bfloat16 h; h.__x = b; return h; }
#define KB_SIM_HALF_OPS(N)                                                             \
  static inline N __hadd(N a, N b) { return a + b; }                                   \
  static inline N __hsub(N a, N b) { return a - b; }                                   \
  static inline N __hmul(N a, N b) { return a * b; }                                   \
  static inline N __hdiv(N a, N b) { return a / b; }                                   \
  static inline N __hneg(N a) { return -a; }                                           \
  static inline N __hfma(N a, N b, N c) { return N(fmaf(float(a), float(b), float(c))); } \
  static inline N __hmax(N a, N b) { return N(fmaxf(float(a), float(b))); }            \
  static inline N __hmin(N a, N b) { return N(fminf(float(a), float(b))); }
KB_SIM_HALF_OPS(__half)
KB_SIM_HALF_OPS(__nv_bfloat16)
#undef KB_SIM_HALF_OPS

// ---------------------------------------------------------------------------------------------------
// Host API subset.
static inline cudaError_t cudaGetLastError() { return ::kb_sim::get_last_error(true); }
static inline cudaError_t cudaPeekAtLastError() { return ::kb_sim::get_last_error(false); }
static inline const char* cudaGetErrorString(cudaError_t e) { return ::kb_sim::error_string(e); }
static inline const char* cudaGetErrorName(cudaError_t e) { return ::kb_sim::error_string(e); }
static inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
static inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? KB_SIM_MAX_DYNAMIC_SMEM
       : a == cudaDevAttrMultiProcessorCount        ? 132 : 0;
  return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) { memset(p, v, n); return cudaSuccess; }
static inline cudaError_t cudaMemset(void* p, int v, size_t n) { memset(p, v, n); return cudaSuccess; }
static inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  memmove(d, s, n); return cudaSuccess;
}
static inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { memmove(d, s, n); return cudaSuccess; }
template <class F>
static inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorNotSupported;
  return ::kb_sim::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
static inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorNotSupported;
  return ::kb_sim::set_max_dynamic_smem(kernel, value);
}

// ---------------------------------------------------------------------------------------------------
// Launch. The arguments are converted to the kernel's parameter types once, like CUDA's parameter
// buffer, and every thread calls the kernel with copies of them.
namespace kb_sim {
template <class... P, class... A>
static inline void launch_kernel(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kb_sim: wrong number of kernel arguments");
  struct Ctx {
    void (*k)(P...);
    std::tuple<typename std::decay<P>::type...> args;
  } ctx{kernel, std::tuple<typename std::decay<P>::type...>(std::forward<A>(args)...)};
  launch(name, reinterpret_cast<const void*>(kernel), grid, block, smem,
         [](void* c) {
           Ctx* x = static_cast<Ctx*>(c);
           auto a = x->args;  // per-thread copy of the parameters
           std::apply(x->k, a);
         },
         &ctx);
}
}  // namespace kb_sim
#define KB_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::kb_sim::launch_kernel(#kernel, (kernel), dim3(grid), dim3(block), (size_t)(smem_bytes), (cudaStream_t)(stream), ##__VA_ARGS__)
#define KB_SET_MAX_DYNAMIC_SMEM(kernel, bytes) \
  ::kb_sim::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), (long)(bytes))

// ---------------------------------------------------------------------------------------------------
// Tensor cores, ldmatrix, cp.async: the kb:: wrappers of docs/CONTRACTS.md §3, as warp collectives.
namespace kb {
#define KB_SIM_MMA(NAME, KIND)                                                                          \
  static inline void NAME(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],       \
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {           \
    ::kb_sim::CollOp op{};                                                                              \
    op.kind = ::kb_sim::KIND; op.mask = 0xffffffffu; op.what = "mma.sync.m16n8k16"; op.file = file;      \
    op.line = line; op.out = d; op.in0 = a; op.in1 = b; op.in2 = c;                                     \
    ::kb_sim::warp_collective(&op);                                                                     \
  }
KB_SIM_MMA(mma_m16n8k16_bf16, COLL_MMA_BF16)
KB_SIM_MMA(mma_m16n8k16_f16, COLL_MMA_F16)
#undef KB_SIM_MMA
#define KB_SIM_MMA_SP(NAME, KIND)                                                                       \
  static inline void NAME(float d[4], const uint32_t a[4], const uint32_t b[4], const float c[4],       \
                          uint32_t e, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {\
    ::kb_sim::CollOp op{};                                                                              \
    op.kind = ::kb_sim::KIND; op.mask = 0xffffffffu; op.what = "mma.sp.sync.m16n8k32"; op.file = file;  \
    op.line = line; op.out = d; op.in0 = a; op.in1 = b; op.in2 = c; op.value = e; op.arg = 0;           \
    ::kb_sim::warp_collective(&op);                                                                     \
  }
KB_SIM_MMA_SP(mma_sp_m16n8k32_bf16, COLL_MMA_SP_BF16)
KB_SIM_MMA_SP(mma_sp_m16n8k32_f16, COLL_MMA_SP_F16)
#undef KB_SIM_MMA_SP
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32: int8 A (16x32) and B (32x8), int32 accumulators
static inline void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2], const int32_t c[4],
                                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::kb_sim::CollOp op{};
  op.kind = ::kb_sim::COLL_MMA_S8; op.mask = 0xffffffffu; op.what = "mma.sync.m16n8k32.s8"; op.file = file;
  op.line = line; op.out = d; op.in0 = a; op.in1 = b; op.in2 = c;
  ::kb_sim::warp_collective(&op);
}
#define KB_SIM_LDMATRIX(NAME, N, TRANS)                                                                 \
  static inline void NAME(uint32_t r[N], const void* smem, const char* file = __builtin_FILE(),          \
                          int line = __builtin_LINE()) {                                                \
    ::kb_sim::CollOp op{};                                                                              \
    op.kind = ::kb_sim::COLL_LDMATRIX; op.mask = 0xffffffffu;                                           \
    op.what = TRANS ? "ldmatrix.x" #N ".trans" : "ldmatrix.x" #N; op.file = file; op.line = line;       \
    op.arg = N; op.width = TRANS; op.out = r; op.in0 = smem;                                            \
    ::kb_sim::warp_collective(&op);                                                                     \
  }
KB_SIM_LDMATRIX(ldmatrix_x1, 1, 0)
KB_SIM_LDMATRIX(ldmatrix_x2, 2, 0)
KB_SIM_LDMATRIX(ldmatrix_x4, 4, 0)
KB_SIM_LDMATRIX(ldmatrix_x1_trans, 1, 1)
KB_SIM_LDMATRIX(ldmatrix_x2_trans, 2, 1)
KB_SIM_LDMATRIX(ldmatrix_x4_trans, 4, 1)
#undef KB_SIM_LDMATRIX
static inline void cp_async_16(void* smem, const void* gmem, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
  ::kb_sim::cp_async(smem, gmem, 16, true, file, line);
}
static inline void cp_async_16_zfill(void* smem, const void* gmem, bool valid,
                                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::kb_sim::cp_async(smem, gmem, 16, valid, file, line);
}
static inline void cp_async_commit() { ::kb_sim::cp_async_commit(); }
template <int N>
static inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group N >= 0");
  ::kb_sim::cp_async_wait(N);
}
static inline void cp_async_wait_all() { ::kb_sim::cp_async_commit(); ::kb_sim::cp_async_wait(0); }
static inline uint32_t pack_bf16x2(float lo, float hi) {
  return (uint32_t)::kb_sim::f32_to_bf16_bits(lo) | ((uint32_t)::kb_sim::f32_to_bf16_bits(hi) << 16);
}
static inline uint32_t pack_f16x2(float lo, float hi) {
  return (uint32_t)::kb_sim::f32_to_f16_bits(lo) | ((uint32_t)::kb_sim::f32_to_f16_bits(hi) << 16);
}
static inline uint32_t smem_u32(const void* p) { return (uint32_t)(uintptr_t)p; }
}  // namespace kb

// ---------------------------------------------------------------------------------------------------
// What is not simulated stops the build with the feature's name.
#ifndef KB_SIM_RUNTIME
namespace nvcuda {
namespace wmma {
template <class... T> struct fragment {
  static_assert(sizeof...(T) < 0, "kb_sim: nvcuda::wmma is not simulated; use kb::mma_m16n8k16_* and kb::ldmatrix_*");
};
}  // namespace wmma
}  // namespace nvcuda
namespace cooperative_groups {
template <class... T> struct not_simulated {
  static_assert(sizeof...(T) < 0, "kb_sim: cooperative_groups is not simulated");
};
}  // namespace cooperative_groups
#define __cvta_generic_to_shared(p) \
  KB_SIM_UNSUPPORTED("kb_sim: __cvta_generic_to_shared (shared-window addresses) is not simulated; pass pointers to the kb:: wrappers")
#define tex1Dfetch(...) KB_SIM_UNSUPPORTED("kb_sim: textures are not simulated")
// Inline PTX cannot run on the CPU: kernels must use the kb:: wrappers (docs/CONTRACTS.md §3).
// `asm` is a keyword; this macro turns `asm volatile("...")` into a compile error that names the cause.
#define asm static_assert(false, "kb_sim: inline PTX asm is not simulated; use the kb:: wrappers of kb_cuda.h"); (void)
#endif  // KB_SIM_RUNTIME
