// kb_sim_internal.h: what the parts of the CUDA simulation's runtime share (kb_sim.h is the kernels' side).
//   kb_sim_fiber.cpp        fibers: context switch, stacks, failure reporting, the calls kernel code makes
//                           (__syncthreads, warp collectives, cp.async)
//   kb_sim_collectives.cpp  warp collectives (shuffles, ballot, mma, ldmatrix) and stalled-block diagnosis
//   kb_sim_scheduler.cpp    the per-block scheduler (schedules: natural, seeded, drift, random), the pool of
//                           OS threads, launch
//   kb_sim_api.cpp          CUDA errors, cudaFuncSetAttribute, the C interface for Python
//   kb_sim_race.cpp         the race checker (shadow memory behind the compiler's -fsanitize=thread hooks)
#pragma once
#define KB_SIM_RUNTIME 1
#include "kb_sim.h"
// The built-in variables are macros for kernel code; here they are field names.
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim

#include <cxxabi.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define KB_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KB_SIM_ASAN 1
#endif
#endif
#ifdef KB_SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// The dynamic shared memory of the OS thread: defined with the aliases of every `extern __shared__` array
// by the file that kb_sim.cmake generates (kb_sim_dynsmem.c).
#define KB_SIM_SMEM_GUARD 256
extern "C" {
extern thread_local unsigned char kb_sim_dyn_storage[];
}


namespace kb_sim {
#pragma GCC visibility push(hidden)

enum State : int { RUNNABLE, AT_BARRIER, AT_WARP, DONE, FAILED };

struct Pending {
  void* dst;
  unsigned char data[16];
  const char* file;  // the cp.async call site (race reports)
  int line;
};

struct Fiber {
  // context
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  char* stack_lo = nullptr;  // usable stack (above the guard page)
  size_t stack_size = 0;
  void* asan_fake = nullptr;
  // CUDA thread
  ThreadInfo info{};
  int state = DONE;
  const char* bar_file = nullptr;
  int bar_line = 0;
  CollOp* op = nullptr;
  std::vector<Pending> uncommitted;
  std::deque<std::vector<Pending>> groups;
  uint32_t vc[32] = {};  // race checker: this lane's vector clock over its warp's lanes (__syncwarp joins them)
};

struct Launch {
  const char* name;
  BodyFn body;
  void* ctx;
  dim3 grid, block;
  size_t smem;
  uint64_t nblocks;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string error;
  long long seed;  // < 0: natural order
  int schedule;    // Schedule
};

// Orders in which a block's fibers run (KB_SIM_SCHEDULE / kb_sim_set_schedule):
//   SCHED_LOCKSTEP  every runnable thread, in thread order (or permuted by the seed), then warp collectives
//                   once nothing can run: warps advance together (the default)
//   SCHED_DRIFT     one warp at a time (warp order permuted by the seed): a warp runs through its collectives
//                   to its next __syncthreads before the next warp starts
//   SCHED_RANDOM    a random runnable thread at each step, and a warp's collective fires as soon as its lanes
//                   have arrived: warps interleave at random between barriers
enum Schedule : int { SCHED_LOCKSTEP = 0, SCHED_DRIFT = 1, SCHED_RANDOM = 2 };

struct Worker {
  std::vector<Fiber*> fibers;
#if defined(__x86_64__)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_uc;
#endif
  void* sched_fake = nullptr;
  const void* sched_stack_lo = nullptr;
  size_t sched_stack_size = 0;
  Fiber* cur = nullptr;
  bool dirty = false;  // fibers abandoned mid-kernel by a failed block: their stacks need unpoisoning
  // current block
  Launch* L = nullptr;
  BlockInfo binfo{};
  unsigned nthreads = 0;
  bool failed = false;
  std::string error;
  uint64_t rng = 0;
  struct RaceWorker* race = nullptr;  // race checker state (kb_sim_race.cpp), when built with it
};
extern thread_local Worker* t_worker;

extern std::atomic<uint64_t> g_switches, g_blocks, g_launches, g_collectives;
extern std::atomic<long long> g_seed_override;  // -2: read KB_SIM_SCHEDULE_SEED
extern std::atomic<int> g_threads_override;
extern std::atomic<int> g_schedule_override;    // -1: read KB_SIM_SCHEDULE
extern std::mutex g_inject_mu;
extern std::string g_inject;  // a failure the next launch reports (tests of the error path)

// kb_sim_fiber.cpp
void switch_to_fiber(Worker* w, Fiber* f);
Fiber* new_fiber();
void reset_fiber(Worker* w, Fiber* f);
void block_fail(Worker* w, const std::string& msg);
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string tid_str(Worker* w, unsigned linear);
std::string ranges(Worker* w, const std::vector<unsigned>& ids);
// kb_sim_collectives.cpp
bool fire_warp_collectives(Worker* w, int only_warp = -1);
void diagnose_stall(Worker* w);
// kb_sim_scheduler.cpp
void run_block(Worker* w, Launch* L, uint64_t linear_block);
// kb_sim_race.cpp: the race checker. Built into the *_race libraries (KB_SIM_RACECHECK: kernels compiled with
// -fsanitize=thread, whose load/store hooks this runtime defines); everywhere else these are empty.
#ifdef KB_SIM_RACECHECK
void race_block_begin(Worker* w);
void race_barrier(Worker* w);
void race_enter(Worker* w, Fiber* f);  // f starts/resumes running on this OS thread
void race_leave(Worker* w);
void race_syncwarp(Worker* w, unsigned warp, unsigned group);
// ldmatrix's row read on behalf of lane `f` (scheduler context): "" or the race report
std::string race_collective_read(Worker* w, Fiber* f, const void* p, size_t n, const char* file, int line);
void race_cp_async_issue(Worker* w, Fiber* f, void* dst, size_t n, const char* file, int line);
void race_cp_async_land(Worker* w, Fiber* f, const Pending& p);
#else
inline void race_block_begin(Worker*) {}
inline void race_barrier(Worker*) {}
inline void race_enter(Worker*, Fiber*) {}
inline void race_leave(Worker*) {}
inline void race_syncwarp(Worker*, unsigned, unsigned) {}
inline std::string race_collective_read(Worker*, Fiber*, const void*, size_t, const char*, int) { return ""; }
inline void race_cp_async_issue(Worker*, Fiber*, void*, size_t, const char*, int) {}
inline void race_cp_async_land(Worker*, Fiber*, const Pending&) {}
#endif
extern const bool k_racecheck;

// kb_sim_api.cpp
void set_error(cudaError_t e, const std::string& msg);
extern thread_local std::string t_msg;
extern std::mutex g_attr_mu;
extern std::map<const void*, long> g_max_smem;

#pragma GCC visibility pop
}  // namespace kb_sim
