// kb_sim_fiber.cpp: CUDA threads as fibers: the context switch (hand-written x86-64 register swap, ~10 ns, no syscall;
// ucontext elsewhere), stacks with guard pages, failure reporting, and the calls kernel code makes: __syncthreads,
// warp collectives (park the lane for the scheduler), cp.async (deferred to its wait).
#include "kb_sim_internal.h"

namespace kb_sim {
#pragma GCC visibility push(hidden)

thread_local ThreadInfo* t_cur = nullptr;
thread_local Worker* t_worker = nullptr;
std::atomic<uint64_t> g_switches{0}, g_blocks{0}, g_launches{0}, g_collectives{0};
std::atomic<long long> g_seed_override{-2};
std::atomic<int> g_threads_override{0};
std::atomic<int> g_schedule_override{-1};
std::mutex g_inject_mu;
std::string g_inject;

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


size_t stack_bytes() {
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

void switch_to_fiber(Worker* w, Fiber* f) {
  w->cur = f;
  t_cur = &f->info;
  g_switches.fetch_add(1, std::memory_order_relaxed);
  race_enter(w, f);
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
  race_leave(w);
  w->cur = nullptr;
  t_cur = nullptr;
}

// From the running fiber back to the scheduler; returns when the scheduler resumes this fiber.
void switch_to_scheduler(Worker* w, Fiber* f, bool final_switch) {
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

Fiber* new_fiber() {
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
void reset_fiber(Worker* w, Fiber* f) {
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
std::string block_prefix(Worker* w) {
  char b[512];
  snprintf(b, sizeof b, "kernel '%s' block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u): ", w->binfo.kernel,
           w->binfo.blockIdx.x, w->binfo.blockIdx.y, w->binfo.blockIdx.z, w->binfo.gridDim.x, w->binfo.gridDim.y,
           w->binfo.gridDim.z, w->binfo.blockDim.x, w->binfo.blockDim.y, w->binfo.blockDim.z);
  return b;
}

void block_fail(Worker* w, const std::string& msg) {
  if (w->failed) return;
  w->failed = true;
  w->error = block_prefix(w) + msg;
}

std::string vformat(const char* fmt, va_list ap) {
  char b[1024];
  vsnprintf(b, sizeof b, fmt, ap);
  return b;
}

std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

std::string tid_str(Worker* w, unsigned linear) {
  const dim3& d = w->binfo.blockDim;
  unsigned x = linear % d.x, y = (linear / d.x) % d.y, z = linear / (d.x * d.y);
  if (d.y == 1 && d.z == 1) return format("%u", x);
  return format("(%u,%u,%u)", x, y, z);
}

// "0-31, 64, 96-127" for a sorted list of linear thread ids.
std::string ranges(Worker* w, const std::vector<unsigned>& ids) {
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
Fiber* current(const char* what) {
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

void apply_group(Worker* w, Fiber* f, std::vector<Pending>& g) {
  for (Pending& p : g) {
    race_cp_async_land(w, f, p);
    memcpy(p.dst, p.data, 16);
  }
}

void cp_async(void* dst, const void* src, int bytes, bool valid, const char* file, int line) {
  Fiber* f = current("cp.async");
  if (((uintptr_t)dst & 15) || (valid && ((uintptr_t)src & 15)))
    kernel_fail("cp.async of 16 bytes at %s:%d needs 16-byte aligned addresses (shared %p, global %p)", file, line,
                dst, src);
  race_cp_async_issue(t_worker, f, dst, (size_t)bytes, file, line);
  Pending p;
  p.dst = dst;
  p.file = file;
  p.line = line;
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
    apply_group(t_worker, f, f->groups.front());
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
  for (auto& g : f->groups) apply_group(w, f, g);
  f->groups.clear();
  f->state = DONE;
  switch_to_scheduler(w, f, true);
  abort();
}

#pragma GCC visibility pop
}  // namespace kb_sim
