// decode_paged.cu: decode attention over a paged KV cache (vLLM layout), split-KV across blocks
// (flash-decoding: Dao, Haziza, Massa, Sizov 2023), GQA-aware: each K/V row is loaded once for all the G * SQ
// query rows of its kv head.
//
// q [B, SQ, H, D], out [B, SQ, H, D] (fp32 / bf16 / fp16); k_cache, v_cache [NB, BS, HKV, D] in q's dtype, or int8
// or fp8 e4m3 (bytes) with fp32 scales at scale[block * bstride + kv_head]; block_tables [B, MAXB] int32,
// seq_lens [B] int32; query s of a sequence of length L sees keys 0 .. L - SQ + s.
//
// Kernel 1, grid (B, HKV, nsplit), 128 threads: split `sp` takes pages [sp * pps, (sp + 1) * pps). The G * SQ
// query rows (<= 16) sit pre-scaled in shared memory; warp w takes tokens t = t0 + w, t0 + w + 4, ...: its lanes
// hold D / 32 consecutive elements of the token's K and V rows (dequantized), each row's score is a warp sum,
// and each warp keeps an online softmax (m, l, acc[D]) per query row in registers. The 4 warps' states merge in
// shared memory into the split's (m, l, acc), written to the workspace. Kernel 2, grid (B, HKV): merges the
// splits (o = sum 2^(m_s - M) acc_s / sum 2^(m_s - M) l_s) into out.
// Bytes: KV rows once + workspace (B x HKV x nsplit x R x (D + 2) x 4, written and read once) + q + out.
// FLOPs: 4 x H x D x SQ x L. No tensor cores: ~1 FLOP per KV byte is memory-bound on every GPU.
// Block-table entries and lengths live in device memory: the entry point checks every shape it is given and the
// kernel never dereferences a page outside [0, NB) or past MAXB (such a sequence's rows are written as NaN);
// the callers validate the tables before the launch (inference.paged.validate).
// Improves on: first version. Measured: not yet measured on a GPU (checked under the simulation).
#include "include/kb_common.h"

struct KbDecodeArgs {
  const void* q; const void* k; const void* v; const int* tables; const int* lens;
  const float* ks; const float* vs; void* o; float* ws;
  int B, SQ, H, HKV, D, NB, BS, MAXB, nsplit, pps, G, R;
  int64_t ks_b, vs_b;
  float scale_log2;
};

#define KB_DEC_MAX_R 16
#define KB_DEC_MAX_D 128
#define KB_DEC_WARPS 4

namespace kb {
template <typename KV> __device__ __forceinline__ float kv_f32(KV x) { return to_f32(x); }
template <> __device__ __forceinline__ float kv_f32<int8_t>(int8_t x) { return (float)x; }
// fp8 e4m3 byte: 2^(e - 7) x (1 + m / 8), subnormals m x 2^-9; sign in bit 7 (NaN 0x7f/0xff is never stored)
template <> __device__ __forceinline__ float kv_f32<uint8_t>(uint8_t x) {
  const int e = (x >> 3) & 15, m = x & 7;
  const float mag = e ? exp2f((float)(e - 7)) * (1.0f + (float)m * 0.125f) : (float)m * 0.001953125f;
  return (x & 0x80) ? -mag : mag;
}
}  // namespace kb

// kb-report: kb_decode_paged_kernel threads=128 smem_dynamic=0
template <typename T, typename KV, int EPL>
__global__ void __launch_bounds__(128, 1) kb_decode_paged_kernel(KbDecodeArgs a) {
  constexpr int D = EPL * 32;
  __shared__ float Qs[KB_DEC_MAX_R * D];
  __shared__ float Wm[KB_DEC_WARPS * KB_DEC_MAX_R], Wl[KB_DEC_WARPS * KB_DEC_MAX_R];
  __shared__ float Wacc[KB_DEC_WARPS * KB_DEC_MAX_R * D];
  const int b = blockIdx.x, hk = blockIdx.y, sp = blockIdx.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int R = a.R, G = a.G;
  int L = a.lens[b];
  const bool bad_len = L < a.SQ || L > a.MAXB * a.BS;
  if (bad_len) L = 0;
  const T* q = (const T*)a.q;
  for (int i = tid; i < R * D; i += blockDim.x) {
    const int r = i / D, dd = i % D, s = r / G, g = r % G;
    Qs[i] = kb::to_f32(q[(((int64_t)b * a.SQ + s) * a.H + hk * G + g) * D + dd]) * a.scale_log2;
  }
  __syncthreads();
  float m[KB_DEC_MAX_R], l[KB_DEC_MAX_R], acc[KB_DEC_MAX_R][EPL];
#pragma unroll
  for (int r = 0; r < KB_DEC_MAX_R; ++r) {
    m[r] = -INFINITY; l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[r][e] = 0.0f;
  }
  bool bad_page = false;
  const KV* K = (const KV*)a.k;
  const KV* V = (const KV*)a.v;
  const int t0 = sp * a.pps * a.BS;
  const int t1 = min(L, (sp + 1) * a.pps * a.BS);
  for (int t = t0 + warp; t < t1; t += KB_DEC_WARPS) {
    const int page = t / a.BS;
    const int blk = a.tables[(int64_t)b * a.MAXB + page];
    if (blk < 0 || blk >= a.NB) { bad_page = true; continue; }           // never read outside the cache
    const int64_t row = (((int64_t)blk * a.BS + t % a.BS) * a.HKV + hk) * D + lane * EPL;
    const float ksc = a.ks ? a.ks[blk * a.ks_b + hk] : 1.0f;
    const float vsc = a.vs ? a.vs[blk * a.vs_b + hk] : 1.0f;
    float kf[EPL], vf[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) { kf[e] = kb::kv_f32(K[row + e]) * ksc; vf[e] = kb::kv_f32(V[row + e]) * vsc; }
#pragma unroll
    for (int r = 0; r < KB_DEC_MAX_R; ++r) {      // unrolled with constant indices: acc stays in registers
      if (r < R) {                                 // R and t are uniform across the warp: warp_sum is safe
        float part = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) part = fmaf(Qs[r * D + lane * EPL + e], kf[e], part);
        const float s = kb::warp_sum(part);
        if (t <= L - a.SQ + r / G) {               // causal over the SQ new tokens
          const float mn = fmaxf(m[r], s);
          const float alpha = exp2f(m[r] - mn);    // m = -inf at first: alpha = 0
          const float p = exp2f(s - mn);
          l[r] = l[r] * alpha + p;
#pragma unroll
          for (int e = 0; e < EPL; ++e) acc[r][e] = fmaf(acc[r][e], alpha, p * vf[e]);
          m[r] = mn;
        }
      }
    }
  }
  // the 4 warps' states -> shared memory -> the split's (m, l, acc)
#pragma unroll
  for (int r = 0; r < KB_DEC_MAX_R; ++r) {
    if (r < R) {
      if (lane == 0) { Wm[warp * KB_DEC_MAX_R + r] = m[r]; Wl[warp * KB_DEC_MAX_R + r] = l[r]; }
#pragma unroll
      for (int e = 0; e < EPL; ++e) Wacc[(warp * KB_DEC_MAX_R + r) * D + lane * EPL + e] = acc[r][e];
    }
  }
  __syncthreads();
  float* ws = a.ws + (((int64_t)b * a.HKV + hk) * a.nsplit + sp) * R * (D + 2);
  for (int i = tid; i < R * D; i += blockDim.x) {
    const int r = i / D, dd = i % D;
    float M = -INFINITY;
    for (int w = 0; w < KB_DEC_WARPS; ++w) M = fmaxf(M, Wm[w * KB_DEC_MAX_R + r]);
    float sum = 0.0f, lsum = 0.0f;
    if (M != -INFINITY) {
      for (int w = 0; w < KB_DEC_WARPS; ++w) {
        const float f = exp2f(Wm[w * KB_DEC_MAX_R + r] - M);
        sum = fmaf(f, Wacc[(w * KB_DEC_MAX_R + r) * D + dd], sum);
        lsum = fmaf(f, Wl[w * KB_DEC_MAX_R + r], lsum);
      }
    }
    ws[r * (D + 2) + 2 + dd] = sum;
    if (dd == 0) { ws[r * (D + 2)] = M; ws[r * (D + 2) + 1] = (bad_len || bad_page) ? NAN : lsum; }
  }
}

// kb-report: kb_decode_merge_kernel threads=128 smem_dynamic=0
template <typename T>
__global__ void __launch_bounds__(128) kb_decode_merge_kernel(KbDecodeArgs a) {
  const int b = blockIdx.x, hk = blockIdx.y, D = a.D;
  const float* ws = a.ws + ((int64_t)b * a.HKV + hk) * a.nsplit * a.R * (D + 2);
  T* o = (T*)a.o;
  for (int i = threadIdx.x; i < a.R * D; i += blockDim.x) {
    const int r = i / D, dd = i % D;
    float M = -INFINITY;
    for (int s = 0; s < a.nsplit; ++s) M = fmaxf(M, ws[(s * a.R + r) * (D + 2)]);
    float num = 0.0f, den = 0.0f;
    for (int s = 0; s < a.nsplit; ++s) {
      const float* p = ws + (s * a.R + r) * (D + 2);
      const float lw = p[1];
      if (lw != lw) { den = NAN; break; }                     // a bad page or length: NaN rows
      if (p[0] == -INFINITY) continue;                          // a split past this row's last key
      const float f = exp2f(p[0] - M);
      num = fmaf(f, p[2 + dd], num);
      den = fmaf(f, lw, den);
    }
    const int s = r / a.G, g = r % a.G;
    o[(((int64_t)b * a.SQ + s) * a.H + hk * a.G + g) * D + dd] = kb::from_f32<T>(num / den);
  }
}

template <typename T, typename KV>
static int launch(const KbDecodeArgs& a, void* stream) {
  dim3 grid((unsigned)a.B, (unsigned)a.HKV, (unsigned)a.nsplit);
  if (a.D == 32) { auto k = kb_decode_paged_kernel<T, KV, 1>; KB_LAUNCH(k, grid, dim3(128), 0, stream, a); }
  else if (a.D == 64) { auto k = kb_decode_paged_kernel<T, KV, 2>; KB_LAUNCH(k, grid, dim3(128), 0, stream, a); }
  else { auto k = kb_decode_paged_kernel<T, KV, 4>; KB_LAUNCH(k, grid, dim3(128), 0, stream, a); }
  int rc = kb_check_launch("kb_cuda_decode_paged");
  if (rc) return rc;
  auto mk = kb_decode_merge_kernel<T>;
  KB_LAUNCH(mk, dim3((unsigned)a.B, (unsigned)a.HKV), dim3(128), 0, stream, a);
  return kb_check_launch("kb_cuda_decode_paged (merge)");
}

template <typename T>
static int launch_kv(const KbDecodeArgs& a, int kv_dtype, int q_dtype, void* stream) {
  if (kv_dtype == 3) return launch<T, int8_t>(a, stream);
  if (kv_dtype == 4) return launch<T, uint8_t>(a, stream);
  if (kv_dtype != q_dtype)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: a float cache must have q's dtype (%d), got %d", q_dtype,
                        kv_dtype);
  return launch<T, T>(a, stream);
}

// kv_dtype: 0/1/2 = q's float dtype, 3 = int8, 4 = fp8 e4m3 (bytes). Each tensor's own sizes are passed and must
// agree; `workspace` holds B x HKV x nsplit x R x (D + 2) floats (R = H / HKV x SQ).
extern "C" int kb_cuda_decode_paged(const void* q, const void* k_cache, const void* v_cache,
                                    const void* block_tables, const void* seq_lens, const void* k_scale,
                                    const void* v_scale, void* out, void* workspace, int64_t workspace_bytes,
                                    int64_t B, int64_t SQ, int64_t H, int64_t D, int64_t NB, int64_t BS,
                                    int64_t HKV, int64_t KD, int64_t vNB, int64_t vBS, int64_t vHKV, int64_t vD,
                                    int64_t tb_rows, int64_t MAXB, int64_t n_lens, int64_t ks_rows, int64_t ks_cols,
                                    int64_t ks_bstride, int64_t vs_rows, int64_t vs_cols, int64_t vs_bstride,
                                    int64_t nsplit, float scale, int q_dtype, int kv_dtype, void* stream) {
  if (!q || !k_cache || !v_cache || !block_tables || !seq_lens || !out || !workspace)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: null pointer");
  if (B < 0 || SQ < 1 || H < 1 || HKV < 1 || NB < 1 || BS < 1 || MAXB < 1 || nsplit < 1 || B > 65535 ||
      HKV > 65535 || nsplit > 65535 || NB * BS > 2147483647LL)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: bad sizes (B=%lld SQ=%lld H=%lld HKV=%lld NB=%lld "
                        "BS=%lld MAXB=%lld nsplit=%lld)", (long long)B, (long long)SQ, (long long)H, (long long)HKV,
                        (long long)NB, (long long)BS, (long long)MAXB, (long long)nsplit);
  if (vNB != NB || vBS != BS || vHKV != HKV || vD != KD)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: v_cache [%lld, %lld, %lld, %lld] != k_cache [%lld, %lld, "
                        "%lld, %lld]", (long long)vNB, (long long)vBS, (long long)vHKV, (long long)vD, (long long)NB,
                        (long long)BS, (long long)HKV, (long long)KD);
  if (KD != D) return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: head_dim of q (%lld) != the cache's (%lld)",
                                   (long long)D, (long long)KD);
  if (tb_rows != B || n_lens != B)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: batch %lld, but %lld block-table rows and %lld lengths",
                        (long long)B, (long long)tb_rows, (long long)n_lens);
  if (H % HKV) return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: %lld query heads is not a multiple of %lld kv "
                                   "heads", (long long)H, (long long)HKV);
  if (D != 32 && D != 64 && D != 128)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: head dim %lld (32, 64 or 128)", (long long)D);
  const int64_t R = H / HKV * SQ;
  if (R > KB_DEC_MAX_R)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: %lld query rows per kv head (max %d)", (long long)R,
                        KB_DEC_MAX_R);
  const bool quant = kv_dtype == 3 || kv_dtype == 4;
  if (q_dtype < 0 || q_dtype > 2 || kv_dtype < 0 || kv_dtype > 4)
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: dtype codes q %d kv %d", q_dtype, kv_dtype);
  if (quant != (k_scale != nullptr) || quant != (v_scale != nullptr) || ks_bstride < 0 || vs_bstride < 0 ||
      (quant && (ks_rows != NB || vs_rows != NB || ks_cols != HKV || vs_cols != HKV)))
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: int8/fp8 caches take scales [num_blocks, kv_heads], "
                        "float caches none");
  if (workspace_bytes < B * HKV * nsplit * R * (D + 2) * (int64_t)sizeof(float))
    return kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: workspace of %lld bytes is too small", (long long)workspace_bytes);
  if (!(scale > 0.0f) || B == 0) return B == 0 ? KB_OK : kb_set_error(KB_EINVAL, "kb_cuda_decode_paged: scale");
  KbDecodeArgs a{q, k_cache, v_cache, (const int*)block_tables, (const int*)seq_lens, (const float*)k_scale,
                 (const float*)v_scale, out, (float*)workspace, (int)B, (int)SQ, (int)H, (int)HKV, (int)D, (int)NB,
                 (int)BS, (int)MAXB, (int)nsplit, (int)((MAXB + nsplit - 1) / nsplit), (int)(H / HKV), (int)R,
                 ks_bstride, vs_bstride, scale * 1.4426950408889634f};
  switch (q_dtype) {
    case KB_F32: return launch_kv<float>(a, kv_dtype, q_dtype, stream);
    case KB_BF16: return launch_kv<__nv_bfloat16>(a, kv_dtype, q_dtype, stream);
    case KB_F16: return launch_kv<__half>(a, kv_dtype, q_dtype, stream);
  }
  return KB_EINVAL;
}
