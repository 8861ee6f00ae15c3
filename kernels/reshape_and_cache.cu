// reshape_and_cache: writes the new keys (or values) of a step, [tokens, kv_heads * head_dim],
// into the paged cache [slots, kv_heads * head_dim] at the rows slot_mapping names.
// One block per token; a slot of 0xffffffff (padding) is skipped. The _fp8 entry points store
// into an FP8 cache (uint8 e4m3 bytes): cache = e4m3(src * inv_scale), saturating at +-448.
#include "common.cuh"
using namespace flare;

template <typename T>
__device__ void reshape_and_cache(const T* __restrict__ src, T* __restrict__ cache,
                                  const uint32_t* __restrict__ slot_mapping, int row_elems) {
  const int64_t t = blockIdx.x;
  const uint32_t slot = slot_mapping[t];
  if (slot == 0xffffffffu) return;
  const T* s = src + t * row_elems;
  T* d = cache + (int64_t)slot * row_elems;
  constexpr int N = Vec16<T>::N;
  const bool vec = row_elems % N == 0 && ((reinterpret_cast<uintptr_t>(s) |
                                           reinterpret_cast<uintptr_t>(d)) & 15) == 0;
  if (vec) {
    const uint4* s4 = reinterpret_cast<const uint4*>(s);
    uint4* d4 = reinterpret_cast<uint4*>(d);
    for (int i = threadIdx.x; i < row_elems / N; i += blockDim.x) d4[i] = s4[i];
  } else {
    for (int i = threadIdx.x; i < row_elems; i += blockDim.x) d[i] = s[i];
  }
}

#define RESHAPE_AND_CACHE(T, NAME)                                                       \
  extern "C" __global__ void reshape_and_cache_##NAME(                                   \
      const T* src, T* cache, const uint32_t* slot_mapping, int row_elems) {             \
    reshape_and_cache<T>(src, cache, slot_mapping, row_elems);                           \
  }
FLARE_FOR_EACH_TYPE(RESHAPE_AND_CACHE)

template <typename T>
__device__ void reshape_and_cache_fp8(const T* __restrict__ src, uint8_t* __restrict__ cache,
                                      const uint32_t* __restrict__ slot_mapping, int row_elems,
                                      float inv_scale) {
  const int64_t t = blockIdx.x;
  const uint32_t slot = slot_mapping[t];
  if (slot == 0xffffffffu) return;
  const T* s = src + t * row_elems;
  uint8_t* d = cache + (int64_t)slot * row_elems;
  for (int i = threadIdx.x; i < row_elems; i += blockDim.x)
    d[i] = float_to_fp8_e4m3(to_float(s[i]) * inv_scale);
}

#define RESHAPE_AND_CACHE_FP8(T, NAME)                                                   \
  extern "C" __global__ void reshape_and_cache_fp8_##NAME(                               \
      const T* src, uint8_t* cache, const uint32_t* slot_mapping, int row_elems,         \
      float inv_scale) {                                                                 \
    reshape_and_cache_fp8<T>(src, cache, slot_mapping, row_elems, inv_scale);            \
  }
FLARE_FOR_EACH_TYPE(RESHAPE_AND_CACHE_FP8)
