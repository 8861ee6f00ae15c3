// Paged attention for a ragged batch (decode, prefill and mixed), GQA-aware, split over KV.
//
// Work is cut into items: up to QT consecutive query tokens of one sequence (QT = ROWS / G,
// G query heads per KV head; decode items hold one token). A block handles one
// (item, kv_head, split): its ROWS = tokens x G query rows share every K/V tile it stages in
// shared memory, so K/V is read once per KV head, not once per query head. Splits cut the KV
// positions [0, last_pos] into part_len pieces (flash-decoding); with more than one split each
// block writes an unnormalized partial (acc, max, sum) and attn_reduce combines them.
//
// Layouts: q/out [tokens, heads, D]; caches [slots, kv_heads, D] where slot =
// block_table[pos / block_size] * block_size + pos % block_size; items uint4
// {first query row, query tokens, position of the first, sequence}; block_tables
// [seqs, max_blocks]. Scores are in the log2 domain (q pre-scaled by scale * log2(e)).
// sinks (nullable, [heads] f32, natural-log units): one more logit per head in the softmax's
// denominator with no value (gpt-oss), applied where the rows are normalised.
// FP8 caches (the _fp8 entry points): k_cache/v_cache hold e4m3 bytes; the host folds the K
// scale into scale_log2 and v_scale multiplies the output (or the partials), so a cached
// element is decoded by fp8_e4m3_to_float alone. Other caches pass v_scale = 1.
// Inside a block: 4 warps, each owning rows warp, warp + 4, ...; in the QK step lane j scores
// key j of the 32-key tile, in the PV step lane j accumulates dims 2j, 2j+1 (+64 ...).
#include "common.cuh"
using namespace flare;

namespace {

constexpr int NWARPS = 4;
constexpr int NTHREADS = NWARPS * 32;
constexpr int TK = 32;  // keys per tile, one per lane

__device__ __forceinline__ float2 load2(const float* p) { return make_float2(p[0], p[1]); }
__device__ __forceinline__ float2 load2(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ float2 load2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ float2 load2(const uint8_t* p) {
  return make_float2(fp8_e4m3_to_float(p[0]), fp8_e4m3_to_float(p[1]));
}

// T: q and out; C: the cache elements (T, or uint8_t e4m3 bytes).
template <typename T, typename C, int D, int RPW>
__device__ void paged_attention(const T* __restrict__ q, const C* __restrict__ k_cache,
                                const C* __restrict__ v_cache,
                                const uint32_t* __restrict__ block_tables,
                                const uint4* __restrict__ items, T* __restrict__ out,
                                float* __restrict__ part_o, float* __restrict__ part_ml,
                                const float* __restrict__ sinks, int num_tokens, int heads, int kv_heads, int max_blocks,
                                int block_size, int window, int part_len, float scale_log2,
                                float v_scale) {
  constexpr int ROWS = NWARPS * RPW;
  // K rows padded so that lane j reading 4 bytes of key j hits bank (j * odd) % 32.
  constexpr int KPAD = sizeof(C) == 4 ? 1 : sizeof(C) == 2 ? 2 : 4;
  constexpr int KS = D + KPAD;
  constexpr int VEC = 16 / sizeof(C);
  constexpr int CHUNKS = D / VEC;
  constexpr int PAIRS = D / 64;  // float pairs per lane in the PV step
  __shared__ float qs[ROWS][D];
  __shared__ __align__(16) C ks[TK][KS];
  __shared__ __align__(16) C vs[TK][D];

  const uint4 item = items[blockIdx.x];
  const int row0 = item.x, nq = item.y, pos0 = item.z, seq = item.w;
  const int kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int group = heads / kv_heads;
  const int rows = nq * group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t* table = block_tables + (int64_t)seq * max_blocks;

  const int kv_end = pos0 + nq;  // exclusive: the last query token sees itself
  const int kv_begin = window > 0 ? max(0, pos0 + 1 - window) : 0;
  const int lo = max(split * part_len, kv_begin);
  const int hi = min(split * part_len + part_len, kv_end);

  for (int idx = threadIdx.x; idx < rows * D; idx += NTHREADS) {
    const int r = idx / D, c = idx % D;
    const int64_t token = row0 + r / group;
    const int head = kvh * group + r % group;
    qs[r][c] = to_float(q[(token * heads + head) * D + c]) * scale_log2;
  }

  float m[RPW], l[RPW], acc[RPW][2 * PAIRS];
  int pos[RPW];
#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
    pos[rr] = pos0 + (warp + rr * NWARPS) / group;
#pragma unroll
    for (int i = 0; i < 2 * PAIRS; ++i) acc[rr][i] = 0.f;
  }

  for (int t0 = lo; t0 < hi; t0 += TK) {
    const int n_keys = min(TK, hi - t0);
    __syncthreads();  // the previous tile is consumed (and qs is written, first time round)
    for (int idx = threadIdx.x; idx < TK * CHUNKS; idx += NTHREADS) {
      const int key = idx / CHUNKS, chunk = idx % CHUNKS;
      uint4 kraw = make_uint4(0, 0, 0, 0), vraw = make_uint4(0, 0, 0, 0);
      if (key < n_keys) {
        const int p = t0 + key;
        const int64_t slot =
            (int64_t)table[p / block_size] * block_size + p % block_size;
        const int64_t off = (slot * kv_heads + kvh) * D + chunk * VEC;
        kraw = *reinterpret_cast<const uint4*>(k_cache + off);
        vraw = *reinterpret_cast<const uint4*>(v_cache + off);
      }
      // ks rows are padded (not 16-byte aligned): store 4-byte words.
      uint32_t* kdst = reinterpret_cast<uint32_t*>(&ks[key][chunk * VEC]);
      kdst[0] = kraw.x;
      kdst[1] = kraw.y;
      kdst[2] = kraw.z;
      kdst[3] = kraw.w;
      *reinterpret_cast<uint4*>(&vs[key][chunk * VEC]) = vraw;
    }
    __syncthreads();

#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      const int r = warp + rr * NWARPS;
      if (r >= rows) continue;  // warp-uniform
      const int p = t0 + lane;
      const bool valid =
          lane < n_keys && p <= pos[rr] && (window <= 0 || p > pos[rr] - window);
      float s = -INFINITY;
      if (valid) {
        float dot = 0.f;
#pragma unroll 8
        for (int c = 0; c < D; c += 2) {
          const float2 kk = load2(&ks[lane][c]);
          dot = fmaf(qs[r][c], kk.x, dot);
          dot = fmaf(qs[r][c + 1], kk.y, dot);
        }
        s = dot;
      }
      const float m_new = fmaxf(m[rr], warp_max(s));
      if (m_new == -INFINITY) continue;  // nothing visible yet: warp-uniform
      const float alpha = exp2f(m[rr] - m_new);
      const float pj = valid ? exp2f(s - m_new) : 0.f;
      l[rr] = l[rr] * alpha + warp_sum(pj);
      m[rr] = m_new;
#pragma unroll
      for (int i = 0; i < 2 * PAIRS; ++i) acc[rr][i] *= alpha;
      for (int j = 0; j < n_keys; ++j) {
        const float w = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
        for (int i = 0; i < PAIRS; ++i) {
          const float2 vv = load2(&vs[j][64 * i + 2 * lane]);
          acc[rr][2 * i] = fmaf(w, vv.x, acc[rr][2 * i]);
          acc[rr][2 * i + 1] = fmaf(w, vv.y, acc[rr][2 * i + 1]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    const int r = warp + rr * NWARPS;
    if (r >= rows) continue;
    const int64_t token = row0 + r / group;
    const int head = kvh * group + r % group;
    const int64_t row = token * heads + head;
    if (splits == 1) {
      float den = l[rr], keep = 1.f;
      if (sinks) {
        const float sink = sinks[head] * 1.4426950408889634f;
        const float mt = fmaxf(m[rr], sink);
        keep = exp2f(m[rr] - mt);
        den = den * keep + exp2f(sink - mt);
      }
      const float inv = den > 0.f ? keep / den * v_scale : 0.f;
#pragma unroll
      for (int i = 0; i < PAIRS; ++i) {
        const int c = 64 * i + 2 * lane;
        out[row * D + c] = from_float<T>(acc[rr][2 * i] * inv);
        out[row * D + c + 1] = from_float<T>(acc[rr][2 * i + 1] * inv);
      }
    } else {
      const int64_t prow = (int64_t)split * num_tokens * heads + row;
#pragma unroll
      for (int i = 0; i < PAIRS; ++i) {
        const int c = 64 * i + 2 * lane;
        part_o[prow * D + c] = acc[rr][2 * i] * v_scale;
        part_o[prow * D + c + 1] = acc[rr][2 * i + 1] * v_scale;
      }
      if (lane == 0) {
        part_ml[prow * 2] = m[rr];
        part_ml[prow * 2 + 1] = l[rr];
      }
    }
  }
}

// Combines the splits of every (token, head) row: one block of D threads per row.
template <typename T, int D>
__device__ void attn_reduce(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                            const float* __restrict__ sinks, T* __restrict__ out, int num_rows,
                            int heads, int splits) {
  const int64_t row = blockIdx.x;
  const int c = threadIdx.x;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part_ml[((int64_t)s * num_rows + row) * 2]);
  const float sink = sinks ? sinks[row % heads] * 1.4426950408889634f : -INFINITY;
  const float mt = fmaxf(m, sink);
  float num = 0.f, den = sinks ? exp2f(sink - mt) : 0.f;
  if (m != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      const int64_t prow = (int64_t)s * num_rows + row;
      const float ms = part_ml[prow * 2];
      if (ms == -INFINITY) continue;
      const float w = exp2f(ms - mt);
      num = fmaf(w, part_o[prow * D + c], num);
      den = fmaf(w, part_ml[prow * 2 + 1], den);
    }
  }
  out[row * D + c] = from_float<T>(den > 0.f ? num / den : 0.f);
}

}  // namespace

#define PAGED_ATTENTION_KV(T, C, NAME, D, RPW)                                             \
  extern "C" __global__ void __launch_bounds__(NTHREADS) paged_attention_##NAME##_d##D(     \
      const T* q, const C* k_cache, const C* v_cache, const uint32_t* block_tables,       \
      const uint4* items, T* out, float* part_o, float* part_ml, const float* sinks,      \
      int num_tokens, int heads, int kv_heads, int max_blocks, int block_size, int window, \
      int part_len, float scale_log2, float v_scale) {                                     \
    paged_attention<T, C, D, RPW>(q, k_cache, v_cache, block_tables, items, out, part_o,  \
                                  part_ml, sinks, num_tokens, heads, kv_heads, max_blocks, \
                                  block_size, window, part_len, scale_log2, v_scale);      \
  }

// A cache of T (paged_attention_NAME_dD) and an FP8 one (paged_attention_NAME_fp8_dD); both
// reduce their splits with attn_reduce_NAME_dD.
#define PAGED_ATTENTION(T, NAME, D, RPW)                                                   \
  PAGED_ATTENTION_KV(T, T, NAME, D, RPW)                                                   \
  PAGED_ATTENTION_KV(T, uint8_t, NAME##_fp8, D, RPW)                                       \
  extern "C" __global__ void attn_reduce_##NAME##_d##D(                                    \
      const float* part_o, const float* part_ml, const float* sinks, T* out, int num_rows, \
      int heads, int splits) {                                                             \
    attn_reduce<T, D>(part_o, part_ml, sinks, out, num_rows, heads, splits);               \
  }

// Rows per warp: 4 (16 rows a block), 2 for head_dim 256 so shared memory stays under 48 KiB.
// f32 at head_dim 256 would not fit: the host falls back to tensor ops there.
PAGED_ATTENTION(__nv_bfloat16, bf16, 64, 4)
PAGED_ATTENTION(__nv_bfloat16, bf16, 128, 4)
PAGED_ATTENTION(__nv_bfloat16, bf16, 256, 2)
PAGED_ATTENTION(__half, f16, 64, 4)
PAGED_ATTENTION(__half, f16, 128, 4)
PAGED_ATTENTION(__half, f16, 256, 2)
PAGED_ATTENTION(float, f32, 64, 4)
PAGED_ATTENTION(float, f32, 128, 4)
