// Rotary position embedding in place on x [tokens, heads, head_dim] for arbitrary per-token
// positions. The angle is (f32(pos) * pos_scale) * inv_freq[i] in f32, as HF computes it;
// sin/cos at full precision (angles reach 1e5 rad at long contexts). NeoX style rotates
// (x[i], x[i + d/2]); interleaved (GPT-J, GGUF llama) rotates (x[2i], x[2i + 1]).
#include "common.cuh"
using namespace flare;

template <typename T>
__device__ void rotary(T* __restrict__ x, const uint32_t* __restrict__ positions,
                       const float* __restrict__ inv_freq, int heads, int d, float pos_scale,
                       int interleaved) {
  const int64_t t = blockIdx.x;
  const int half = d / 2;
  const float p = (float)positions[t] * pos_scale;
  T* row = x + t * heads * d;
  for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    float s, c;
    sincosf(p * inv_freq[i], &s, &c);
    T* base = row + h * d;
    const int i1 = interleaved ? 2 * i : i;
    const int i2 = interleaved ? 2 * i + 1 : i + half;
    const float a = to_float(base[i1]), b = to_float(base[i2]);
    base[i1] = from_float<T>(a * c - b * s);
    base[i2] = from_float<T>(b * c + a * s);
  }
}

#define ROTARY(T, NAME)                                                                  \
  extern "C" __global__ void rotary_##NAME(T* x, const uint32_t* positions,               \
                                           const float* inv_freq, int heads, int d,      \
                                           float pos_scale, int interleaved) {           \
    rotary<T>(x, positions, inv_freq, heads, d, pos_scale, interleaved);                 \
  }
FLARE_FOR_EACH_TYPE(ROTARY)
