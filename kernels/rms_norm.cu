// RMSNorm rows, optionally fused with the residual add before it (vLLM's fused_add_rms_norm):
//   sum  = round_T(x + residual)              (the new residual stream, written out)
//   norm = round_T(sum * rsqrt(mean(sum^2) + eps) * weight)
// in f32, rounding each output once. One block per row.
#include "common.cuh"
using namespace flare;

template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ residual,
                             const T* __restrict__ weight, T* __restrict__ out_sum,
                             T* __restrict__ out_norm, int n, float eps) {
  const int64_t row = blockIdx.x;
  x += row * n;
  if (residual) residual += row * n;
  if (out_sum) out_sum += row * n;
  out_norm += row * n;
  float sq = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float s = to_float(x[i]);
    if (residual) {
      s = round_to<T>(s + to_float(residual[i]));
      out_sum[i] = from_float<T>(s);
    }
    sq += s * s;
  }
  const float inv = rsqrtf(block_sum(sq) / n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    // Each thread reads back only what it wrote itself.
    const float s = residual ? to_float(out_sum[i]) : to_float(x[i]);
    out_norm[i] = from_float<T>(s * inv * to_float(weight[i]));
  }
}

#define RMS_NORM(T, NAME)                                                                \
  extern "C" __global__ void add_rms_norm_##NAME(const T* x, const T* residual,           \
                                                 const T* weight, T* out_sum,            \
                                                 T* out_norm, int n, float eps) {        \
    add_rms_norm<T>(x, residual, weight, out_sum, out_norm, n, eps);                     \
  }                                                                                      \
  extern "C" __global__ void rms_norm_##NAME(const T* x, const T* weight, T* out, int n,  \
                                             float eps) {                                \
    add_rms_norm<T>(x, nullptr, weight, nullptr, out, n, eps);                           \
  }
FLARE_FOR_EACH_TYPE(RMS_NORM)
