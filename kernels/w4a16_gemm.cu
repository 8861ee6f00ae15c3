// Weight-only integer GEMM, bf16 activations (src/ops/qgemm.rs is the host side and the CPU
// reference): W4A16 (GPTQ, AWQ, compressed-tensors pack-quantized int4; GGUF Q4_0/Q4_1/Q4_K)
// and W8A16 (GPTQ int8, GGUF Q8_0/Q6_K), all repacked at load into one layout:
//   qw  [N, K * BITS / 32] u32: value k of row n at bits (k % (32/BITS)) * BITS of word k / (32/BITS)
//   sb  [N, K / G] float2 (scale, offset): w[n, k] = fmaf(q, scale, offset) of k's group,
//       so zero points become offset = -zero * scale and GGUF's mins fit too
// desc_act (GPTQ g_idx) is a permutation of K applied at load and to the activations.
//
//   wint_gemm_w{4,8}_m{16,64}  out[m, n] = sum_k x[m, k] * bf16(w[n, k]), mma.sync m16n8k16
//                              bf16 with f32 accumulation; weights dequantized in registers
//                              (Marlin-style), never written out. Decode (M <= 16) and prefill
//                              use the same arithmetic per output (m16 and m64 differ only in
//                              how many rows a CTA shares its weight loads with).
// Batch invariance: as in fp8_gemm.cu (8 warps take 64-wide K chunks round robin, partial sums
// added in warp order, an MMA row depends on its own row only).
#include "mma.cuh"
using namespace flare;

namespace {

constexpr int WINT_WARPS = 8;
constexpr int WINT_BN = 32;  // output columns per CTA (4 n8 tiles)
constexpr int WINT_KC = 64;  // K chunk per warp iteration: four k16 MMA steps

// Lane t of a chunk holds logical positions 16t..16t+15. MMA step s (k16) takes positions
// 4s..4s+3 of every lane: b[0]/a[0] from 4s, 4s+1 and b[1]/a[2] from 4s+2, 4s+3.
template <int BITS>
__device__ __forceinline__ void dequant16(const uint32_t* q, float2 sb, uint32_t w[8]) {
  float v[16];
  if (BITS == 4) {
    for (int i = 0; i < 16; ++i) v[i] = float((q[i / 8] >> (4 * (i % 8))) & 15u);
  } else {
    for (int i = 0; i < 16; ++i) v[i] = float((q[i / 4] >> (8 * (i % 4))) & 255u);
  }
  for (int i = 0; i < 8; ++i)
    w[i] = pack_bf16x2(fmaf(v[2 * i], sb.x, sb.y), fmaf(v[2 * i + 1], sb.x, sb.y));
}

template <int BITS, int MT>
__device__ void wint_gemm(const __nv_bfloat16* __restrict__ x, const uint32_t* __restrict__ qw,
                          const float2* __restrict__ sb, __nv_bfloat16* __restrict__ out, int M,
                          int N, int K, int G) {
  constexpr int BM = 16 * MT;
  constexpr int WORDS = 16 * BITS / 32;  // words of one lane's 16 values
  __shared__ float tile[BM * WINT_BN];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * WINT_BN, m0 = blockIdx.y * BM;
  const size_t row_words = size_t(K) * BITS / 32;
  const int groups = K / G;
  float acc[MT][4][4];
  for (int mt = 0; mt < MT; ++mt)
    for (int j = 0; j < 4; ++j)
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = 0.f;

  for (int c = warp; c < K / WINT_KC; c += WINT_WARPS) {
    const int k0 = c * WINT_KC + t * 16;
    uint32_t bw[4][8];
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + j * 8 + g;
      uint32_t q[WORDS];
      float2 s = make_float2(0.f, 0.f);
      if (n < N) {
        const uint32_t* p = qw + size_t(n) * row_words + size_t(k0) * BITS / 32;
        for (int i = 0; i < WORDS; ++i) q[i] = p[i];
        s = sb[size_t(n) * groups + k0 / G];
      } else {
        for (int i = 0; i < WORDS; ++i) q[i] = 0;
      }
      dequant16<BITS>(q, s, bw[j]);
    }
    for (int mt = 0; mt < MT; ++mt) {
      const int r0 = m0 + mt * 16 + g, r1 = r0 + 8;
      uint32_t a0[8], a1[8];
      const uint4* p0 = reinterpret_cast<const uint4*>(x + size_t(r0) * K + k0);
      const uint4* p1 = reinterpret_cast<const uint4*>(x + size_t(r1) * K + k0);
      const uint4 z = make_uint4(0, 0, 0, 0);
      const uint4 u0 = r0 < M ? p0[0] : z, u1 = r0 < M ? p0[1] : z;
      const uint4 v0 = r1 < M ? p1[0] : z, v1 = r1 < M ? p1[1] : z;
      a0[0] = u0.x, a0[1] = u0.y, a0[2] = u0.z, a0[3] = u0.w;
      a0[4] = u1.x, a0[5] = u1.y, a0[6] = u1.z, a0[7] = u1.w;
      a1[0] = v0.x, a1[1] = v0.y, a1[2] = v0.z, a1[3] = v0.w;
      a1[4] = v1.x, a1[5] = v1.y, a1[6] = v1.z, a1[7] = v1.w;
      for (int j = 0; j < 4; ++j) {
        float* d = acc[mt][j];
        for (int s = 0; s < 4; ++s) {
          const uint32_t a[4] = {a0[2 * s], a1[2 * s], a0[2 * s + 1], a1[2 * s + 1]};
          const uint32_t b[2] = {bw[j][2 * s], bw[j][2 * s + 1]};
          mma_bf16_16816(d, a, b);
        }
      }
    }
  }
  for (int w = 0; w < WINT_WARPS; ++w) {
    if (warp == w)
      for (int mt = 0; mt < MT; ++mt)
        for (int j = 0; j < 4; ++j)
          for (int i = 0; i < 4; ++i) {
            const int r = mt * 16 + g + 8 * (i >> 1), col = j * 8 + 2 * t + (i & 1);
            float& d = tile[r * WINT_BN + col];
            d = w == 0 ? acc[mt][j][i] : d + acc[mt][j][i];
          }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < BM * WINT_BN; i += blockDim.x) {
    const int r = m0 + i / WINT_BN, col = n0 + i % WINT_BN;
    if (r < M && col < N) out[size_t(r) * N + col] = __float2bfloat16_rn(tile[i]);
  }
}

}  // namespace

#define WINT_GEMM(BITS, MT, NAME)                                                               \
  extern "C" __global__ void __launch_bounds__(WINT_WARPS * 32) NAME(                          \
      const __nv_bfloat16* x, const uint32_t* qw, const float2* sb, __nv_bfloat16* out, int M, \
      int N, int K, int G) {                                                                    \
    wint_gemm<BITS, MT>(x, qw, sb, out, M, N, K, G);                                            \
  }

WINT_GEMM(4, 1, wint_gemm_w4_m16_bf16)
WINT_GEMM(4, 4, wint_gemm_w4_m64_bf16)
WINT_GEMM(8, 1, wint_gemm_w8_m16_bf16)
WINT_GEMM(8, 4, wint_gemm_w8_m64_bf16)
