// kb_sim_collectives.cpp: warp collectives, executed by the scheduler once every lane of the mask waits: shuffles
// with the lane rules of the PTX ISA's shfl.sync, ballot/any/all, mma.m16n8k16 and ldmatrix with their fragment
// layouts; and the diagnosis of a block where nothing can run (divergent barriers and collectives).
#include "kb_sim_internal.h"

namespace kb_sim {
#pragma GCC visibility push(hidden)


// ---------------------------------------------------------------------------------------------------
// Warp collectives, executed by the scheduler once all lanes of the mask wait.
inline uint16_t lo16(uint32_t v) { return (uint16_t)(v & 0xffff); }
inline uint16_t hi16(uint32_t v) { return (uint16_t)(v >> 16); }
inline float b16_to_f32(uint16_t b, bool bf16) {
  return bf16 ? bf16_bits_to_f32(b) : f16_bits_to_f32(b);
}

// `group`: the lanes that take part; ops[l] for l in group. Returns an error message or "".
std::string exec_collective(Worker* w, unsigned warp, CollOp** ops, unsigned group) {
  CollOp* o0 = ops[__builtin_ctz(group)];
  const int kind = o0->kind;
  switch (kind) {
    case COLL_SYNCWARP:
      race_syncwarp(w, warp, group);  // __syncwarp orders the memory accesses of the lanes it joins
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
    case COLL_MMA_SP_BF16: case COLL_MMA_SP_F16: {
      // mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.{bf16,f16}, sparsity selector 0 (the
      // layouts: kb_device.h). The kept values of A (16 x 16) are placed by the metadata of the two lanes
      // 4g + 2*sel + h, h = 0, 1 (row g and g+8, columns 16h..16h+15); a chunk's two indices must increase
      // (0b0100, 0b1000, 0b1001, 0b1100, 0b1101, 0b1110: anything else is undefined behaviour on the GPU and
      // an error here).
      const bool bf16 = kind == COLL_MMA_SP_BF16;
      const int sel = o0->arg;
      if (sel != 0 && sel != 1) return format("%s: sparsity selector %d (m16n8k32 takes 0 or 1)", o0->what, sel);
      float Ac[16][16], B[32][8], C[16][8];
      for (int l = 0; l < 32; ++l) {
        const uint32_t* a = (const uint32_t*)ops[l]->in0;
        const uint32_t* b = (const uint32_t*)ops[l]->in1;
        const float* c = (const float*)ops[l]->in2;
        const int g = l >> 2, t = l & 3;
        Ac[g][2 * t] = b16_to_f32(lo16(a[0]), bf16);     Ac[g][2 * t + 1] = b16_to_f32(hi16(a[0]), bf16);
        Ac[g + 8][2 * t] = b16_to_f32(lo16(a[1]), bf16); Ac[g + 8][2 * t + 1] = b16_to_f32(hi16(a[1]), bf16);
        Ac[g][2 * t + 8] = b16_to_f32(lo16(a[2]), bf16); Ac[g][2 * t + 9] = b16_to_f32(hi16(a[2]), bf16);
        Ac[g + 8][2 * t + 8] = b16_to_f32(lo16(a[3]), bf16); Ac[g + 8][2 * t + 9] = b16_to_f32(hi16(a[3]), bf16);
        for (int r = 0; r < 4; ++r) {
          B[2 * t + 8 * r][g] = b16_to_f32(lo16(b[r]), bf16);
          B[2 * t + 8 * r + 1][g] = b16_to_f32(hi16(b[r]), bf16);
        }
        C[g][2 * t] = c[0]; C[g][2 * t + 1] = c[1]; C[g + 8][2 * t] = c[2]; C[g + 8][2 * t + 1] = c[3];
      }
      int col[16][16];               // the column (0..31) of A each kept value multiplies
      for (int g = 0; g < 8; ++g)
        for (int h = 0; h < 2; ++h) {
          const uint32_t e = (uint32_t)ops[4 * g + 2 * sel + h]->value;
          for (int half = 0; half < 2; ++half) {
            const int row = g + 8 * half;
            for (int j = 0; j < 4; ++j) {     // chunk j of columns 16h..16h+15
              const uint32_t nib = (e >> (16 * half + 4 * j)) & 0xfu;
              const int i0 = nib & 3, i1 = nib >> 2;
              if (i0 >= i1)
                return format("%s at %s:%d: metadata nibble 0x%x (lane %d, row %d, columns %d..%d) does not name "
                              "two increasing positions", o0->what, o0->file, o0->line, nib, 4 * g + 2 * sel + h,
                              row, 16 * h + 4 * j, 16 * h + 4 * j + 3);
              const int chunk = 4 * h + j;
              col[row][2 * chunk] = 4 * chunk + i0;
              col[row][2 * chunk + 1] = 4 * chunk + i1;
            }
          }
        }
      float D[16][8];
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
          double s = C[i][j];
          for (int kk = 0; kk < 16; ++kk) s += (double)Ac[i][kk] * (double)B[col[i][kk]][j];
          D[i][j] = (float)s;
        }
      for (int l = 0; l < 32; ++l) {
        float* d = (float*)ops[l]->out;
        const int g = l >> 2, t = l & 3;
        d[0] = D[g][2 * t]; d[1] = D[g][2 * t + 1]; d[2] = D[g + 8][2 * t]; d[3] = D[g + 8][2 * t + 1];
      }
      return "";
    }
    case COLL_MMA_S8: {
      // mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (PTX ISA, "Matrix Fragments for mma.m16n8k32"):
      // g = lane/4, t = lane%4; each .b32 register holds 4 int8, byte i the lowest.
      //   A 16x32: a[0] row g, cols 4t..4t+3; a[1] row g+8, same cols; a[2] row g, cols 16+4t..; a[3] row g+8, those
      //   B 32x8 (column-major): b[0] rows 4t..4t+3 of column g; b[1] rows 16+4t..16+4t+3 of column g
      //   C, D 16x8 int32: c[0], c[1] row g, cols 2t, 2t+1; c[2], c[3] row g+8, the same cols
      int32_t A[16][32], B[32][8], C[16][8];
      for (int l = 0; l < 32; ++l) {
        const uint32_t* a = (const uint32_t*)ops[l]->in0;
        const uint32_t* b = (const uint32_t*)ops[l]->in1;
        const int32_t* c = (const int32_t*)ops[l]->in2;
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; ++i) {
          A[g][4 * t + i] = (int8_t)(a[0] >> (8 * i));
          A[g + 8][4 * t + i] = (int8_t)(a[1] >> (8 * i));
          A[g][16 + 4 * t + i] = (int8_t)(a[2] >> (8 * i));
          A[g + 8][16 + 4 * t + i] = (int8_t)(a[3] >> (8 * i));
          B[4 * t + i][g] = (int8_t)(b[0] >> (8 * i));
          B[16 + 4 * t + i][g] = (int8_t)(b[1] >> (8 * i));
        }
        C[g][2 * t] = c[0]; C[g][2 * t + 1] = c[1]; C[g + 8][2 * t] = c[2]; C[g + 8][2 * t + 1] = c[3];
      }
      int32_t D[16][8];
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
          uint32_t s = (uint32_t)C[i][j];               // wraps as the hardware's int32 does (no saturation)
          for (int k = 0; k < 32; ++k) s += (uint32_t)(A[i][k] * B[k][j]);
          D[i][j] = (int32_t)s;
        }
      for (int l = 0; l < 32; ++l) {  // written after all inputs were read: d may alias c
        int32_t* d = (int32_t*)ops[l]->out;
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
          std::string race = race_collective_read(w, w->fibers[warp * 32 + i * 8 + r], o->in0, 16, o->file, o->line);
          if (!race.empty()) return race;
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

bool aligned_op(int kind) {
  return kind == COLL_MMA_BF16 || kind == COLL_MMA_F16 || kind == COLL_MMA_S8 || kind == COLL_LDMATRIX ||
         kind == COLL_MMA_SP_BF16 || kind == COLL_MMA_SP_F16;
}

const char* state_name(int s) {
  switch (s) {
    case RUNNABLE: return "running";
    case AT_BARRIER: return "at __syncthreads";
    case AT_WARP: return "at a warp collective";
    case DONE: return "exited";
    default: return "failed";
  }
}

// Fires every warp collective (of warp `only_warp`, or of all warps when < 0) whose lanes have all arrived.
// Returns true if any fired.
bool fire_warp_collectives(Worker* w, int only_warp) {
  bool fired = false;
  const unsigned n = w->nthreads;
  const unsigned nwarps = (n + 31) / 32;
  CollOp* ops[32];
  for (unsigned wp = 0; wp < nwarps && !w->failed; ++wp) {
    if (only_warp >= 0 && wp != (unsigned)only_warp) continue;
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
void diagnose_stall(Worker* w) {
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

#pragma GCC visibility pop
}  // namespace kb_sim
