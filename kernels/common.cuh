// Shared helpers for flare's kernels: element conversions, vector loads, warp reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace flare {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// FP8 e4m3 (OCP e4m3fn: bias 7, no infinities, 0x7f/0xff NaN, max 448), written out in bits so
// it needs no cuda_fp8.h (any arch, and kernels/emu). Matches src/quant/fp8.rs bit for bit.
__device__ __forceinline__ float fp8_e4m3_to_float(uint8_t b) {
  const uint32_t em = b & 0x7fu;
  float mag;
  if (em == 0x7fu) {
    mag = __uint_as_float(0x7fc00000u);
  } else if (em >= 0x08u) {  // normal: exponent e - 7 is f32 exponent field e + 120
    mag = __uint_as_float((((em >> 3) + 120u) << 23) | ((em & 7u) << 20));
  } else {  // subnormal: em * 2^-9
    mag = (float)em * 0.001953125f;
  }
  return (b & 0x80u) ? -mag : mag;
}

// The e4m3fn byte nearest x (ties to even), saturating at +-448; NaN stays NaN.
__device__ __forceinline__ uint8_t float_to_fp8_e4m3(float x) {
  const uint32_t bits = __float_as_uint(x);
  const uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7f;
  const float a = fminf(__uint_as_float(bits & 0x7fffffffu), 448.f);
  if (a < 0.015625f) {  // below 2^-6: multiples of 2^-9 (8 is the smallest normal, 0x08)
    return sign | (uint8_t)__float2uint_rn(a * 512.f);
  }
  uint32_t ab = __float_as_uint(a);
  ab += 0x7ffffu + ((ab >> 20) & 1u);  // round the f32 mantissa to 3 bits, ties to even
  return sign | (uint8_t)((((ab >> 23) - 120u) << 3) | ((ab >> 20) & 7u));
}

// Rounds through T and back: what storing an f32 value in T and reading it again gives.
template <typename T> __device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // partial may still be read by an earlier call
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  x = lane < nwarps ? partial[lane] : 0.f;
  return warp_sum(x);
}

// 16 bytes of T: 8 halves or 4 floats.
template <typename T> struct Vec16 {
  static constexpr int N = 16 / sizeof(T);
  union {
    uint4 raw;
    T v[N];
  };
};

}  // namespace flare

// One extern "C" entry point per element type: NAME_f32, NAME_f16, NAME_bf16.
#define FLARE_FOR_EACH_TYPE(MACRO) \
  MACRO(float, f32)                \
  MACRO(__half, f16)               \
  MACRO(__nv_bfloat16, bf16)
