// On-device token choice, so that only token ids cross PCIe each step.
//   argmax: largest logit of each row, ties to the lowest id, NaN never wins (as
//   sample::draw::argmax). One block of 1024 threads per row.
//   adjust_logits: logit bias, min_tokens masks and repetition/frequency/presence penalties
//   as a sparse list of (row, token) entries, one thread each (tokens unique per row).
//   sample_rows: the whole batched sampler (src/ops/sampling.rs is its CPU reference): per
//   row, greedy argmax or temperature, top-k, top-p, min-p and one inverse-CDF draw in id order
//   at a uniform number from Philox4x32-10 keyed by (seed, position). One block of
//   SAMPLE_THREADS per row; thresholds are found by bisection over the values' bit patterns
//   (no sort), ties at a threshold are all kept.
#include "common.cuh"
using namespace flare;

namespace {

__device__ __forceinline__ void better(float& best, int& idx, float v, int i) {
  // NaN compares false both ways, so it never replaces a number.
  if (v > best || (v == best && i < idx)) {
    best = v;
    idx = i;
  }
}

template <typename T>
__device__ void argmax(const T* __restrict__ logits, uint32_t* __restrict__ out, int vocab) {
  __shared__ float sbest[32];
  __shared__ int sidx[32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  float best = -INFINITY;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) better(best, idx, to_float(x[i]), i);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float b = __shfl_xor_sync(0xffffffffu, best, o);
    const int j = __shfl_xor_sync(0xffffffffu, idx, o);
    better(best, idx, b, j);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sbest[warp] = best;
    sidx[warp] = idx;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    best = lane < nwarps ? sbest[lane] : -INFINITY;
    idx = lane < nwarps ? sidx[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float b = __shfl_xor_sync(0xffffffffu, best, o);
      const int j = __shfl_xor_sync(0xffffffffu, idx, o);
      better(best, idx, b, j);
    }
    // A row of NaN (or only -inf, found at id 0 above) has no winner: id 0.
    if (lane == 0) out[row] = idx == 0x7fffffff ? 0u : (uint32_t)idx;
  }
}

}  // namespace

#define ARGMAX(T, NAME)                                                                  \
  extern "C" __global__ void argmax_##NAME(const T* logits, uint32_t* out, int vocab) {   \
    argmax<T>(logits, out, vocab);                                                       \
  }
FLARE_FOR_EACH_TYPE(ARGMAX)

namespace {

constexpr int SAMPLE_THREADS = 256;

// Philox4x32-10 (Salmon et al. 2011), as src/sample/philox.rs.
__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
    const uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
  }
}

// The first uniform number in [0, 1) of (seed, position), 53 bits (philox::uniforms()[0]).
__device__ __forceinline__ double philox_uniform(uint64_t seed, uint64_t position) {
  uint32_t c[4] = {(uint32_t)position, (uint32_t)(position >> 32), 0u, 0u};
  philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
  const uint64_t bits = ((uint64_t)(c[0] >> 5) << 26) | (uint64_t)(c[1] >> 6);
  return (double)bits * (1.0 / 9007199254740992.0);
}

__device__ __forceinline__ float bits_float(uint32_t u) { return __uint_as_float(u); }

// The inverse of the order-preserving map of floats to u32 (negative: all bits flipped;
// positive: sign bit set), so that bisecting keys bisects values.
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Block-wide sums over SAMPLE_THREADS threads in a fixed order (every thread gets the result).
__device__ double block_sum_f64(double x) {
  __shared__ double partial[SAMPLE_THREADS / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < SAMPLE_THREADS / 32; ++w) total += partial[w];
  return total;
}

__device__ int block_count(int x) {
  __shared__ int partial[SAMPLE_THREADS / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  int total = 0;
  for (int w = 0; w < SAMPLE_THREADS / 32; ++w) total += partial[w];
  return total;
}

__device__ float block_max(float x) {
  __shared__ float partial[SAMPLE_THREADS / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < SAMPLE_THREADS / 32; ++w) m = fmaxf(m, partial[w]);
  return m;
}

struct RowFilter {
  float max, scale, min_logit, min_weight;
};

// Weight of logit `v` after temperature and top-k (0 for dropped, NaN or -inf logits).
__device__ __forceinline__ float row_weight(float v, const RowFilter& f) {
  return v >= f.min_logit ? expf((v - f.max) * f.scale) : 0.f;
}

__device__ void sample_row(const float* __restrict__ logits, const uint32_t* __restrict__ params,
                           int vocab, uint32_t* __restrict__ out) {
  const int tid = threadIdx.x;
  const float* x = logits + (int64_t)blockIdx.x * vocab;
  const uint32_t* p = params + (int64_t)blockIdx.x * 8;
  const float temperature = bits_float(p[0]);
  const uint32_t top_k = p[1];
  const float top_p = bits_float(p[2]), min_p = bits_float(p[3]);
  float m = -INFINITY;
  for (int i = tid; i < vocab; i += SAMPLE_THREADS) m = fmaxf(m, x[i]);
  m = block_max(m);
  if (!(temperature > 0.f) || !isfinite(m)) {
    argmax<float>(logits, out, vocab);
    return;
  }
  RowFilter f{m, fminf(1.f / temperature, 3.402823466e38f), -INFINITY, 0.f};
  if (top_k > 0 && top_k < (uint32_t)vocab) {
    int finite = 0;
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) finite += x[i] > -INFINITY;
    if (block_count(finite) > (int)top_k) {
      // The k-th largest logit: the largest key K with at least k logits at or above it.
      uint32_t key = 0;
      for (int bit = 31; bit >= 0; --bit) {
        const uint32_t cand = key | (1u << bit);
        // Keys below -inf's are NaN patterns: they stand for -inf, so counts stay monotone.
        const float v = cand <= 0x007fffffu ? -INFINITY : key_float(cand);
        int n = 0;
        for (int i = tid; i < vocab; i += SAMPLE_THREADS) n += x[i] >= v;
        if (block_count(n) >= (int)top_k) key = cand;
      }
      f.min_logit = key_float(key);
    }
  }
  float min_weight = 0.f;
  if (top_p < 1.f) {
    double total = 0.0;
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) total += row_weight(x[i], f);
    total = block_sum_f64(total);
    const double target = ((double)top_p - 1e-6) * total;
    // The largest weight threshold whose kept mass still reaches the target (weights are
    // non-negative floats, whose bit patterns sort as their values).
    uint32_t t = 0;
    for (int bit = 30; bit >= 0; --bit) {
      const uint32_t cand = t | (1u << bit);
      const float tau = __uint_as_float(cand);
      double mass = 0.0;
      for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
        const float w = row_weight(x[i], f);
        if (w >= tau) mass += w;
      }
      if (block_sum_f64(mass) >= target) t = cand;
    }
    min_weight = __uint_as_float(t);
  }
  if (min_p > 0.f) min_weight = fmaxf(min_weight, fminf(min_p, 1.f));
  f.min_weight = min_weight;

  // Inverse CDF in id order: contiguous chunks, their sums, then one thread walks.
  __shared__ double chunk_sum[SAMPLE_THREADS];
  const int chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
  const int begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);
  double s = 0.0;
  for (int i = begin; i < end; ++i) {
    const float w = row_weight(x[i], f);
    if (w > 0.f && w >= f.min_weight) s += w;
  }
  chunk_sum[tid] = s;
  __syncthreads();
  if (tid == 0) {
    double total = 0.0;
    for (int c = 0; c < SAMPLE_THREADS; ++c) total += chunk_sum[c];
    const double target = philox_uniform((uint64_t)p[4] | ((uint64_t)p[5] << 32),
                                         (uint64_t)p[6] | ((uint64_t)p[7] << 32)) * total;
    double cum = 0.0;
    int c = 0;
    while (c < SAMPLE_THREADS - 1 && cum + chunk_sum[c] <= target) cum += chunk_sum[c++];
    int last = -1, token = -1;
    for (int i = min(vocab, c * chunk); i < min(vocab, (c + 1) * chunk); ++i) {
      const float w = row_weight(x[i], f);
      if (w > 0.f && w >= f.min_weight) {
        last = i;
        cum += w;
        if (cum > target) {
          token = i;
          break;
        }
      }
    }
    if (token < 0) {
      // Rounding put the target past the walked sum: the last kept token at or before here.
      for (int i = last < 0 ? min(vocab, (c + 1) * chunk) - 1 : last; i >= 0 && token < 0; --i) {
        const float w = row_weight(x[i], f);
        if (w > 0.f && w >= f.min_weight) token = i;
      }
    }
    out[blockIdx.x] = token < 0 ? 0u : (uint32_t)token;
  }
}

}  // namespace

// One entry per (row, token): [row, token, masked, bias, repetition penalty (1: not seen),
// frequency * count + presence (0: not generated)], f32 fields as bits.
extern "C" __global__ void adjust_logits_f32(float* logits, const uint32_t* entries, int n,
                                             int vocab) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t* e = entries + 6 * (int64_t)i;
  if (e[1] >= (uint32_t)vocab) return;
  float& l = logits[(int64_t)e[0] * vocab + e[1]];
  float x = l + bits_float(e[3]);
  if (e[2]) x = -INFINITY;
  const float rep = bits_float(e[4]);
  if (rep != 1.f) x = x > 0.f ? x / rep : x * rep;
  l = x - bits_float(e[5]);
}

// params: [rows, 8] u32: temperature (0: greedy), top_k (0: off), top_p, min_p (f32 bits),
// seed lo/hi, position lo/hi.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows_f32(const float* logits, const uint32_t* params, int vocab, uint32_t* out) {
  sample_row(logits, params, vocab, out);
}
