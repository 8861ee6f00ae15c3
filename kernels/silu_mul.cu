// SiLU-and-multiply of the gated MLP: out = silu(gate) * up, in f32, rounded once.
#include "common.cuh"
using namespace flare;

template <typename T>
__device__ void silu_mul(const T* __restrict__ gate, const T* __restrict__ up,
                         T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.f + expf(-g)) * to_float(up[i]));
  }
}

#define SILU_MUL(T, NAME)                                                                \
  extern "C" __global__ void silu_mul_##NAME(const T* gate, const T* up, T* out,          \
                                             int64_t n) {                                \
    silu_mul<T>(gate, up, out, n);                                                       \
  }
FLARE_FOR_EACH_TYPE(SILU_MUL)
