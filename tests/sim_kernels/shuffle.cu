// shuffle.cu: warp shuffles. `lanes` records every shuffle flavour so the test can compare them with the
// lane rules of the CUDA programming guide; row_max has a planted wrong-lane broadcast.
#include "sim_test.h"

// out[(op * 6 + w) * 32 + lane] for op in {idx, up, down, xor} and width in {32,16,8,4,2,1}; value = 100+lane.
__global__ void lanes_kernel(int* out, int arg) {
  const int lane = threadIdx.x;
  const int widths[6] = {32, 16, 8, 4, 2, 1};
  for (int w = 0; w < 6; ++w) {
    out[(0 * 6 + w) * 32 + lane] = __shfl_sync(0xffffffffu, 100 + lane, arg + lane / 2, widths[w]);
    out[(1 * 6 + w) * 32 + lane] = __shfl_up_sync(0xffffffffu, 100 + lane, arg, widths[w]);
    out[(2 * 6 + w) * 32 + lane] = __shfl_down_sync(0xffffffffu, 100 + lane, arg, widths[w]);
    out[(3 * 6 + w) * 32 + lane] = __shfl_xor_sync(0xffffffffu, 100 + lane, arg, widths[w]);
  }
  out[4 * 6 * 32 + lane] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
  out[4 * 6 * 32 + 32 + lane] = __any_sync(0xffffffffu, lane == arg) + 2 * __all_sync(0xffffffffu, lane < 32);
  // a half-warp shuffle with a 16-lane mask, lanes 16..31 elsewhere
  if (lane < 16) out[4 * 6 * 32 + 64 + lane] = __shfl_xor_sync(0x0000ffffu, lane * 10, 1);
  else out[4 * 6 * 32 + 64 + lane] = __shfl_xor_sync(0xffff0000u, lane * 10, 2);
  // doubles and 16-bit types shuffle too
  double d = __shfl_down_sync(0xffffffffu, 0.5 + lane, 1);
  out[4 * 6 * 32 + 96 + lane] = (int)(d * 2);
}

// Maximum of each row of 32 floats: a shfl_down tree leaves the result in lane 0, then a broadcast.
template <int kSrcLane>
__global__ void row_max_kernel(float* out, const float* x, int rows) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  float v = row < rows ? x[row * 32 + lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  v = __shfl_sync(0xffffffffu, v, kSrcLane);  // planted bug: kSrcLane = 1 holds only a partial maximum
  if (row < rows) out[row * 32 + lane] = v;
}

SIMTEST simtest_lanes(int* out, int arg) {
  KB_LAUNCH(lanes_kernel, 1, 32, 0, nullptr, out, arg);
  SIMTEST_RETURN();
}

SIMTEST simtest_row_max(float* out, const float* x, int rows, int wrong_lane) {
  auto k = wrong_lane ? row_max_kernel<1> : row_max_kernel<0>;
  KB_LAUNCH(k, (rows + 3) / 4, 128, 0, nullptr, out, x, rows);
  SIMTEST_RETURN();
}
