// Fused mixture-of-experts on the device (src/ops/moe.rs is the host side and the reference):
//   moe_route       router logits -> each token's top-k experts and weights (one thread a token)
//   moe_align       token permutation: the step's (token, slot) pairs grouped by expert, in
//                   token order, cut into row tiles of one expert each (one block)
//   moe_gate_up_*   grouped GEMM over the tiles: x rows gathered by the permutation, gate and
//                   up projections, bias, activation -> h (permuted order)
//   moe_down_*      grouped GEMM: h -> y (permuted order), plus bias
//   moe_combine_*   weighted un-permute: out[t] = sum over slots s in order of w[t,s] * y[t,s]
// Batch invariance: every output element is an f32 sum over the reduction dimension in index
// order (k = 0, 1, ...), whatever rows share its tile, and the un-permute sums a token's slots
// in slot order; so a token's output depends only on its own row.
#include "common.cuh"
using namespace flare;

namespace {

constexpr int MOE_BM = 32;  // rows (token, slot pairs) per tile; host side: ops::moe::TILE_ROWS
constexpr int MOE_BK = 32;  // reduction chunk staged in shared memory
constexpr int MOE_BN = 32;  // output columns per block (gate_up: 32 gate + 32 up)
constexpr int MOE_THREADS = 256;
constexpr uint32_t NO_TILE = 0xffffffffu;

enum Act { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_CLAMPED_SWIGLU = 2 };

__device__ __forceinline__ float activate(float g, float u, int act, float alpha, float limit) {
  if (act == ACT_SILU) return g / (1.f + expf(-g)) * u;
  if (act == ACT_GELU_TANH) {
    const float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
    return 0.5f * g * (1.f + tanhf(inner)) * u;
  }
  // gpt-oss: gate clamped above, up clamped both ways, glu = g * sigmoid(alpha * g).
  g = fminf(g, limit);
  u = fminf(fmaxf(u, -limit), limit);
  return (u + 1.f) * (g / (1.f + expf(-g * alpha)));
}

// The routing score of expert i (softmax needs the row's max and sum).
__device__ __forceinline__ float route_score(const float* l, int i, int sigmoid, float mx,
                                             float sum) {
  return sigmoid ? 1.f / (1.f + expf(-l[i])) : expf(l[i] - mx) / sum;
}

}  // namespace

// logits [tokens, experts] f32; correction [experts] or null; out ids/weights [tokens, top_k].
// Ties go to the lower expert id (as the reference's stable sort), groups likewise.
extern "C" __global__ void moe_route(const float* __restrict__ logits,
                                     const float* __restrict__ correction,
                                     uint32_t* __restrict__ ids, float* __restrict__ weights,
                                     int tokens, int experts, int top_k, int sigmoid, int n_group,
                                     int topk_group, int group_by_best, int norm_topk,
                                     float scaling) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const float* l = logits + (int64_t)t * experts;
  float mx = -INFINITY, sum = 0.f;
  if (!sigmoid) {
    for (int i = 0; i < experts; ++i) mx = fmaxf(mx, l[i]);
    for (int i = 0; i < experts; ++i) sum += expf(l[i] - mx);
  }
  // Groups kept (n_group <= 64): a bit each.
  uint64_t keep = ~0ull;
  if (n_group > 0) {
    const int per = experts / n_group;
    const int take = group_by_best ? 1 : (per < 2 ? per : 2);
    float gs[64];
    for (int g = 0; g < n_group; ++g) {
      float best = -INFINITY, second = -INFINITY;
      int bi = -1;
      for (int i = g * per; i < (g + 1) * per; ++i) {
        float c = route_score(l, i, sigmoid, mx, sum);
        if (correction) c += correction[i];
        if (bi < 0 || c > best) {
          second = bi < 0 ? second : best;
          best = c;
          bi = i;
        } else if (c > second) {
          second = c;
        }
      }
      float s = 0.f;
      s += best;
      if (take == 2) s += second;
      gs[g] = s;
    }
    keep = 0;
    for (int j = 0; j < topk_group; ++j) {
      int bg = -1;
      for (int g = 0; g < n_group; ++g)
        if (!(keep >> g & 1) && (bg < 0 || gs[g] > gs[bg])) bg = g;
      keep |= 1ull << bg;
    }
  }
  uint32_t* my_ids = ids + (int64_t)t * top_k;
  float* my_w = weights + (int64_t)t * top_k;
  const int per = n_group > 0 ? experts / n_group : experts;
  float total = 0.f;
  for (int j = 0; j < top_k; ++j) {
    int bi = -1;
    float best = -INFINITY;
    for (int i = 0; i < experts; ++i) {
      bool taken = false;
      for (int q = 0; q < j; ++q) taken |= my_ids[q] == (uint32_t)i;
      if (taken) continue;
      float c = -INFINITY;
      if (keep >> (i / per) & 1) {
        c = route_score(l, i, sigmoid, mx, sum);
        if (correction) c += correction[i];
      }
      if (bi < 0 || c > best) {
        best = c;
        bi = i;
      }
    }
    my_ids[j] = (uint32_t)bi;
    const float s = route_score(l, bi, sigmoid, mx, sum);
    my_w[j] = s;
    total += s;
  }
  for (int j = 0; j < top_k; ++j) {
    const float w = norm_topk ? my_w[j] / (total + 1e-20f) : my_w[j];
    my_w[j] = w * scaling;
  }
}

// One block. ids [n] (n = tokens * top_k, assignment a = t * top_k + s). Writes sorted [n] (the
// assignments of expert 0 in order, then expert 1, ...), pos [n] (where each assignment went),
// offsets [experts + 1], and tiles [2 * max_tiles] as (expert, first row) pairs, NO_TILE after
// the last. The order within an expert is the assignment order: the permutation is
// deterministic (results would not depend on it anyway).
extern "C" __global__ void moe_align(const uint32_t* __restrict__ ids, int n, int experts,
                                     uint32_t* __restrict__ sorted, uint32_t* __restrict__ pos,
                                     uint32_t* __restrict__ offsets, uint32_t* __restrict__ tiles,
                                     int max_tiles) {
  constexpr int CHUNK = 2048;
  __shared__ uint32_t chunk[CHUNK];
  // Pass 1 counts (offsets[e + 1] = count of e), pass 2 places; one thread per expert scans
  // the ids staged in shared memory.
  for (int pass = 0; pass < 2; ++pass) {
    for (int e = threadIdx.x; e < experts; e += blockDim.x)
      if (pass == 0) offsets[e + 1] = 0;
    __syncthreads();
    if (pass == 1 && threadIdx.x == 0) {
      offsets[0] = 0;
      int tile = 0;
      for (int e = 0; e < experts; ++e) {
        const uint32_t start = offsets[e], count = offsets[e + 1];
        for (uint32_t r = 0; r < count; r += MOE_BM) {
          tiles[2 * tile] = (uint32_t)e;
          tiles[2 * tile + 1] = start + r;
          ++tile;
        }
        offsets[e + 1] = start + count;
      }
      for (; tile < max_tiles; ++tile) tiles[2 * tile] = tiles[2 * tile + 1] = NO_TILE;
    }
    __syncthreads();
    for (int base = 0; base < n; base += CHUNK) {
      const int len = n - base < CHUNK ? n - base : CHUNK;
      for (int i = threadIdx.x; i < len; i += blockDim.x) chunk[i] = ids[base + i];
      __syncthreads();
      for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        if (pass == 0) {
          uint32_t c = offsets[e + 1];
          for (int i = 0; i < len; ++i) c += chunk[i] == (uint32_t)e;
          offsets[e + 1] = c;
        } else {
          // offsets[e] advances as rows are placed; restored below.
          uint32_t at = offsets[e];
          for (int i = 0; i < len; ++i)
            if (chunk[i] == (uint32_t)e) {
              sorted[at] = (uint32_t)(base + i);
              pos[base + i] = at;
              ++at;
            }
          offsets[e] = at;
        }
      }
      __syncthreads();
    }
  }
  // Pass 2 moved offsets[e] to the end of e, which is the start of e + 1: shift back.
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int e = experts; e > 0; --e) offsets[e] = offsets[e - 1];
    offsets[0] = 0;
  }
}

namespace {

// Stages rows [row0, row0 + MOE_BM) x columns [k0, k0 + MOE_BK) of A into `as` (zeros outside),
// where row r of the tile is `a_row(r)` (null: padding).
template <typename T>
__device__ __forceinline__ void stage(float (*dst)[MOE_BK + 1], int rows, const T* const* row_ptr,
                                      int k0, int K) {
  for (int i = threadIdx.x; i < rows * MOE_BK; i += blockDim.x) {
    const int r = i / MOE_BK, c = i % MOE_BK;
    const T* p = row_ptr[r];
    dst[r][c] = (p && k0 + c < K) ? to_float(p[k0 + c]) : 0.f;
  }
}

// One tile of C = A W^T for rows of one expert: acc[rr][cc][m] for rows ty + 16 rr, columns
// tx + 16 cc of matrix m (gate_up: m = 0 gate, 1 up; down: m = 0 only, NM = 1 with 2 column
// halves handled by the caller's column offset). Each acc sums over k in index order.
template <typename T, int NM>
__device__ __forceinline__ void tile_gemm(const T* const* a_rows, const T* const* w_rows, int K,
                                          float (&acc)[2][2][NM]) {
  __shared__ float as[MOE_BM][MOE_BK + 1];
  __shared__ float ws[NM * MOE_BN][MOE_BK + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int k0 = 0; k0 < K; k0 += MOE_BK) {
    __syncthreads();  // the previous chunk is consumed
    stage<T>(as, MOE_BM, a_rows, k0, K);
    stage<T>(ws, NM * MOE_BN, w_rows, k0, K);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < MOE_BK; ++kk) {
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float a = as[ty + 16 * rr][kk];
#pragma unroll
        for (int cc = 0; cc < 2; ++cc)
#pragma unroll
          for (int m = 0; m < NM; ++m) acc[rr][cc][m] += a * ws[m * MOE_BN + tx + 16 * cc][kk];
      }
    }
  }
}

// The tile this block works on: expert, first sorted row and row count; false if none.
__device__ __forceinline__ bool tile_of(const uint32_t* tiles, const uint32_t* offsets,
                                        uint32_t& e, uint32_t& row0, int& rows) {
  e = tiles[2 * blockIdx.x];
  if (e == NO_TILE) return false;
  row0 = tiles[2 * blockIdx.x + 1];
  const uint32_t end = offsets[e + 1];
  rows = end - row0 < (uint32_t)MOE_BM ? (int)(end - row0) : MOE_BM;
  return true;
}

// grid (max_tiles, ceil(inter / MOE_BN)). x [tokens, hidden]; gate_up [experts, 2 inter,
// hidden] (gate rows, then up rows); bias [experts, 2 inter] f32 or null; h [n, inter].
template <typename T>
__device__ void moe_gate_up(const T* __restrict__ x, const T* __restrict__ gate_up,
                            const float* __restrict__ bias, const uint32_t* __restrict__ sorted,
                            const uint32_t* __restrict__ offsets,
                            const uint32_t* __restrict__ tiles, T* __restrict__ h, int hidden,
                            int inter, int top_k, int act, float alpha, float limit) {
  __shared__ const T* a_rows[MOE_BM];
  __shared__ const T* w_rows[2 * MOE_BN];
  uint32_t e, row0;
  int rows;
  if (!tile_of(tiles, offsets, e, row0, rows)) return;
  const int col0 = blockIdx.y * MOE_BN;
  const T* we = gate_up + (int64_t)e * 2 * inter * hidden;
  for (int i = threadIdx.x; i < MOE_BM; i += blockDim.x)
    a_rows[i] = i < rows ? x + (int64_t)(sorted[row0 + i] / top_k) * hidden : nullptr;
  for (int i = threadIdx.x; i < 2 * MOE_BN; i += blockDim.x) {
    const int c = col0 + i % MOE_BN;
    w_rows[i] = c < inter ? we + (int64_t)(c + (i / MOE_BN) * inter) * hidden : nullptr;
  }
  float acc[2][2][2] = {};
  tile_gemm<T, 2>(a_rows, w_rows, hidden, acc);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int rr = 0; rr < 2; ++rr)
    for (int cc = 0; cc < 2; ++cc) {
      const int r = ty + 16 * rr, c = col0 + tx + 16 * cc;
      if (r >= rows || c >= inter) continue;
      float g = acc[rr][cc][0], u = acc[rr][cc][1];
      if (bias) {
        g += bias[(int64_t)e * 2 * inter + c];
        u += bias[(int64_t)e * 2 * inter + inter + c];
      }
      h[(int64_t)(row0 + r) * inter + c] = from_float<T>(activate(g, u, act, alpha, limit));
    }
}

// grid (max_tiles, ceil(hidden / (2 MOE_BN))). h [n, inter]; down [experts, hidden, inter];
// bias [experts, hidden] f32 or null; y [n, hidden].
template <typename T>
__device__ void moe_down(const T* __restrict__ h, const T* __restrict__ down,
                         const float* __restrict__ bias, const uint32_t* __restrict__ offsets,
                         const uint32_t* __restrict__ tiles, T* __restrict__ y, int hidden,
                         int inter) {
  __shared__ const T* a_rows[MOE_BM];
  __shared__ const T* w_rows[2 * MOE_BN];
  uint32_t e, row0;
  int rows;
  if (!tile_of(tiles, offsets, e, row0, rows)) return;
  const int col0 = blockIdx.y * 2 * MOE_BN;
  const T* we = down + (int64_t)e * hidden * inter;
  for (int i = threadIdx.x; i < MOE_BM; i += blockDim.x)
    a_rows[i] = i < rows ? h + (int64_t)(row0 + i) * inter : nullptr;
  for (int i = threadIdx.x; i < 2 * MOE_BN; i += blockDim.x) {
    const int c = col0 + i;
    w_rows[i] = c < hidden ? we + (int64_t)c * inter : nullptr;
  }
  // Columns col0 + m * MOE_BN + tx + 16 cc, as two matrices of MOE_BN columns.
  float acc[2][2][2] = {};
  tile_gemm<T, 2>(a_rows, w_rows, inter, acc);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int rr = 0; rr < 2; ++rr)
    for (int cc = 0; cc < 2; ++cc)
      for (int m = 0; m < 2; ++m) {
        const int r = ty + 16 * rr, c = col0 + m * MOE_BN + tx + 16 * cc;
        if (r >= rows || c >= hidden) continue;
        float v = acc[rr][cc][m];
        if (bias) v += bias[(int64_t)e * hidden + c];
        y[(int64_t)(row0 + r) * hidden + c] = from_float<T>(v);
      }
}

// out [tokens, hidden] = sum over s of weights[t, s] * y[pos[t, s]], slots in order.
template <typename T>
__device__ void moe_combine(const T* __restrict__ y, const float* __restrict__ weights,
                            const uint32_t* __restrict__ pos, T* __restrict__ out, int tokens,
                            int hidden, int top_k) {
  const int64_t total = (int64_t)tokens * hidden;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / hidden, c = i % hidden;
    float acc = 0.f;
    for (int s = 0; s < top_k; ++s) {
      const int64_t a = t * top_k + s;
      acc += weights[a] * to_float(y[(int64_t)pos[a] * hidden + c]);
    }
    out[i] = from_float<T>(acc);
  }
}

}  // namespace

#define MOE_KERNELS(T, NAME)                                                                   \
  extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_gate_up_##NAME(                 \
      const T* x, const T* gate_up, const float* bias, const uint32_t* sorted,                  \
      const uint32_t* offsets, const uint32_t* tiles, T* h, int hidden, int inter, int top_k,   \
      int act, float alpha, float limit) {                                                      \
    moe_gate_up<T>(x, gate_up, bias, sorted, offsets, tiles, h, hidden, inter, top_k, act,      \
                   alpha, limit);                                                               \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_down_##NAME(                    \
      const T* h, const T* down, const float* bias, const uint32_t* offsets,                    \
      const uint32_t* tiles, T* y, int hidden, int inter) {                                     \
    moe_down<T>(h, down, bias, offsets, tiles, y, hidden, inter);                               \
  }                                                                                            \
  extern "C" __global__ void moe_combine_##NAME(const T* y, const float* weights,               \
                                                const uint32_t* pos, T* out, int tokens,        \
                                                int hidden, int top_k) {                        \
    moe_combine<T>(y, weights, pos, out, tokens, hidden, top_k);                                \
  }
FLARE_FOR_EACH_TYPE(MOE_KERNELS)
