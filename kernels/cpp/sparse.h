// sparse.h -- what the sparse CPU kernels (sparse_bsr.cpp, sparse_24.cpp) share: the activations as fp32.
//
// Both kernels read x [M, K] many times (once per stored block / per output row) and the weights once, so
// x is converted to a dense fp32 copy up front when it is bf16/f16: M*K conversions against M*nnz
// multiply-adds, and the hot loops then broadcast or permute plain floats. fp32 x is used in place.
#pragma once
#include "kb_cpp.h"

#if KB_IMPL
#include "simd.h"

namespace KB_NS {

// x (dtype T, row stride xs) as fp32 [m, k] with row stride k, in `buf` (m*k floats); returns the
// pointer and sets `ld` to the stride to use. For T = float nothing is copied.
template <class T>
inline const float* as_f32(const T* x, int64_t m, int64_t k, int64_t xs, float* buf, int64_t& ld, int threads) {
  if constexpr (std::is_same_v<T, float>) {
    ld = xs;
    return x;
  } else {
    ld = k;
#pragma omp parallel for schedule(static) num_threads(kb::threads_for(threads, m * k, 1 << 16))
    for (int64_t r = 0; r < m; ++r) {
      int64_t i = 0;
      for (; i + W <= k; i += W) store(buf + r * k + i, load(x + r * xs + i));
      if (i < k) store(buf + r * k + i, load(x + r * xs + i, int(k - i), 0.f), int(k - i));
    }
    return buf;
  }
}

}  // namespace KB_NS
#endif
