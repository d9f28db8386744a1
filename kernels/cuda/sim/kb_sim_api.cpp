// kb_sim_api.cpp: CUDA errors (per host thread, behind cudaGetLastError), cudaFuncSetAttribute, and the C
// interface the Python side uses (tests and kernels/cuda/lib.py).
#include "kb_sim_internal.h"

namespace kb_sim {
#pragma GCC visibility push(hidden)

// ---------------------------------------------------------------------------------------------------
// Errors: per host thread, like CUDA's.
static thread_local cudaError_t t_err = cudaSuccess;
static thread_local cudaError_t t_msg_code = cudaSuccess;
thread_local std::string t_msg;

void set_error(cudaError_t e, const std::string& msg) {
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

std::mutex g_attr_mu;
std::map<const void*, long> g_max_smem;

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

#pragma GCC visibility pop
}  // namespace kb_sim


// ---------------------------------------------------------------------------------------------------
// C interface for the Python side (tests and kernels/cuda/lib.py).
extern "C" {
// seed >= 0: permute thread order with this seed; -1: natural order; -2: read KB_SIM_SCHEDULE_SEED (default).
__attribute__((visibility("default"))) void kb_sim_set_schedule_seed(long long seed) {
  kb_sim::g_seed_override.store(seed);
}
// Schedule: 0 lockstep, 1 drift, 2 random (kb_sim_internal.h); -1: read KB_SIM_SCHEDULE (default).
__attribute__((visibility("default"))) void kb_sim_set_schedule(int mode) { kb_sim::g_schedule_override.store(mode); }
// 1 when this library checks for races (the *_race build), else 0.
__attribute__((visibility("default"))) int kb_sim_racecheck(void) { return kb_sim::k_racecheck ? 1 : 0; }
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
