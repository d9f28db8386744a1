// cp_async.cu: a two-stage cp.async pipeline (y = 2x, tiles of 64 floats staged through shared memory).
// The planted bug waits with cp_async_wait<2> where <1> is needed: the tile being consumed may still be
// in flight. The simulation lands copies only at the wait that covers them, so the bug reads stale data.
#include "sim_test.h"

template <int kWait>
__global__ void pipeline_kernel(float* y, const float* x, int ntiles) {
  __shared__ __align__(16) float buf[2][64];
  const int t = threadIdx.x;  // 16 threads, one 16-byte chunk each per tile
  kb::cp_async_16(&buf[0][t * 4], x + t * 4);
  kb::cp_async_commit();
  for (int k = 0; k < ntiles; ++k) {
    const bool more = k + 1 < ntiles;
    // always commit a group (empty at the end) so the wait count stays uniform
    kb::cp_async_16_zfill(&buf[(k + 1) % 2][t * 4], more ? x + (k + 1) * 64 + t * 4 : x, more);
    kb::cp_async_commit();
    kb::cp_async_wait<kWait>();  // at most kWait groups still in flight: tile k has landed when kWait = 1
    __syncthreads();
    for (int j = 0; j < 4; ++j) y[k * 64 + t * 4 + j] = 2.0f * buf[k % 2][t * 4 + j];
    __syncthreads();
  }
  kb::cp_async_wait_all();
}

SIMTEST simtest_pipeline(float* y, const float* x, int ntiles, int bug) {
  if (bug) KB_LAUNCH(pipeline_kernel<2>, 1, 16, 0, nullptr, y, x, ntiles);
  else KB_LAUNCH(pipeline_kernel<1>, 1, 16, 0, nullptr, y, x, ntiles);
  SIMTEST_RETURN();
}
