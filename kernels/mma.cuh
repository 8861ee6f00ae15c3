// Warp-level tensor-core MMAs (PTX `mma.sync`) used by the quantized GEMMs, with the fragment
// layouts of the PTX ISA written out, and e4m3 conversions done in integer arithmetic (so the
// device and the CPU emulation round the same way as src/quant/fp8.rs).
//
// Fragments (lane = 4 * g + t, g = lane / 4, t = lane % 4; C/D is 16x8 f32):
//   c[0], c[1]: row g,     cols 2t, 2t+1      c[2], c[3]: row g + 8, cols 2t, 2t+1
// m16n8k32 e4m3 (A row-major 16x32, B column-major 32x8, 4 bytes a register):
//   a[0]: row g,   k 4t..4t+3     a[1]: row g+8, k 4t..4t+3
//   a[2]: row g,   k 16+4t..      a[3]: row g+8, k 16+4t..
//   b[0]: col g,   k 4t..4t+3     b[1]: col g,   k 16+4t..
// m16n8k16 bf16 (2 elements a register, low half first):
//   a[0]: row g,   k 2t, 2t+1     a[1]: row g+8, k 2t, 2t+1
//   a[2]: row g,   k 2t+8, 2t+9   a[3]: row g+8, k 2t+8, 2t+9
//   b[0]: col g,   k 2t, 2t+1     b[1]: col g,   k 2t+8, 2t+9
// Off the GPU (kernels/emu) each MMA is computed from every lane's fragments gathered by
// warp shuffles: the emulation checks our use of these layouts, not the hardware.
#pragma once
#include "common.cuh"

namespace flare {

constexpr float E4M3_MAX = 448.f;

// The e4m3fn byte nearest `v` (ties to even), saturating at +-448; NaN stays NaN.
__device__ __forceinline__ uint8_t f32_to_e4m3(float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  const uint8_t sign = uint8_t((u >> 24) & 0x80);
  const uint32_t ua = u & 0x7fffffffu;
  if (ua > 0x7f800000u) return sign | 0x7f;  // NaN
  if (ua >= 0x43e00000u) return sign | 0x7e;  // >= 448
  if (ua < 0x3c800000u) {                     // below 2^-6: subnormal grid of 2^-9
    float a;
    memcpy(&a, &ua, 4);
    return sign | uint8_t(rintf(a * 512.f));  // 8 rounds up to the smallest normal, 0x08
  }
  // Round the mantissa to 3 bits, ties to even (a carry moves into the exponent).
  const uint32_t r = (ua + 0x7ffffu + ((ua >> 20) & 1u)) & ~0xfffffu;
  const int e = int(r >> 23) - 127;
  return sign | uint8_t(((e + 7) << 3) | ((r >> 20) & 7u));
}

__device__ __forceinline__ float e4m3_to_f32(uint8_t b) {
  const uint32_t exp = (b >> 3) & 15u, man = b & 7u;
  float mag;
  if (exp == 15 && man == 7) {
    mag = NAN;
  } else if (exp == 0) {
    mag = float(man) * (1.f / 512.f);
  } else {
    const uint32_t bits = ((exp + 120u) << 23) | (man << 20);  // 2^(exp-7) * (1 + man/8)
    memcpy(&mag, &bits, 4);
  }
  return (b & 0x80) ? -mag : mag;
}

__device__ __forceinline__ float bf16_lo(uint32_t w) {
  const uint32_t u = w << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ float bf16_hi(uint32_t w) {
  const uint32_t u = w & 0xffff0000u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// Two floats as a bf16x2 register (round to nearest even; lo in the low half).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat16 l = __float2bfloat16_rn(lo), h = __float2bfloat16_rn(hi);
  uint16_t a, b;
  memcpy(&a, &l, 2);
  memcpy(&b, &h, 2);
  return uint32_t(a) | (uint32_t(b) << 16);
}

#if defined(__CUDA_ARCH__)

__device__ __forceinline__ void mma_e4m3_16832(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // FP8 tensor cores need sm_89+; the host never launches this kernel there
#endif
}

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#else  // CPU emulation (kernels/emu): gather the warp's fragments, compute this lane's 4 outputs.

template <typename Elem>
__device__ __forceinline__ void mma_emulated(float c[4], const uint32_t a[4], const uint32_t b[2],
                                             int kdim, Elem elem) {
  uint32_t all_a[32][4], all_b[32][2];
  for (int src = 0; src < 32; ++src) {
    for (int r = 0; r < 4; ++r) all_a[src][r] = __shfl_sync(0xffffffffu, a[r], src);
    for (int r = 0; r < 2; ++r) all_b[src][r] = __shfl_sync(0xffffffffu, b[r], src);
  }
  const int lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  const int per_reg = kdim / 8;  // elements in a register: 4 (e4m3) or 2 (bf16)
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float acc = 0.f;
    for (int k = 0; k < kdim; ++k) {
      const int half = kdim / 2, kt = (k % half) / per_reg, ke = k % per_reg;
      const int areg = (row >> 3) + 2 * (k / half);
      const float av = elem(all_a[(row & 7) * 4 + kt][areg], ke);
      const float bv = elem(all_b[col * 4 + kt][k / half], ke);
      acc += av * bv;
    }
    c[i] += acc;
  }
}

__device__ __forceinline__ void mma_e4m3_16832(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  mma_emulated(c, a, b, 32, [](uint32_t w, int e) { return e4m3_to_f32(uint8_t(w >> (8 * e))); });
}

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  mma_emulated(c, a, b, 16, [](uint32_t w, int e) { return e ? bf16_hi(w) : bf16_lo(w); });
}

#endif

}  // namespace flare
