// kb_sim_scheduler.cpp: the per-block scheduler (which fiber runs when; barrier release), the pool of OS threads
// that runs blocks, and launch (configuration checks as CUDA makes them).
#include "kb_sim_internal.h"

namespace kb_sim {
#pragma GCC visibility push(hidden)


static uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void run_block(Worker* w, Launch* L, uint64_t linear_block) {
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
  w->rng = (uint64_t)(L->seed < 0 ? 0 : L->seed) * 0x2545f4914f6cdd1dull + linear_block;
  race_block_begin(w);
  const unsigned nwarps = (w->nthreads + 31) / 32;
  std::vector<unsigned> order, warps(nwarps);
  order.reserve(w->nthreads);
  for (unsigned i = 0; i < nwarps; ++i) warps[i] = i;
  if (L->schedule == SCHED_DRIFT && L->seed >= 0)
    for (size_t i = nwarps - 1; i > 0; --i) std::swap(warps[i], warps[splitmix(w->rng) % (i + 1)]);
  for (;;) {
    if (L->schedule == SCHED_DRIFT) {
      // Each warp in turn runs, firing its own collectives, until all its threads wait at a barrier or exit.
      bool any = false;
      for (unsigned wp : warps) {
        for (bool ran = true; ran && !w->failed;) {
          ran = false;
          for (unsigned i = wp * 32; i < std::min(w->nthreads, wp * 32 + 32) && !w->failed; ++i)
            if (w->fibers[i]->state == RUNNABLE) {
              switch_to_fiber(w, w->fibers[i]);
              ran = true;
            }
          if (!w->failed && fire_warp_collectives(w, (int)wp)) ran = true;
          any |= ran;
        }
        if (w->failed) break;
      }
      if (w->failed) break;
      if (any) continue;
    } else if (L->schedule == SCHED_RANDOM) {
      // One random runnable thread at a time; a collective fires as soon as its lanes have all arrived.
      order.clear();
      for (unsigned i = 0; i < w->nthreads; ++i)
        if (w->fibers[i]->state == RUNNABLE) order.push_back(i);
      if (!order.empty()) {
        Fiber* f = w->fibers[order[splitmix(w->rng) % order.size()]];
        switch_to_fiber(w, f);
        if (w->failed) break;
        if (f->state == AT_WARP) fire_warp_collectives(w, (int)(f->info.linear / 32));
        if (w->failed) break;
        continue;
      }
    } else {
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
        race_barrier(w);
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
  int sched = g_schedule_override.load();
  if (sched < 0) {
    const char* e = getenv("KB_SIM_SCHEDULE");
    std::string v = e ? e : "";
    sched = v == "drift" ? SCHED_DRIFT : v == "random" ? SCHED_RANDOM : SCHED_LOCKSTEP;
    if (!v.empty() && v != "drift" && v != "random" && v != "lockstep")
      fprintf(stderr, "kb_sim: KB_SIM_SCHEDULE=%s is not one of lockstep, drift, random: lockstep\n", v.c_str());
  }
  L.schedule = sched;
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
