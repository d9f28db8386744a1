// attention_fwd.cu: attention forward, O = softmax(Q K^T * scale [+ causal mask]) V, tiled with an online
// softmax so the [sq, sk] score matrix never leaves the chip (FlashAttention-2: Dao 2023, arXiv:2307.08691).
//   q [b, h, sq, d], k and v [b, hkv, sk, d], o [b, h, sq, d]; strides in elements for the batch, head and
//   sequence dimensions, d contiguous; d = 64 or 128; h % hkv == 0 and query head i reads kv head
//   i / (h / hkv) (grouped-query attention); causal is top-left aligned (query i sees keys j <= i), as
//   torch's scaled_dot_product_attention(is_causal=True). Accumulation and softmax state in fp32.
//
// bf16 / fp16: kb_attn_fwd_mma_kernel. A block owns 64 query rows of one (batch, head), 4 warps x 16 rows.
//   Q fragments stay in registers for the whole pass; K and V tiles of BN keys (64 for d = 64, 32 for
//   d = 128, so the three tiles fit in 48 KiB of static shared memory) are brought in by cp.async (V in its
//   own group, landing while S = Q K^T is computed). S tiles come out of mma.m16n8k16 in the accumulator
//   layout, are scaled into the log2 domain (exp2f), masked, folded into the running row max and sum, and
//   re-packed in registers as the A operand of P V, as in FlashAttention-2: no shared-memory round trip.
//   K^T's fragments are plain ldmatrix (K is [key][d] = B in "col" layout); V's are ldmatrix.trans.
// fp32: kb_attn_fwd_f32_kernel, the same algorithm on CUDA cores (there is no fp32 mma.m16n8k16): 32 query
//   rows x 16 keys per step, 4 threads per query row, each computing 4 scores and d/4 output columns.
// Work: 4 * b * h * sq * sk * d FLOPs (halved by causal); bytes: q, o once, k and v once per 64-query
//   block (L2 absorbs most of the re-reads). Compute-bound for sk >= a few hundred.
// Improves on: first version. Measured: not yet measured on a GPU.
#include "include/kb_common.h"

struct KbAttnArgs {
  const void* q; const void* k; const void* v; void* o;
  int H, group, SQ, SK, causal;
  float scale_log2;  // scale * log2(e): softmax computed with exp2f
  int64_t q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, o_sh, o_ss;
};

// kb-report: kb_attn_fwd_mma_kernel threads=128 smem_dynamic=0
template <typename T, int D, int BN>
__global__ void __launch_bounds__(128, 1) kb_attn_fwd_mma_kernel(KbAttnArgs p) {
  constexpr int BM = 64;        // query rows per block, 16 per warp
  constexpr int LD = D + 8;     // padded row: 8 ldmatrix row addresses hit 8 distinct 16-byte bank groups
  constexpr int KD = D / 16;    // k-steps of S = Q K^T over d
  constexpr int NB = BN / 8;    // n8 tiles of S per warp (16 x BN)
  constexpr int DB = D / 8;     // n8 tiles of O per warp (16 x D)
  constexpr int KS = BN / 16;   // k-steps of O += P V over keys
  constexpr int CH = D / 8;     // 16-byte chunks per row
  __shared__ __align__(16) T Qs[BM * LD];
  __shared__ __align__(16) T Ks[BN * LD];
  __shared__ __align__(16) T Vs[BN * LD];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates
  const int m0 = blockIdx.x * BM, head = blockIdx.y, batch = blockIdx.z;
  const int kvh = head / p.group;
  const T* qb = (const T*)p.q + batch * p.q_sb + head * p.q_sh;
  const T* kb_ = (const T*)p.k + batch * p.k_sb + kvh * p.k_sh;
  const T* vb = (const T*)p.v + batch * p.v_sb + kvh * p.v_sh;
  T* ob = (T*)p.o + batch * p.o_sb + head * p.o_sh;

  // Q tile: BM x D, rows past SQ zero-filled.
  for (int c = tid; c < BM * CH; c += 128) {
    const int r = c / CH, col = (c % CH) * 8;
    const bool ok = m0 + r < p.SQ;
    kb::cp_async_16_zfill(Qs + r * LD + col, ok ? qb + (m0 + r) * p.q_ss + col : qb, ok);
  }
  kb::cp_async_commit();
  kb::cp_async_wait_all();
  __syncthreads();

  // This warp's 16 query rows as A fragments, one per 16 columns of d: lanes 0-15 address rows 0-15 at
  // column 16*kd, lanes 16-31 the same rows at 16*kd + 8 -> (a0, a1, a2, a3).
  uint32_t qf[KD][4];
#pragma unroll
  for (int kd = 0; kd < KD; ++kd)
    kb::ldmatrix_x4(qf[kd], Qs + (warp * 16 + lane % 16) * LD + kd * 16 + (lane / 16) * 8);

  float oacc[DB][4];
#pragma unroll
  for (int j = 0; j < DB; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) oacc[j][e] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // rows g and g+8 of this warp's 16 (log2 domain)
  float row_sum[2] = {0.0f, 0.0f};            // this thread's partial sums; the quad adds them at the end
  const int qrow[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};

  const int n_end = (p.causal && m0 + BM < p.SK) ? m0 + BM : p.SK;  // causal: keys past the block's last row unseen
  for (int n0 = 0; n0 < n_end; n0 += BN) {
    __syncthreads();  // every warp is done with the previous K and V tiles
    for (int c = tid; c < BN * CH; c += 128) {
      const int r = c / CH, col = (c % CH) * 8;
      const bool ok = n0 + r < p.SK;
      kb::cp_async_16_zfill(Ks + r * LD + col, ok ? kb_ + (n0 + r) * p.k_ss + col : kb_, ok);
    }
    kb::cp_async_commit();
    for (int c = tid; c < BN * CH; c += 128) {
      const int r = c / CH, col = (c % CH) * 8;
      const bool ok = n0 + r < p.SK;
      kb::cp_async_16_zfill(Vs + r * LD + col, ok ? vb + (n0 + r) * p.v_ss + col : vb, ok);
    }
    kb::cp_async_commit();
    kb::cp_async_wait<1>();  // K has landed; V may still be in flight
    __syncthreads();

    // S = Q K^T (16 x BN per warp). K is [key][d] in shared memory: for B (k = d, n = key) that is the
    // "col" layout, so plain ldmatrix: lanes 0-7 address keys 0-7 at d 16kd, lanes 8-15 keys 0-7 at
    // d 16kd+8, lanes 16-23 keys 8-15 at 16kd, lanes 24-31 keys 8-15 at 16kd+8 -> (b0, b1) of two n8 tiles.
    float s[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
#pragma unroll
      for (int np = 0; np < NB / 2; ++np) {
        uint32_t r[4];
        kb::ldmatrix_x4(r, Ks + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kd * 16 + ((lane / 8) % 2) * 8);
        const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
        kb::Mma<T>::run(s[2 * np], qf[kd], b0, s[2 * np]);
        kb::Mma<T>::run(s[2 * np + 1], qf[kd], b1, s[2 * np + 1]);
      }
    }

    // Scale into the log2 domain and mask: s[j][e] is (row qrow[e/2], key n0 + 8j + 2t + e%2).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < NB; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = n0 + j * 8 + 2 * t + (e % 2);
        const bool masked = key >= p.SK || (p.causal && key > qrow[e / 2]);
        s[j][e] = masked ? -INFINITY : s[j][e] * p.scale_log2;
        mx[e / 2] = fmaxf(mx[e / 2], s[j][e]);
      }
    }
    // Online softmax update. A row's BN scores are spread over the 4 lanes of a quad (t = 0..3).
    float base[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float m_new = fmaxf(row_max[h], mx[h]);
      base[h] = (m_new == -INFINITY) ? 0.0f : m_new;  // a row with no key yet: keep exp2f(-inf) = 0
      const float alpha = exp2f(row_max[h] - base[h]);  // rescales the old sum and output
      row_max[h] = m_new;
      row_sum[h] *= alpha;
#pragma unroll
      for (int j = 0; j < DB; ++j) {
        oacc[j][2 * h] *= alpha;
        oacc[j][2 * h + 1] *= alpha;
      }
    }
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - base[e / 2]);
        row_sum[e / 2] += s[j][e];
      }

    kb::cp_async_wait<0>();  // V has landed
    __syncthreads();

    // O += P V. P's accumulator tiles 2ks, 2ks+1 (16 x 16 keys) are exactly the A fragment of a k-step:
    // a0 = (row g, keys 2t..) of tile 2ks, a1 = (row g+8) of tile 2ks, a2, a3 the same of tile 2ks+1.
    // V is [key][d] = B in "row" layout, hence ldmatrix.trans: lanes 0-15 address keys 16ks..16ks+15 at
    // d 16dp, lanes 16-31 the same keys at d 16dp+8 -> (b0, b1) of d-tiles 2dp and 2dp+1.
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t pa[4] = {kb::Mma<T>::pack(s[2 * ks][0], s[2 * ks][1]),
                              kb::Mma<T>::pack(s[2 * ks][2], s[2 * ks][3]),
                              kb::Mma<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                              kb::Mma<T>::pack(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t r[4];
        kb::ldmatrix_x4_trans(r, Vs + (ks * 16 + lane % 16) * LD + dp * 16 + (lane / 16) * 8);
        const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
        kb::Mma<T>::run(oacc[2 * dp], pa, b0, oacc[2 * dp]);
        kb::Mma<T>::run(oacc[2 * dp + 1], pa, b1, oacc[2 * dp + 1]);
      }
    }
  }

  // O / rowsum; oacc[j] = (row g, cols 8j + 2t, +1) and (row g+8, same cols).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = row_sum[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (qrow[h] >= p.SQ) continue;
    const float inv = 1.0f / l;
    T* orow = ob + qrow[h] * p.o_ss;
#pragma unroll
    for (int j = 0; j < DB; ++j) {
      orow[j * 8 + 2 * t] = kb::from_f32<T>(oacc[j][2 * h] * inv);
      orow[j * 8 + 2 * t + 1] = kb::from_f32<T>(oacc[j][2 * h + 1] * inv);
    }
  }
}

// kb-report: kb_attn_fwd_f32_kernel threads=128 smem_dynamic=0
template <int D>
__global__ void __launch_bounds__(128, 1) kb_attn_fwd_f32_kernel(KbAttnArgs p) {
  constexpr int BQ = 32, BK = 16;  // query rows per block, keys per step
  constexpr int LD = D + 4;        // padded rows: the 8 query rows a warp reads fall in distinct banks
  constexpr int CH = D / 4;        // 16-byte chunks per row
  constexpr int DJ = D / 4;        // output columns per thread: c, c+4, c+8, ...
  __shared__ __align__(16) float Qs[BQ * LD];
  __shared__ __align__(16) float Ks[BK * LD];
  __shared__ __align__(16) float Vs[BK * LD];
  __shared__ float Ps[BQ * (BK + 1)];

  const int tid = threadIdx.x;
  const int r = tid / 4, c = tid % 4;  // query row of the block; quarter of the keys and columns
  const int m0 = blockIdx.x * BQ, head = blockIdx.y, batch = blockIdx.z;
  const int kvh = head / p.group;
  const float* qb = (const float*)p.q + batch * p.q_sb + head * p.q_sh;
  const float* kb_ = (const float*)p.k + batch * p.k_sb + kvh * p.k_sh;
  const float* vb = (const float*)p.v + batch * p.v_sb + kvh * p.v_sh;
  float* ob = (float*)p.o + batch * p.o_sb + head * p.o_sh;
  const int qi = m0 + r;

  for (int i = tid; i < BQ * CH; i += 128) {
    const int rr = i / CH, col = (i % CH) * 4;
    const bool ok = m0 + rr < p.SQ;
    kb::cp_async_16_zfill(Qs + rr * LD + col, ok ? qb + (m0 + rr) * p.q_ss + col : qb, ok);
  }
  kb::cp_async_commit();

  float o[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) o[j] = 0.0f;
  float row_max = -INFINITY, row_sum = 0.0f;  // row_sum: this thread's partial, summed over the quad at the end

  const int n_end = (p.causal && m0 + BQ < p.SK) ? m0 + BQ : p.SK;
  for (int n0 = 0; n0 < n_end; n0 += BK) {
    __syncthreads();  // previous K, V, P consumed
    for (int i = tid; i < BK * CH; i += 128) {
      const int rr = i / CH, col = (i % CH) * 4;
      const bool ok = n0 + rr < p.SK;
      kb::cp_async_16_zfill(Ks + rr * LD + col, ok ? kb_ + (n0 + rr) * p.k_ss + col : kb_, ok);
      kb::cp_async_16_zfill(Vs + rr * LD + col, ok ? vb + (n0 + rr) * p.v_ss + col : vb, ok);
    }
    kb::cp_async_commit();
    kb::cp_async_wait_all();
    __syncthreads();

    // Scores of row r with keys c, c+4, c+8, c+12 of this step: 4 dot products of length D.
    float sc[4];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int kl = c + 4 * i;
      float acc = 0.0f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) acc = fmaf(Qs[r * LD + d], Ks[kl * LD + d], acc);
      const int key = n0 + kl;
      const bool masked = key >= p.SK || (p.causal && key > qi);
      sc[i] = masked ? -INFINITY : acc * p.scale_log2;
      mx = fmaxf(mx, sc[i]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the quad of row r: lanes 4r'..4r'+3
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(row_max, mx);
    const float base = (m_new == -INFINITY) ? 0.0f : m_new;
    const float alpha = exp2f(row_max - base);
    row_max = m_new;
    row_sum *= alpha;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float pv = exp2f(sc[i] - base);
      row_sum += pv;
      Ps[r * (BK + 1) + c + 4 * i] = pv;
    }
    __syncwarp();  // the quad's P values are visible to the quad
#pragma unroll
    for (int j = 0; j < DJ; ++j) o[j] *= alpha;
    for (int kl = 0; kl < BK; ++kl) {
      const float pk = Ps[r * (BK + 1) + kl];
#pragma unroll
      for (int j = 0; j < DJ; ++j) o[j] = fmaf(pk, Vs[kl * LD + c + 4 * j], o[j]);
    }
  }

  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
  if (qi < p.SQ) {
    const float inv = 1.0f / row_sum;
    float* orow = ob + qi * p.o_ss;
#pragma unroll
    for (int j = 0; j < DJ; ++j) orow[c + 4 * j] = o[j] * inv;
  }
}

template <typename T, int D, int BN>
static int launch_mma(const KbAttnArgs& a, int B, void* stream) {
  auto kernel = kb_attn_fwd_mma_kernel<T, D, BN>;
  KB_LAUNCH(kernel, dim3((a.SQ + 63) / 64, a.H, B), dim3(128), 0, stream, a);
  return kb_check_launch("kb_cuda_attention_fwd");
}

template <int D>
static int launch_f32(const KbAttnArgs& a, int B, void* stream) {
  auto kernel = kb_attn_fwd_f32_kernel<D>;
  KB_LAUNCH(kernel, dim3((a.SQ + 31) / 32, a.H, B), dim3(128), 0, stream, a);
  return kb_check_launch("kb_cuda_attention_fwd");
}

// dtype 0 = fp32, 1 = bf16, 2 = fp16; scale <= 0 means 1/sqrt(d). Strides in elements, d contiguous;
// every stride must be a multiple of 16 bytes and every pointer 16-byte aligned (cp.async).
extern "C" int kb_cuda_attention_fwd(const void* q, const void* k, const void* v, void* o, int dtype,
                                     int64_t B, int64_t H, int64_t HKV, int64_t SQ, int64_t SK, int64_t D,
                                     int causal, float scale, int64_t q_sb, int64_t q_sh, int64_t q_ss,
                                     int64_t k_sb, int64_t k_sh, int64_t k_ss, int64_t v_sb, int64_t v_sh,
                                     int64_t v_ss, int64_t o_sb, int64_t o_sh, int64_t o_ss, void* stream) {
  if (B < 0 || H < 1 || HKV < 1 || SQ < 0 || SK < 1 || H % HKV != 0 || B > 65535 || H > 65535 ||
      SQ > 2147483647LL - 64 || SK > 2147483647LL)
    return kb_set_error(KB_EINVAL, "kb_cuda_attention_fwd: bad shape b=%lld h=%lld hkv=%lld sq=%lld sk=%lld",
                        (long long)B, (long long)H, (long long)HKV, (long long)SQ, (long long)SK);
  if (D != 64 && D != 128)
    return kb_set_error(KB_EINVAL, "kb_cuda_attention_fwd: head dim %lld not supported (64 or 128)", (long long)D);
  if (dtype != KB_F32 && dtype != KB_BF16 && dtype != KB_F16)
    return kb_set_error(KB_EINVAL, "kb_cuda_attention_fwd: unknown dtype code %d", dtype);
  const int64_t vec = dtype == KB_F32 ? 4 : 8;  // elements per 16 bytes
  const int64_t strides[12] = {q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, o_sh, o_ss};
  for (int i = 0; i < 12; ++i)
    if (strides[i] % vec != 0)
      return kb_set_error(KB_EINVAL, "kb_cuda_attention_fwd: stride %lld is not a multiple of 16 bytes",
                          (long long)strides[i]);
  if ((uintptr_t)q % 16 || (uintptr_t)k % 16 || (uintptr_t)v % 16)
    return kb_set_error(KB_EINVAL, "kb_cuda_attention_fwd: q, k, v must be 16-byte aligned");
  if (B == 0 || SQ == 0) return KB_OK;

  KbAttnArgs a;
  a.q = q; a.k = k; a.v = v; a.o = o;
  a.H = (int)H; a.group = (int)(H / HKV); a.SQ = (int)SQ; a.SK = (int)SK; a.causal = causal ? 1 : 0;
  if (!(scale > 0.0f)) scale = 1.0f / sqrtf((float)D);
  a.scale_log2 = scale * 1.4426950408889634f;
  a.q_sb = q_sb; a.q_sh = q_sh; a.q_ss = q_ss; a.k_sb = k_sb; a.k_sh = k_sh; a.k_ss = k_ss;
  a.v_sb = v_sb; a.v_sh = v_sh; a.v_ss = v_ss; a.o_sb = o_sb; a.o_sh = o_sh; a.o_ss = o_ss;
  const int b = (int)B;
  if (dtype == KB_BF16) return D == 64 ? launch_mma<__nv_bfloat16, 64, 64>(a, b, stream)
                                       : launch_mma<__nv_bfloat16, 128, 32>(a, b, stream);
  if (dtype == KB_F16) return D == 64 ? launch_mma<__half, 64, 64>(a, b, stream)
                                      : launch_mma<__half, 128, 32>(a, b, stream);
  return D == 64 ? launch_f32<64>(a, b, stream) : launch_f32<128>(a, b, stream);
}
