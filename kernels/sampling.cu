// On-device token choice, so that only token ids cross PCIe each step.
//   argmax: largest logit of each row, ties to the lowest id, NaN never wins (as
//   sample::draw::argmax). One block of 1024 threads per row.
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
