// kb_sim_runtime.cpp: the runtime of the CUDA simulation (kb_sim.h). Fibers, the per-block scheduler with
// barrier and warp-collective semantics, the warp collectives themselves (shuffles with the lane rules of
// the PTX ISA's shfl.sync, mma.m16n8k16 and ldmatrix with its fragment layouts), deferred cp.async, the
// pool of OS threads that runs blocks, and the per-launch error behind cudaGetLastError().
//
// Cost model (what matters for CI time): one fiber switch is a hand-written x86-64 register swap (~10 ns,
// no syscall; ucontext's swapcontext would make a sigprocmask syscall per switch). A __syncthreads in a
// 128-thread block is 256 switches; a warp shuffle is 64 switches plus the exchange.
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

thread_local ThreadInfo* t_cur = nullptr;

// ---------------------------------------------------------------------------------------------------
// Context switch.
#if defined(__x86_64__)
extern "C" void kb_sim_switch_ctx(void** save_sp, void* new_sp);
extern "C" void kb_sim_fiber_start();
__asm__(R"(
  .text
  .globl kb_sim_switch_ctx
  .hidden kb_sim_switch_ctx
  .type kb_sim_switch_ctx,@function
kb_sim_switch_ctx:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kb_sim_switch_ctx,.-kb_sim_switch_ctx

  .globl kb_sim_fiber_start
  .hidden kb_sim_fiber_start
  .type kb_sim_fiber_start,@function
kb_sim_fiber_start:
  movq %r12, %rdi
  call kb_sim_fiber_main
  ud2
  .size kb_sim_fiber_start,.-kb_sim_fiber_start
)");
#endif

enum State : int { RUNNABLE, AT_BARRIER, AT_WARP, DONE, FAILED };

struct Pending {
  void* dst;
  unsigned char data[16];
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
};

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
};
static thread_local Worker* t_worker = nullptr;

static std::atomic<uint64_t> g_switches{0}, g_blocks{0}, g_launches{0}, g_collectives{0};
static std::atomic<long long> g_seed_override{-2};  // -2: read KB_SIM_SCHEDULE_SEED
static std::atomic<int> g_threads_override{0};
static std::mutex g_inject_mu;
static std::string g_inject;  // a failure the next launch reports (tests of the error path)

static size_t stack_bytes() {
  static size_t s = [] {
    const char* e = getenv("KB_SIM_STACK_KB");
    size_t kb = e ? strtoul(e, nullptr, 10) : 0;
#ifdef KB_SIM_ASAN
    if (!kb) kb = 512;
#else
    if (!kb) kb = 128;
#endif
    return kb * 1024;
  }();
  return s;
}

extern "C" void kb_sim_fiber_main(Fiber* f);

static void switch_to_fiber(Worker* w, Fiber* f) {
  w->cur = f;
  t_cur = &f->info;
  g_switches.fetch_add(1, std::memory_order_relaxed);
#ifdef KB_SIM_ASAN
  __sanitizer_start_switch_fiber(&w->sched_fake, f->stack_lo, f->stack_size);
#endif
#if defined(__x86_64__)
  kb_sim_switch_ctx(&w->sched_sp, f->sp);
#else
  swapcontext(&w->sched_uc, &f->uc);
#endif
#ifdef KB_SIM_ASAN
  __sanitizer_finish_switch_fiber(w->sched_fake, nullptr, nullptr);
#endif
  w->cur = nullptr;
  t_cur = nullptr;
}

// From the running fiber back to the scheduler; returns when the scheduler resumes this fiber.
static void switch_to_scheduler(Worker* w, Fiber* f, bool final_switch) {
#ifdef KB_SIM_ASAN
  __sanitizer_start_switch_fiber(final_switch ? nullptr : &f->asan_fake, w->sched_stack_lo, w->sched_stack_size);
#else
  (void)final_switch;
#endif
#if defined(__x86_64__)
  kb_sim_switch_ctx(&f->sp, w->sched_sp);
#else
  swapcontext(&f->uc, &w->sched_uc);
#endif
#ifdef KB_SIM_ASAN
  __sanitizer_finish_switch_fiber(f->asan_fake, nullptr, nullptr);
#endif
}

static Fiber* new_fiber() {
  Fiber* f = new Fiber();
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t sz = stack_bytes();
  char* m = (char*)mmap(nullptr, sz + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
  if (m == MAP_FAILED) {
    fprintf(stderr, "kb_sim: cannot map a fiber stack of %zu bytes\n", sz);
    abort();
  }
  mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
  f->stack_lo = m + page;
  f->stack_size = sz;
  return f;
}

// Prepares `f` to start the kernel body from the top of its stack.
static void reset_fiber(Worker* w, Fiber* f) {
#ifdef KB_SIM_ASAN
  if (w->dirty) __asan_unpoison_memory_region(f->stack_lo, f->stack_size);
#else
  (void)w;
#endif
  f->asan_fake = nullptr;
#if defined(__x86_64__)
  uintptr_t top = ((uintptr_t)(f->stack_lo + f->stack_size)) & ~(uintptr_t)15;
  uint64_t* s = (uint64_t*)(top - 80);
  uint32_t mx, cw = 0;
  __asm__ volatile("stmxcsr %0" : "=m"(mx));
  __asm__ volatile("fnstcw %0" : "=m"(cw));
  s[0] = (uint64_t)mx | ((uint64_t)(cw & 0xffff) << 32);
  s[1] = 0;               // r15
  s[2] = 0;               // r14
  s[3] = 0;               // r13
  s[4] = (uint64_t)f;     // r12: the argument of kb_sim_fiber_main
  s[5] = 0;               // rbx
  s[6] = 0;               // rbp
  s[7] = (uint64_t)(uintptr_t)&kb_sim_fiber_start;  // return address of the first switch
  s[8] = 0;
  s[9] = 0;
  f->sp = s;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack_lo;
  f->uc.uc_stack.ss_size = f->stack_size;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, (void (*)())kb_sim_fiber_main, 1, f);
#endif
  f->state = RUNNABLE;
  f->op = nullptr;
  f->bar_file = nullptr;
  f->uncommitted.clear();
  f->groups.clear();
}

// ---------------------------------------------------------------------------------------------------
// Failure reporting.
static std::string block_prefix(Worker* w) {
  char b[512];
  snprintf(b, sizeof b, "kernel '%s' block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u): ", w->binfo.kernel,
           w->binfo.blockIdx.x, w->binfo.blockIdx.y, w->binfo.blockIdx.z, w->binfo.gridDim.x, w->binfo.gridDim.y,
           w->binfo.gridDim.z, w->binfo.blockDim.x, w->binfo.blockDim.y, w->binfo.blockDim.z);
  return b;
}

static void block_fail(Worker* w, const std::string& msg) {
  if (w->failed) return;
  w->failed = true;
  w->error = block_prefix(w) + msg;
}

static std::string vformat(const char* fmt, va_list ap) {
  char b[1024];
  vsnprintf(b, sizeof b, fmt, ap);
  return b;
}

static std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

static std::string tid_str(Worker* w, unsigned linear) {
  const dim3& d = w->binfo.blockDim;
  unsigned x = linear % d.x, y = (linear / d.x) % d.y, z = linear / (d.x * d.y);
  if (d.y == 1 && d.z == 1) return format("%u", x);
  return format("(%u,%u,%u)", x, y, z);
}

// "0-31, 64, 96-127" for a sorted list of linear thread ids.
static std::string ranges(Worker* w, const std::vector<unsigned>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    if (s.size() > 300) { s += "..."; break; }
    s += tid_str(w, ids[i]);
    if (j > i) s += "-" + tid_str(w, ids[j]);
    i = j + 1;
  }
  return s;
}

void kernel_fail(const char* fmt, ...) {
  Worker* w = t_worker;
  va_list ap;
  va_start(ap, fmt);
  std::string m = vformat(fmt, ap);
  va_end(ap);
  if (!w || !w->cur) {
    fprintf(stderr, "kb_sim: %s (outside a kernel)\n", m.c_str());
    abort();
  }
  Fiber* f = w->cur;
  block_fail(w, "thread " + tid_str(w, f->info.linear) + ": " + m);
  f->state = FAILED;
  w->dirty = true;
  switch_to_scheduler(w, f, true);
  abort();  // never resumed
}

// ---------------------------------------------------------------------------------------------------
// Calls from kernel code.
static Fiber* current(const char* what) {
  Worker* w = t_worker;
  if (!w || !w->cur) {
    fprintf(stderr, "kb_sim: %s called outside a kernel launched with KB_LAUNCH\n", what);
    abort();
  }
  return w->cur;
}

void syncthreads(const char* file, int line) {
  Fiber* f = current("__syncthreads");
  f->state = AT_BARRIER;
  f->bar_file = file;
  f->bar_line = line;
  switch_to_scheduler(t_worker, f, false);
}

void warp_collective(CollOp* op) {
  Fiber* f = current(op->what);
  f->state = AT_WARP;
  f->op = op;
  switch_to_scheduler(t_worker, f, false);
}

static void apply_group(std::vector<Pending>& g) {
  for (Pending& p : g) memcpy(p.dst, p.data, 16);
}

void cp_async(void* dst, const void* src, int bytes, bool valid, const char* file, int line) {
  Fiber* f = current("cp.async");
  if (((uintptr_t)dst & 15) || (valid && ((uintptr_t)src & 15)))
    kernel_fail("cp.async of 16 bytes at %s:%d needs 16-byte aligned addresses (shared %p, global %p)", file, line,
                dst, src);
  Pending p;
  p.dst = dst;
  if (valid)
    memcpy(p.data, src, (size_t)bytes);  // read at issue: AddressSanitizer reports a bad source here
  else
    memset(p.data, 0, sizeof p.data);
  f->uncommitted.push_back(p);
}

void cp_async_commit() {
  Fiber* f = current("cp.async.commit_group");
  f->groups.push_back(std::move(f->uncommitted));
  f->uncommitted.clear();
}

// The copies land in shared memory only here, at the wait that covers them: a kernel that reads the
// destination before its wait sees the old contents, as it may on the GPU.
void cp_async_wait(int n) {
  Fiber* f = current("cp.async.wait_group");
  while ((int)f->groups.size() > n) {
    apply_group(f->groups.front());
    f->groups.pop_front();
  }
}

extern "C" void kb_sim_fiber_main(Fiber* f) {
  Worker* w = t_worker;
#ifdef KB_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w->sched_stack_lo, &w->sched_stack_size);
#endif
  try {
    w->L->body(w->L->ctx);
  } catch (...) {
    block_fail(w, "thread " + tid_str(w, f->info.linear) + ": a C++ exception left the kernel");
  }
  // Copies still in flight complete when the thread exits.
  f->groups.push_back(std::move(f->uncommitted));
  for (auto& g : f->groups) apply_group(g);
  f->groups.clear();
  f->state = DONE;
  switch_to_scheduler(w, f, true);
  abort();
}

// ---------------------------------------------------------------------------------------------------
// Warp collectives, executed by the scheduler once all lanes of the mask wait.
static inline uint16_t lo16(uint32_t v) { return (uint16_t)(v & 0xffff); }
static inline uint16_t hi16(uint32_t v) { return (uint16_t)(v >> 16); }
static inline float b16_to_f32(uint16_t b, bool bf16) {
  return bf16 ? bf16_bits_to_f32(b) : f16_bits_to_f32(b);
}

// `group`: the lanes that take part; ops[l] for l in group. Returns an error message or "".
static std::string exec_collective(Worker* w, unsigned warp, CollOp** ops, unsigned group) {
  CollOp* o0 = ops[__builtin_ctz(group)];
  const int kind = o0->kind;
  switch (kind) {
    case COLL_SYNCWARP:
      return "";
    case COLL_BALLOT: case COLL_ANY: case COLL_ALL: {
      unsigned bal = 0;
      for (unsigned l = 0; l < 32; ++l)
        if ((group >> l & 1) && ops[l]->value) bal |= 1u << l;
      unsigned r = kind == COLL_BALLOT ? bal : kind == COLL_ANY ? (bal != 0) : (bal == group);
      for (unsigned l = 0; l < 32; ++l)
        if (group >> l & 1) ops[l]->result = r;
      return "";
    }
    case COLL_SHFL_IDX: case COLL_SHFL_UP: case COLL_SHFL_DOWN: case COLL_SHFL_XOR: {
      uint64_t res[32];
      for (unsigned l = 0; l < 32; ++l) {
        if (!(group >> l & 1)) continue;
        CollOp* o = ops[l];
        const int width = o->width;
        if (width < 1 || width > 32 || (width & (width - 1)))
          return format("%s at %s:%d: width %d is not a power of two in [1, 32]", o->what, o->file, o->line, width);
        // shfl.sync of the PTX ISA: c = ((32 - width) << 8) | clamp, segmask = c[12:8].
        const int segmask = (32 - width) & 31 ? (~(width - 1)) & 31 : 0;
        const int b = o->arg & 31;
        const int lane = (int)l;
        const int maxLane_upper = (lane & segmask) | ((width - 1) & ~segmask & 31);  // clamp = 31 for idx/down/bfly
        const int minLane = lane & segmask;
        int j = lane;
        bool pval = true;
        switch (kind) {
          case COLL_SHFL_UP: j = lane - b; pval = j >= minLane; break;
          case COLL_SHFL_DOWN: j = lane + b; pval = j <= maxLane_upper; break;
          case COLL_SHFL_XOR: j = lane ^ b; pval = j <= maxLane_upper; break;
          default: j = minLane | (b & ~segmask & 31); pval = j <= maxLane_upper; break;
        }
        if (!pval) j = lane;
        if (!(group >> j & 1)) {
          const unsigned base = warp * 32;
          const bool exists = base + (unsigned)j < w->nthreads;
          return format("warp %u lane %d: %s at %s:%d reads lane %d, which %s", warp, lane, o->what, o->file, o->line,
                        j, exists ? "is not in the mask (its value is undefined)"
                                  : "does not exist (the block's last warp is partial: undefined value)");
        }
        if (ops[j]->size != o->size)
          return format("warp %u: %s at %s:%d: lanes %d and %d shuffle values of different sizes", warp, o->what,
                        o->file, o->line, lane, j);
        res[l] = ops[j]->value;
      }
      for (unsigned l = 0; l < 32; ++l)
        if (group >> l & 1) ops[l]->result = res[l];
      return "";
    }
    case COLL_MMA_BF16: case COLL_MMA_F16: {
      // mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: g = lane/4, t = lane%4 (PTX ISA fragment layouts).
      const bool bf16 = kind == COLL_MMA_BF16;
      float A[16][16], B[16][8], C[16][8];
      for (int l = 0; l < 32; ++l) {
        const uint32_t* a = (const uint32_t*)ops[l]->in0;
        const uint32_t* b = (const uint32_t*)ops[l]->in1;
        const float* c = (const float*)ops[l]->in2;
        const int g = l >> 2, t = l & 3;
        A[g][2 * t] = b16_to_f32(lo16(a[0]), bf16);     A[g][2 * t + 1] = b16_to_f32(hi16(a[0]), bf16);
        A[g + 8][2 * t] = b16_to_f32(lo16(a[1]), bf16); A[g + 8][2 * t + 1] = b16_to_f32(hi16(a[1]), bf16);
        A[g][2 * t + 8] = b16_to_f32(lo16(a[2]), bf16); A[g][2 * t + 9] = b16_to_f32(hi16(a[2]), bf16);
        A[g + 8][2 * t + 8] = b16_to_f32(lo16(a[3]), bf16); A[g + 8][2 * t + 9] = b16_to_f32(hi16(a[3]), bf16);
        B[2 * t][g] = b16_to_f32(lo16(b[0]), bf16);     B[2 * t + 1][g] = b16_to_f32(hi16(b[0]), bf16);
        B[2 * t + 8][g] = b16_to_f32(lo16(b[1]), bf16); B[2 * t + 9][g] = b16_to_f32(hi16(b[1]), bf16);
        C[g][2 * t] = c[0]; C[g][2 * t + 1] = c[1]; C[g + 8][2 * t] = c[2]; C[g + 8][2 * t + 1] = c[3];
      }
      // Products of 16-bit values are exact in fp32; accumulate in double and round once (the tensor
      // core's fp32 accumulation order is unspecified; this is the exact result rounded).
      float D[16][8];
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
          double s = C[i][j];
          for (int k = 0; k < 16; ++k) s += (double)A[i][k] * (double)B[k][j];
          D[i][j] = (float)s;
        }
      for (int l = 0; l < 32; ++l) {  // written after all inputs were read: d may alias c
        float* d = (float*)ops[l]->out;
        const int g = l >> 2, t = l & 3;
        d[0] = D[g][2 * t]; d[1] = D[g][2 * t + 1]; d[2] = D[g + 8][2 * t]; d[3] = D[g + 8][2 * t + 1];
      }
      return "";
    }
    case COLL_LDMATRIX: {
      // ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: lanes 8i..8i+7 give the row addresses of
      // matrix i (16 bytes per row). Lane l receives in r[i] matrix i's (row l/4, cols 2(l%4), 2(l%4)+1), or
      // with .trans (rows 2(l%4), 2(l%4)+1, col l/4).
      const int n = o0->arg;
      const bool trans = o0->width != 0;
      uint16_t M[4][8][8];
      for (int i = 0; i < n; ++i)
        for (int r = 0; r < 8; ++r) {
          const CollOp* o = ops[i * 8 + r];
          if ((uintptr_t)o->in0 & 15)
            return format("warp %u lane %d: %s at %s:%d: row address %p is not 16-byte aligned", warp, i * 8 + r,
                          o->what, o->file, o->line, o->in0);
          memcpy(M[i][r], o->in0, 16);
        }
      uint32_t out[32][4];
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < n; ++i) {
          const int a = l >> 2, b = 2 * (l & 3);
          out[l][i] = trans ? ((uint32_t)M[i][b][a] | ((uint32_t)M[i][b + 1][a] << 16))
                            : ((uint32_t)M[i][a][b] | ((uint32_t)M[i][a][b + 1] << 16));
        }
      for (int l = 0; l < 32; ++l) memcpy(ops[l]->out, out[l], 4 * (size_t)n);
      return "";
    }
  }
  return format("unknown warp collective kind %d", kind);
}

static bool aligned_op(int kind) { return kind == COLL_MMA_BF16 || kind == COLL_MMA_F16 || kind == COLL_LDMATRIX; }

static const char* state_name(int s) {
  switch (s) {
    case RUNNABLE: return "running";
    case AT_BARRIER: return "at __syncthreads";
    case AT_WARP: return "at a warp collective";
    case DONE: return "exited";
    default: return "failed";
  }
}

// Fires every warp collective whose lanes have all arrived. Returns true if any fired.
static bool fire_warp_collectives(Worker* w) {
  bool fired = false;
  const unsigned n = w->nthreads;
  const unsigned nwarps = (n + 31) / 32;
  CollOp* ops[32];
  for (unsigned wp = 0; wp < nwarps && !w->failed; ++wp) {
    const unsigned base = wp * 32;
    const unsigned cnt = std::min(32u, n - base);
    const unsigned exist = cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1);
    unsigned waiting = 0;
    for (unsigned l = 0; l < cnt; ++l) {
      Fiber* f = w->fibers[base + l];
      if (f->state == AT_WARP) { waiting |= 1u << l; ops[l] = f->op; } else ops[l] = nullptr;
    }
    unsigned pending = waiting;
    while (pending) {
      const unsigned l = __builtin_ctz(pending);
      CollOp* o = ops[l];
      if (!(o->mask >> l & 1)) {
        block_fail(w, format("thread %s (warp %u lane %u): %s at %s:%d with mask 0x%08x, which does not include "
                             "the calling lane", tid_str(w, base + l).c_str(), wp, l, o->what, o->file, o->line,
                             o->mask));
        return false;
      }
      if (aligned_op(o->kind) && exist != 0xffffffffu) {
        block_fail(w, format("warp %u: %s at %s:%d needs all 32 lanes, but the block's last warp has %u threads",
                             wp, o->what, o->file, o->line, cnt));
        return false;
      }
      const unsigned M = o->mask & exist;
      unsigned grp = 0;
      for (unsigned j = 0; j < 32; ++j)
        if ((M >> j & 1) && (waiting >> j & 1) && (ops[j]->mask & exist) == M) grp |= 1u << j;
      if (grp == M) {
        for (unsigned j = 0; j < 32; ++j) {
          if (!(grp >> j & 1)) continue;
          if (ops[j]->kind != o->kind || (aligned_op(o->kind) && (ops[j]->line != o->line || ops[j]->file != o->file &&
                                                                  strcmp(ops[j]->file, o->file)))) {
            block_fail(w, format("warp %u: lanes meet at different warp collectives: lane %u at %s (%s:%d), lane %u "
                                 "at %s (%s:%d)", wp, l, o->what, o->file, o->line, j, ops[j]->what, ops[j]->file,
                                 ops[j]->line));
            return false;
          }
        }
        std::string err = exec_collective(w, wp, ops, grp);
        g_collectives.fetch_add(1, std::memory_order_relaxed);
        if (!err.empty()) {
          block_fail(w, err);
          return false;
        }
        for (unsigned j = 0; j < 32; ++j)
          if (grp >> j & 1) {
            Fiber* f = w->fibers[base + j];
            f->state = RUNNABLE;
            f->op = nullptr;
          }
        fired = true;
      }
      pending &= ~(grp | (1u << l));
    }
  }
  return fired;
}

// Nothing can run and nothing can fire: say who waits where.
static void diagnose_stall(Worker* w) {
  const unsigned n = w->nthreads;
  // Warp collectives with lanes that never came.
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = w->fibers[i];
    if (f->state != AT_WARP) continue;
    const unsigned wp = i / 32, base = wp * 32, cnt = std::min(32u, n - base);
    const unsigned exist = cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1);
    CollOp* o = f->op;
    std::vector<unsigned> missing;
    std::string where;
    for (unsigned j = 0; j < cnt; ++j) {
      if (!((o->mask & exist) >> j & 1)) continue;
      Fiber* g = w->fibers[base + j];
      if (g->state == AT_WARP && g->op->kind == o->kind && (g->op->mask & exist) == (o->mask & exist)) continue;
      missing.push_back(base + j);
      if (where.empty()) {
        if (g->state == AT_BARRIER) where = format("waits at __syncthreads (%s:%d)", g->bar_file, g->bar_line);
        else if (g->state == AT_WARP) where = format("waits at %s (%s:%d) with mask 0x%08x", g->op->what,
                                                     g->op->file, g->op->line, g->op->mask);
        else where = state_name(g->state);
      }
    }
    block_fail(w, format("divergent warp collective: %s at %s:%d (mask 0x%08x) in warp %u waits for threads %s; "
                         "thread %s %s", o->what, o->file, o->line, o->mask, wp, ranges(w, missing).c_str(),
                         missing.empty() ? "?" : tid_str(w, missing[0]).c_str(), where.c_str()));
    return;
  }
  // __syncthreads that not every thread reaches.
  std::map<std::string, std::vector<unsigned>> by_place;
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = w->fibers[i];
    std::string k = f->state == AT_BARRIER ? format("wait at __syncthreads (%s:%d)", f->bar_file, f->bar_line)
                                           : format("have %s", state_name(f->state));
    by_place[k].push_back(i);
  }
  std::string m = "divergent __syncthreads: not every thread of the block reaches the same barrier:";
  for (auto& kv : by_place) m += " threads " + ranges(w, kv.second) + " " + kv.first + ";";
  block_fail(w, m);
}

static uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void run_block(Worker* w, Launch* L, uint64_t linear_block) {
  const dim3 g = L->grid, b = L->block;
  w->L = L;
  w->binfo.blockIdx = uint3{(unsigned)(linear_block % g.x), (unsigned)((linear_block / g.x) % g.y),
                            (unsigned)(linear_block / ((uint64_t)g.x * g.y))};
  w->binfo.blockDim = b;
  w->binfo.gridDim = g;
  w->binfo.kernel = L->name;
  w->nthreads = b.x * b.y * b.z;
  w->failed = false;
  w->error.clear();
  while (w->fibers.size() < w->nthreads) w->fibers.push_back(new_fiber());
  for (unsigned i = 0; i < w->nthreads; ++i) {
    Fiber* f = w->fibers[i];
    reset_fiber(w, f);
    f->info.threadIdx = uint3{i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
    f->info.block = &w->binfo;
    f->info.linear = i;
  }
  w->dirty = false;
  // Dynamic shared memory: 0xFF (NaN in fp32, bf16 and fp16) so a read of an element no thread wrote shows;
  // under ASan everything past the launch's smem_bytes is poisoned.
  unsigned char* smem = kb_sim_dyn_storage + KB_SIM_SMEM_GUARD;
#ifdef KB_SIM_ASAN
  __asan_poison_memory_region(kb_sim_dyn_storage, KB_SIM_SMEM_GUARD * 2 + KB_SIM_MAX_DYNAMIC_SMEM);
  __asan_unpoison_memory_region(smem, L->smem);
#endif
  memset(smem, 0xff, L->smem);
  w->rng = (uint64_t)L->seed * 0x2545f4914f6cdd1dull + linear_block;
  std::vector<unsigned> order;
  order.reserve(w->nthreads);
  for (;;) {
    order.clear();
    for (unsigned i = 0; i < w->nthreads; ++i)
      if (w->fibers[i]->state == RUNNABLE) order.push_back(i);
    if (!order.empty()) {
      if (L->seed >= 0)
        for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[splitmix(w->rng) % (i + 1)]);
      for (unsigned i : order) {
        switch_to_fiber(w, w->fibers[i]);
        if (w->failed) break;
      }
      if (w->failed) break;
      continue;
    }
    if (fire_warp_collectives(w)) continue;
    if (w->failed) break;
    unsigned done = 0, at_bar = 0;
    for (unsigned i = 0; i < w->nthreads; ++i) {
      int s = w->fibers[i]->state;
      done += s == DONE;
      at_bar += s == AT_BARRIER;
    }
    if (done == w->nthreads) break;
    if (at_bar == w->nthreads) {
      const Fiber* f0 = w->fibers[0];
      bool same = true;
      for (unsigned i = 1; i < w->nthreads && same; ++i) {
        const Fiber* f = w->fibers[i];
        same = f->bar_line == f0->bar_line && (f->bar_file == f0->bar_file || !strcmp(f->bar_file, f0->bar_file));
      }
      if (same) {
        for (unsigned i = 0; i < w->nthreads; ++i) w->fibers[i]->state = RUNNABLE;
        continue;
      }
    }
    diagnose_stall(w);
    break;
  }
  if (w->failed) {
    w->dirty = true;
    std::lock_guard<std::mutex> lk(L->err_mu);
    if (!L->failed.exchange(true)) L->error = w->error;
  }
  w->L = nullptr;
  g_blocks.fetch_add(1, std::memory_order_relaxed);
}

static void work(Launch* L) {
  if (!t_worker) t_worker = new Worker();  // one per OS thread, kept for its fibers' stacks
  Worker* w = t_worker;
  for (;;) {
    if (L->failed.load(std::memory_order_relaxed)) return;
    uint64_t i = L->next.fetch_add(1);
    if (i >= L->nblocks) return;
    run_block(w, L, i);
  }
}

// ---------------------------------------------------------------------------------------------------
// Pool of OS threads. The launching thread works too; launches are serialized.
struct Pool {
  std::mutex m;
  std::condition_variable cv, cv_done;
  std::vector<std::thread> threads;
  Launch* job = nullptr;
  uint64_t gen = 0;
  int want = 0, joined = 0, busy = 0;

  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m);
    for (;;) {
      cv.wait(lk, [&] { return gen != seen; });
      seen = gen;
      if (joined >= want) continue;
      ++joined;
      Launch* L = job;
      lk.unlock();
      work(L);
      lk.lock();
      if (--busy == 0) cv_done.notify_all();
    }
  }
  void run(Launch* L, int nworkers) {
    {
      std::lock_guard<std::mutex> lk(m);
      while ((int)threads.size() < nworkers - 1) {
        threads.emplace_back([this] { loop(); });
        threads.back().detach();
      }
      job = L;
      want = busy = nworkers - 1;
      joined = 0;
      ++gen;
    }
    cv.notify_all();
    work(L);
    std::unique_lock<std::mutex> lk(m);
    cv_done.wait(lk, [&] { return busy == 0; });
    job = nullptr;
  }
};
static Pool* g_pool = new Pool();  // never destroyed: detached workers outlive static destruction
static std::mutex g_launch_mu;

// ---------------------------------------------------------------------------------------------------
// Errors: per host thread, like CUDA's.
static thread_local cudaError_t t_err = cudaSuccess;
static thread_local cudaError_t t_msg_code = cudaSuccess;
static thread_local std::string t_msg;

static void set_error(cudaError_t e, const std::string& msg) {
  t_err = e;
  t_msg_code = e;
  t_msg = msg;
  if (getenv("KB_SIM_VERBOSE")) fprintf(stderr, "kb_sim: %s\n", msg.c_str());
}

cudaError_t get_last_error(bool clear) {
  cudaError_t e = t_err;
  if (clear) t_err = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t e) {
  if (e != cudaSuccess && e == t_msg_code && !t_msg.empty()) return t_msg.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "unknown error";
  }
}

static std::mutex g_attr_mu;
static std::map<const void*, long> g_max_smem;

cudaError_t set_max_dynamic_smem(const void* kernel_id, long bytes) {
  if (bytes < 0 || bytes > KB_SIM_MAX_DYNAMIC_SMEM) {
    set_error(cudaErrorInvalidValue, format("cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %ld): more than the "
                                            "%d bytes of an sm_90 block", bytes, KB_SIM_MAX_DYNAMIC_SMEM));
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lk(g_attr_mu);
  g_max_smem[kernel_id] = bytes;
  return cudaSuccess;
}

static std::string kernel_name(const char* expr, const void* kernel_id) {
  Dl_info info;
  if (dladdr(kernel_id, &info) && info.dli_sname && info.dli_saddr == kernel_id) {
    int st = 0;
    char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &st);
    std::string s = st == 0 && d ? d : info.dli_sname;
    free(d);
    return s;
  }
  return expr;
}

void launch(const char* expr, const void* kernel_id, dim3 grid, dim3 block, size_t smem, BodyFn body, void* ctx) {
  std::string name = kernel_name(expr, kernel_id);
  const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration,
              format("kernel '%s': invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u) (at most 1024 "
                     "threads per block)", name.c_str(), grid.x, grid.y, grid.z, block.x, block.y, block.z));
    return;
  }
  long limit = KB_SIM_DEFAULT_DYNAMIC_SMEM;
  {
    std::lock_guard<std::mutex> lk(g_attr_mu);
    auto it = g_max_smem.find(kernel_id);
    if (it != g_max_smem.end()) limit = std::max(limit, it->second);
  }
  if ((long)smem > limit) {
    set_error(cudaErrorInvalidValue,
              format("kernel '%s': %zu bytes of dynamic shared memory requested, but the kernel may use %ld (more "
                     "than 48 KiB needs KB_SET_MAX_DYNAMIC_SMEM first; at most %d)", name.c_str(), smem, limit,
                     KB_SIM_MAX_DYNAMIC_SMEM));
    return;
  }
  Launch L;
  L.name = name.c_str();
  L.body = body;
  L.ctx = ctx;
  L.grid = grid;
  L.block = block;
  L.smem = smem;
  L.nblocks = (uint64_t)grid.x * grid.y * grid.z;
  long long seed = g_seed_override.load();
  if (seed == -2) {
    const char* e = getenv("KB_SIM_SCHEDULE_SEED");
    seed = e && *e ? strtoll(e, nullptr, 10) : -1;
  }
  L.seed = seed;
  int nt = g_threads_override.load();
  if (nt <= 0) {
    const char* e = getenv("KB_SIM_THREADS");
    nt = e ? atoi(e) : 0;
    if (nt <= 0) nt = (int)std::max(1u, std::thread::hardware_concurrency());
  }
  nt = (int)std::min<uint64_t>((uint64_t)nt, L.nblocks);
  g_launches.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(g_inject_mu);
    if (!g_inject.empty()) {
      set_error(cudaErrorLaunchFailure, "kb_sim: kernel '" + name + "': " + g_inject);
      g_inject.clear();
      return;
    }
  }
  if (t_worker && t_worker->cur) {
    kernel_fail("kernel '%s' launched from device code (dynamic parallelism is not simulated)", name.c_str());
  }
  {
    std::lock_guard<std::mutex> lk(g_launch_mu);
    g_pool->run(&L, nt);
  }
  if (L.failed) set_error(cudaErrorLaunchFailure, "kb_sim: " + L.error);
}

#pragma GCC visibility pop
}  // namespace kb_sim

// ---------------------------------------------------------------------------------------------------
// C interface for the Python side (tests and kernels/cuda/lib.py).
extern "C" {
// seed >= 0: permute thread order with this seed; -1: natural order; -2: read KB_SIM_SCHEDULE_SEED (default).
__attribute__((visibility("default"))) void kb_sim_set_schedule_seed(long long seed) {
  kb_sim::g_seed_override.store(seed);
}
// OS threads that run blocks; 0: KB_SIM_THREADS or the number of cores (default).
__attribute__((visibility("default"))) void kb_sim_set_threads(int n) { kb_sim::g_threads_override.store(n); }
// The message of the last failed launch on this thread ("" if none), kept until the next failure.
__attribute__((visibility("default"))) const char* kb_sim_last_error(void) { return kb_sim::t_msg.c_str(); }
// The next launch fails with `msg` without running (tests of the callers' error paths).
__attribute__((visibility("default"))) void kb_sim_inject_failure(const char* msg) {
  std::lock_guard<std::mutex> lk(kb_sim::g_inject_mu);
  kb_sim::g_inject = msg && *msg ? msg : "injected failure";
}
// launches, blocks, fiber switches, warp collectives executed since load.
__attribute__((visibility("default"))) void kb_sim_stats(unsigned long long out[4]) {
  out[0] = kb_sim::g_launches.load();
  out[1] = kb_sim::g_blocks.load();
  out[2] = kb_sim::g_switches.load();
  out[3] = kb_sim::g_collectives.load();
}
}
