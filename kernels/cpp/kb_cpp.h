// kb_cpp.h -- what every CPU kernel file of libkb_cpp shares: dtype codes, bf16/f16 storage types, error
// reporting, and the two-ISA build scheme.
//
// Build scheme (see CMakeLists.txt): each kernel file is compiled three times.
//   KB_ISA_AVX512  -> the hot loops in namespace kb_avx512, with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma
//   KB_ISA_AVX2    -> the same loops in namespace kb_avx2, with -mavx2 -mfma -mf16c
//   (neither)      -> the extern "C" entry points, compiled for baseline x86-64, which validate the
//                     arguments and pick a namespace at run time (kb::isa(), from __builtin_cpu_supports).
// So one library runs on any x86-64 with AVX2/FMA and uses AVX-512 where the CPU has it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kb {

enum Dtype : int { F32 = 0, BF16 = 1, F16 = 2 };

// Storage types for the 16-bit formats: only bits; conversion happens in registers (simd.h) or below.
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

// ISA_AMX: AVX-512 plus AMX-BF16 tiles granted by the kernel (only the bf16 GEMM uses them).
enum Isa : int { ISA_NONE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_AMX = 3 };
// The tile kernels' back end (tiles.h): AMX when isa() is ISA_AMX, else the AVX512-BF16 model when
// isa() >= ISA_AVX512 and the CPU has AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and later), else none.
enum TileBackend : int { TILES_NONE = 0, TILES_ZMM = 1, TILES_AMX = 2 };
TileBackend tile_backend();
Isa isa();                         // the ISA used now: the best the CPU has, or what kb_cpp_set_isa forced
int set_error(int code, const char* fmt, ...);   // records the message for kb_cpp_last_error; returns code
int threads_or_default(int threads);             // threads <= 0 -> omp_get_max_threads()
// Threads worth waking for `work` units when each thread should get at least `grain` of them: small
// problems run on the calling thread alone (no fork/join, no waiting for a descheduled worker -- on a
// shared machine waking a sleeping worker can cost milliseconds).
int threads_for(int threads, int64_t work, int64_t grain);

// Error codes returned by the entry points.
enum Err : int { OK = 0, E_ARG = 1, E_DTYPE = 2, E_ISA = 3, E_NOMEM = 4 };

inline float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline uint16_t f32_to_bf16(float f) {            // round to nearest even; NaN stays NaN
  uint32_t u; std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Aligned scratch memory that frees itself (64-byte aligned: one cache line, one zmm).
struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T> T* as() const { return static_cast<T*>(p); }
};

}  // namespace kb

// Exported entry points (the library is built with hidden visibility).
#define KB_API extern "C" __attribute__((visibility("default")))

// Declare an implementation function in both ISA namespaces: KB_DECLARE(int softmax(const SoftmaxArgs&)).
#define KB_DECLARE(...)                  \
  namespace kb_avx512 { __VA_ARGS__; }   \
  namespace kb_avx2 { __VA_ARGS__; }

// In an entry point: call the implementation for the ISA in use.
#define KB_DISPATCH(fn, ...)                                                              \
  (kb::isa() >= kb::ISA_AVX512 ? kb_avx512::fn(__VA_ARGS__)                               \
   : kb::isa() == kb::ISA_AVX2 ? kb_avx2::fn(__VA_ARGS__)                                 \
   : kb::set_error(kb::E_ISA, "%s: this CPU has neither AVX-512 nor AVX2+FMA", #fn))

#if defined(KB_ISA_AVX512)
#define KB_NS kb_avx512
#define KB_IMPL 1
#elif defined(KB_ISA_AVX2)
#define KB_NS kb_avx2
#define KB_IMPL 1
#else
#define KB_IMPL 0
#endif
