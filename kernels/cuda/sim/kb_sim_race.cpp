// kb_sim_race.cpp: the race checker of the CUDA simulation, like compute-sanitizer's racecheck but exact and
// independent of the schedule. Built into the *_race libraries only (KB_SIM_RACECHECK): their kernel objects are
// compiled with -fsanitize=thread, so the compiler calls __tsan_read4(addr), __tsan_write16(addr)... before
// every load and store it cannot prove thread-private; this file defines those hooks itself (libtsan is not
// linked) and keeps a shadow of every byte that kernel threads touch.
//
// Why our own shadow rather than ThreadSanitizer's runtime with its fiber API: the question is barrier
// intervals, not happens-before between OS threads. Each shadow byte records the last write and the last two
// distinct readers as (thread, barrier epoch, warp clock, source site); an access conflicts with a record of
// another thread when no __syncthreads separates them (same epoch) and no __syncwarp orders them (same warp,
// vector clock). That is exact for every schedule at once: a race is reported whether or not this run's order
// made the values differ, and never evicted (TSan keeps 4 cells per 8 bytes and loses older accesses). TSan
// also has no notion of an asynchronous copy: here a cp.async destination is "in flight" from the issue to the
// wait that covers it, and any access to it meanwhile, by any thread including the issuer, is a race (the
// copy may land at any moment of that window); at the wait it becomes a write by the issuing thread, which
// other threads may read only after a barrier. ldmatrix reads are recorded for every lane by the scheduler.
// Warp shuffles, ballots, mma and ldmatrix do not order memory (as in the PTX memory model); __syncwarp does.
//
// What is checked: shared memory (dynamic and static: this library's thread-local block) and global memory
// within a block. Not checked: races between blocks (blocks run on different OS threads with separate shadows),
// the fiber's own stack (thread-private), memory the runtime touches for itself.
// Cost: about 10-30x the plain simulation (a hook call and a 48-byte shadow update per byte accessed).
#include "kb_sim_internal.h"

const bool kb_sim::k_racecheck =
#ifdef KB_SIM_RACECHECK
    true;
#else
    false;
#endif

#ifdef KB_SIM_RACECHECK
#include <link.h>

#include <unordered_map>

namespace kb_sim {
#pragma GCC visibility push(hidden)

namespace {

enum : uint16_t { F_ASYNC = 1, F_SITE = 2 };  // write in flight (cp.async issued, not waited); site = table index

struct Access {
  uint32_t epoch;   // barrier epoch of the worker (0: no access recorded)
  uint32_t clk;     // the thread's own warp clock at the access
  uint32_t site;    // code offset of the access in this library, or (F_SITE) an index into the site table
  uint16_t tid;     // linear thread id in the block
  uint16_t flags;
};
struct Cell {
  Access w, r1, r2;  // last write; last reader and the last reader other than r1's thread
};
static_assert(sizeof(Cell) == 48, "shadow cell");

struct Slot {  // 8 bytes of global memory
  uint64_t key;
  uint32_t gen;
  Cell cells[8];
};

}  // namespace

struct RaceWorker {
  uint32_t epoch = 0;        // incremented at every block start and barrier
  uint32_t block_epoch = 0;  // first epoch of the current block
  // dense shadow of this OS thread's static TLS block of the library (static and dynamic shared memory)
  uintptr_t dense_lo = 0, dense_n = 0;
  Cell* dense = nullptr;
  // open-addressing hash of 8-byte slots for everything else (global memory)
  std::vector<Slot> slots;
  size_t used = 0;
  uint32_t gen = 1;
  std::vector<std::pair<const char*, int>> sites;  // file:line of runtime-issued accesses (cp.async, ldmatrix)
  std::unordered_map<const char*, std::unordered_map<int, uint32_t>> site_index;
  // the running fiber (hook fast path)
  Fiber* f = nullptr;
  uintptr_t stack_lo = 0, stack_n = 0, skip_lo = 0, skip_n = 0, skip2_lo = 0, skip2_n = 0;
  bool active = false;
  bool reported = false;
};

static thread_local RaceWorker* t_race = nullptr;  // (initial-exec would force the whole TLS block static)
static uintptr_t g_base = 0;  // load address of this library (site offsets)

static int find_tls(struct dl_phdr_info* info, size_t, void* data) {
  RaceWorker* r = (RaceWorker*)data;
  if (info->dlpi_addr != g_base) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_data) {
      r->dense_lo = (uintptr_t)info->dlpi_tls_data;
      r->dense_n = info->dlpi_phdr[i].p_memsz;
    }
  return 1;
}

static RaceWorker* race_worker(Worker* w) {
  if (w->race) return w->race;
  RaceWorker* r = new RaceWorker();
  if (!g_base) {
    Dl_info info;
    if (dladdr((void*)&race_worker, &info)) g_base = (uintptr_t)info.dli_fbase;
  }
  dl_iterate_phdr(find_tls, r);
  if (!r->dense_n) {  // fall back to the dynamic shared memory alone
    r->dense_lo = (uintptr_t)kb_sim_dyn_storage;
    r->dense_n = KB_SIM_SMEM_GUARD * 2 + KB_SIM_MAX_DYNAMIC_SMEM;
  }
  void* m = mmap(nullptr, r->dense_n * sizeof(Cell), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    fprintf(stderr, "kb_sim: cannot map the race checker's shadow (%zu bytes)\n", r->dense_n * sizeof(Cell));
    abort();
  }
  r->dense = (Cell*)m;
  r->slots.resize(1 << 14);
  w->race = r;
  return r;
}

static Slot* find_slot(RaceWorker* r, uint64_t key) {
  for (;;) {
    const size_t mask = r->slots.size() - 1;
    size_t i = (key * 0x9e3779b97f4a7c15ull >> 20) & mask;
    for (;; i = (i + 1) & mask) {
      Slot& s = r->slots[i];
      if (s.gen != r->gen) {
        if (2 * (r->used + 1) > r->slots.size()) break;  // grow first
        s.gen = r->gen;
        s.key = key;
        memset(s.cells, 0, sizeof s.cells);
        ++r->used;
        return &s;
      }
      if (s.key == key) return &s;
    }
    std::vector<Slot> old;
    old.swap(r->slots);
    r->slots.resize(old.size() * 2);
    for (Slot& s : old)
      if (s.gen == r->gen) {
        const size_t m2 = r->slots.size() - 1;
        size_t j = (s.key * 0x9e3779b97f4a7c15ull >> 20) & m2;
        while (r->slots[j].gen == r->gen) j = (j + 1) & m2;
        r->slots[j] = s;
      }
  }
}

static inline Cell* cell(RaceWorker* r, uintptr_t a) {
  if (a - r->dense_lo < r->dense_n) return &r->dense[a - r->dense_lo];
  Slot* s = find_slot(r, a >> 3);
  return &s->cells[a & 7];
}

static uint32_t site_of(RaceWorker* r, const char* file, int line) {
  auto& m = r->site_index[file];
  auto it = m.find(line);
  if (it != m.end()) return it->second;
  r->sites.emplace_back(file, line);
  return m[line] = (uint32_t)(r->sites.size() - 1);
}

// "file:line" of a site; code offsets through addr2line (the library is built with -g), inlined frames
// innermost first.
static std::string site_str(RaceWorker* r, const Access& a) {
  if (a.flags & F_SITE) {
    const auto& s = r->sites[a.site];
    const char* base = strrchr(s.first, '/');
    return format("%s:%d", base ? base + 1 : s.first, s.second);
  }
  Dl_info info;
  if (!dladdr((void*)(g_base + a.site), &info) || !info.dli_fname) return format("+0x%x", a.site);
  std::string cmd = format("addr2line -i -e '%s' 0x%x 2>/dev/null", info.dli_fname, a.site);
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char line[1024];
    while (fgets(line, sizeof line, p)) {
      std::string l = line;
      while (!l.empty() && (l.back() == '\n' || l.back() == ' ')) l.pop_back();
      size_t d = l.find(" (discriminator");
      if (d != std::string::npos) l.resize(d);
      size_t slash = l.rfind('/');
      if (slash != std::string::npos) l = l.substr(slash + 1);
      out += (out.empty() ? "" : " inlined into ") + l;
    }
    pclose(p);
  }
  return out.empty() ? format("%s+0x%x", info.dli_fname, a.site) : out;
}

static std::string who(Worker* w, unsigned tid) {
  return format("thread %s (warp %u lane %u)", tid_str(w, tid).c_str(), tid / 32, tid % 32);
}

static std::string where(Worker* w, RaceWorker* r, uintptr_t a) {
  const uintptr_t dyn = (uintptr_t)kb_sim_dyn_storage + KB_SIM_SMEM_GUARD;
  if (a - dyn < (uintptr_t)w->L->smem) return format("dynamic shared memory, byte %zu", (size_t)(a - dyn));
  if (a - r->dense_lo < r->dense_n) return format("static __shared__ memory at %p", (void*)a);
  return format("global memory at %p", (void*)a);
}

// Does the recorded access `e` race with an access by fiber `f` now?
static inline bool conflicts(RaceWorker* r, const Access& e, const Fiber* f) {
  if (e.epoch < r->block_epoch) return false;            // an earlier block (or nothing recorded)
  if (e.flags & F_ASYNC) return true;                     // a copy in flight may land at any moment
  if (e.epoch != r->epoch) return false;                  // a __syncthreads in between
  const unsigned t = f->info.linear;
  if (e.tid == t) return false;                           // program order
  if (e.tid / 32 == t / 32 && e.clk <= f->vc[e.tid % 32]) return false;  // a __syncwarp in between
  return true;
}

static std::string report(Worker* w, RaceWorker* r, const char* kind, uintptr_t a, const Fiber* f,
                          const Access& now, const Access& before, bool before_write) {
  r->reported = true;
  const bool async = before.flags & F_ASYNC;
  std::string prev = async ? format("%s issued a cp.async to it at %s that has not landed (no wait covers it yet)",
                                    who(w, before.tid).c_str(), site_str(r, before).c_str())
                           : format("%s %s it at %s", who(w, before.tid).c_str(), before_write ? "wrote" : "read",
                                    site_str(r, before).c_str());
  return format("race (%s) on %s: %s %s it at %s, and %s, with no __syncthreads%s in between "
                "(kb_sim racecheck)", kind, where(w, r, a).c_str(), who(w, f->info.linear).c_str(),
                now.flags & F_ASYNC ? "issues a cp.async to" : (kind[0] == 'r' ? "reads" : "writes"),
                site_str(r, now).c_str(), prev.c_str(), async ? " after the wait" : " or __syncwarp");
}

// Checks and records an access of `n` bytes at `a` by fiber `f`. Returns "" or the report.
static std::string access(Worker* w, RaceWorker* r, Fiber* f, uintptr_t a, size_t n, bool write, Access now) {
  if (r->reported) return "";
  for (size_t i = 0; i < n; ++i) {
    Cell* c = cell(r, a + i);
    if (write) {
      if (conflicts(r, c->w, f)) return report(w, r, "write after write", a + i, f, now, c->w, true);
      if (conflicts(r, c->r1, f)) return report(w, r, "write after read", a + i, f, now, c->r1, false);
      if (conflicts(r, c->r2, f)) return report(w, r, "write after read", a + i, f, now, c->r2, false);
      c->w = now;
      c->r1 = c->r2 = Access{};
    } else {
      if (conflicts(r, c->w, f)) return report(w, r, "read after write", a + i, f, now, c->w, true);
      if (c->r1.epoch == now.epoch && c->r1.tid == now.tid) {
        c->r1 = now;
      } else {
        if (c->r1.epoch >= r->block_epoch) c->r2 = c->r1;
        c->r1 = now;
      }
    }
  }
  return "";
}

static inline Access stamp(RaceWorker* r, const Fiber* f, uint32_t site, uint16_t flags) {
  return Access{r->epoch, f->vc[f->info.linear % 32], site, (uint16_t)f->info.linear, flags};
}

// The hook path: a load or store of kernel code.
static inline void hook(uintptr_t a, size_t n, bool write, uintptr_t pc) {
  RaceWorker* r = t_race;
  if (!r || !r->active) return;
  if (a - r->stack_lo < r->stack_n || a - r->skip_lo < r->skip_n || a - r->skip2_lo < r->skip2_n) return;
  Worker* w = t_worker;
  std::string e = access(w, r, r->f, a, n, write, stamp(r, r->f, (uint32_t)(pc - 1 - g_base), 0));
  if (!e.empty()) {
    r->active = false;
    kernel_fail("%s", e.c_str());
  }
}

void race_block_begin(Worker* w) {
  RaceWorker* r = race_worker(w);
  r->block_epoch = ++r->epoch;
  r->reported = false;
  if (++r->gen == 0) ++r->gen;
  r->used = 0;
  for (unsigned i = 0; i < w->nthreads; ++i) {
    Fiber* f = w->fibers[i];
    memset(f->vc, 0, sizeof f->vc);
    f->vc[i % 32] = 1;
  }
}

void race_barrier(Worker* w) { ++race_worker(w)->epoch; }

void race_enter(Worker* w, Fiber* f) {
  RaceWorker* r = race_worker(w);
  r->f = f;
  r->stack_lo = (uintptr_t)f->stack_lo;
  r->stack_n = f->stack_size;
  r->skip_lo = (uintptr_t)&f->info;  // the built-in variables' records: runtime-owned, read-only to kernels
  r->skip_n = sizeof f->info;
  r->skip2_lo = (uintptr_t)&w->binfo;
  r->skip2_n = sizeof w->binfo;
  r->active = true;
  t_race = r;
}

void race_leave(Worker* w) {
  if (w->race) w->race->active = false;
}

void race_syncwarp(Worker* w, unsigned warp, unsigned group) {
  uint32_t join[32] = {};
  for (unsigned l = 0; l < 32; ++l)
    if (group >> l & 1)
      for (unsigned k = 0; k < 32; ++k) join[k] = std::max(join[k], w->fibers[warp * 32 + l]->vc[k]);
  for (unsigned l = 0; l < 32; ++l)
    if (group >> l & 1) {
      Fiber* f = w->fibers[warp * 32 + l];
      memcpy(f->vc, join, sizeof join);
      f->vc[l] += 1;
    }
}

std::string race_collective_read(Worker* w, Fiber* f, const void* p, size_t n, const char* file, int line) {
  RaceWorker* r = race_worker(w);
  return access(w, r, f, (uintptr_t)p, n, false, stamp(r, f, site_of(r, file, line), F_SITE));
}

void race_cp_async_issue(Worker* w, Fiber* f, void* dst, size_t n, const char* file, int line) {
  RaceWorker* r = race_worker(w);
  const uint32_t site = site_of(r, file, line);
  std::string e = access(w, r, f, (uintptr_t)dst, n, true, stamp(r, f, site, F_SITE | F_ASYNC));
  if (!e.empty()) kernel_fail("%s", e.c_str());
}

void race_cp_async_land(Worker* w, Fiber* f, const Pending& p) {
  RaceWorker* r = race_worker(w);
  if (r->reported) return;
  const Access now = stamp(r, f, site_of(r, p.file, p.line), F_SITE);
  for (size_t i = 0; i < 16; ++i) {
    Cell* c = cell(r, (uintptr_t)p.dst + i);
    if ((c->w.flags & F_ASYNC) && c->w.tid == now.tid) {  // this thread's copy lands: a plain write now
      c->w = now;
      c->r1 = c->r2 = Access{};
    }
  }
}

#pragma GCC visibility pop
}  // namespace kb_sim

// The hooks -fsanitize=thread inserts into the kernel objects (GCC's and Clang's TSan ABI).
#define KB_RACE_PC ((uintptr_t)__builtin_return_address(0))
#define KB_RACE_HOOKS(N)                                                                                   \
  void __tsan_read##N(void* p) { kb_sim::hook((uintptr_t)p, N, false, KB_RACE_PC); }                       \
  void __tsan_write##N(void* p) { kb_sim::hook((uintptr_t)p, N, true, KB_RACE_PC); }                       \
  void __tsan_unaligned_read##N(void* p) { kb_sim::hook((uintptr_t)p, N, false, KB_RACE_PC); }             \
  void __tsan_unaligned_write##N(void* p) { kb_sim::hook((uintptr_t)p, N, true, KB_RACE_PC); }             \
  void __tsan_volatile_read##N(void* p) { kb_sim::hook((uintptr_t)p, N, false, KB_RACE_PC); }              \
  void __tsan_volatile_write##N(void* p) { kb_sim::hook((uintptr_t)p, N, true, KB_RACE_PC); }
#pragma GCC visibility push(hidden)
extern "C" {
KB_RACE_HOOKS(1)
KB_RACE_HOOKS(2)
KB_RACE_HOOKS(4)
KB_RACE_HOOKS(8)
KB_RACE_HOOKS(16)
void __tsan_read_range(void* p, unsigned long n) { kb_sim::hook((uintptr_t)p, n, false, KB_RACE_PC); }
void __tsan_write_range(void* p, unsigned long n) { kb_sim::hook((uintptr_t)p, n, true, KB_RACE_PC); }
void __tsan_init(void) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
// Atomics (atomicAdd & co. of kb_sim.h): performed, not recorded. Atomics never race with each other; a plain
// access racing with an atomic one is not reported (a documented gap).
#define KB_RACE_ATOMICS(N, T)                                                                              \
  T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }     \
  void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }     \
  T __tsan_atomic##N##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
  T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }   \
  T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
  int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                    \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
  }                                                                                                        \
  int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                      \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                 \
  }                                                                                                        \
  T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                          \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                      \
    return c;                                                                                              \
  }
KB_RACE_ATOMICS(8, int8_t)
KB_RACE_ATOMICS(16, int16_t)
KB_RACE_ATOMICS(32, int32_t)
KB_RACE_ATOMICS(64, int64_t)
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}
#pragma GCC visibility pop
#endif  // KB_SIM_RACECHECK
