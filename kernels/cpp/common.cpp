// common.cpp -- the library-wide entry points of libkb_cpp: error text, ISA choice, threads, scratch memory.
// Compiled once, for baseline x86-64 (no -m flags), so that loading the library and asking what the CPU
// supports never executes an instruction the CPU lacks.
#include <cpuid.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "kb_cpp.h"

namespace kb {

static thread_local char g_error[512] = "";
static std::atomic<int> g_forced{-1};   // -1: auto; else an Isa value forced by kb_cpp_set_isa (tests)

// AMX: CPUID.(7,0):EDX bit 24 (AMX-TILE) and bit 22 (AMX-BF16), and Linux must grant the 8 KiB tile state
// to this process (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), Linux >= 5.16).
static bool amx_usable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> 24) & 1u) || !((d >> 22) & 1u)) return false;
  if (std::getenv("KB_CPP_NO_AMX")) return false;
  const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

static Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return amx_usable() ? ISA_AMX : ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
  return ISA_NONE;
}

static bool avx512bf16() {   // CPUID.(7,1):EAX bit 5
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1u);
}

static Isa best_isa() {
  static const Isa best = detect();
  return best;
}

Isa isa() {
  const Isa best = best_isa();
  int f = g_forced.load(std::memory_order_relaxed);
  return f >= 0 ? Isa(f) : best;
}

TileBackend tile_backend() {
  static const bool bf16 = avx512bf16();
  const Isa i = isa();
  return i >= ISA_AMX ? TILES_AMX : i >= ISA_AVX512 && bf16 ? TILES_ZMM : TILES_NONE;
}

int set_error(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_error, sizeof g_error, fmt, ap);
  va_end(ap);
  return code;
}

int threads_or_default(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

int threads_for(int threads, int64_t work, int64_t grain) {
  const int64_t t = threads_or_default(threads);
  const int64_t useful = grain > 0 ? work / grain : t;
  return int(useful < 1 ? 1 : useful < t ? useful : t);
}

Scratch::Scratch(size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  p = n ? std::aligned_alloc(64, n) : nullptr;
}
Scratch::~Scratch() { std::free(p); }

}  // namespace kb

// The message of the last failed call on this thread ("" if none).
KB_API const char* kb_cpp_last_error(void) { return kb::g_error; }

// The ISA in use: 3 = AVX-512 + AMX-BF16, 2 = AVX-512, 1 = AVX2+FMA, 0 = neither (kernels return E_ISA).
KB_API int kb_cpp_isa(void) { return kb::isa(); }

// The tile kernels' back end now (kb::TileBackend): 2 = AMX, 1 = AVX512-BF16 model, 0 = none.
KB_API int kb_cpp_tile_backend(void) { return kb::tile_backend(); }

// Force an ISA (tests run the AVX2 path on an AVX-512 machine); -1 restores the automatic choice.
// Returns 0, or E_ISA when the CPU lacks the requested ISA.
KB_API int kb_cpp_set_isa(int which) {
  if (which < 0) { kb::g_forced.store(-1); return 0; }
  const kb::Isa best = kb::best_isa();
  if (which > best) return kb::set_error(kb::E_ISA, "kb_cpp_set_isa(%d): the CPU supports at most %d", which, best);
  kb::g_forced.store(which);
  return 0;
}

// OpenMP threads in this library's runtime (the harness calls this with torch.get_num_threads()).
KB_API int kb_cpp_set_threads(int n) { if (n > 0) omp_set_num_threads(n); return omp_get_max_threads(); }
KB_API int kb_cpp_get_threads(void) { return omp_get_max_threads(); }

