// FP8 (e4m3) W8A8 GEMM on tensor cores, with scales in the epilogue (src/ops/qgemm.rs is the
// host side and the CPU reference):
//   fp8_quant_act_*  activations -> e4m3 bytes and one f32 scale per (token, group of gx
//                    inputs): scale = max|x| / 448 (dynamic) or the checkpoint's static scale
//   fp8_gemm_*       out[m, n] = sum over 32-wide K steps c of
//                      (sum_k xq[m, k] * wq[n, k]) * xs[m, c*32/gx] * ws[n, c*32/gw]
//                    with mma.sync m16n8k32 e4m3 (sm_89+), f32 accumulation.
// Weight scales come as one f32 per (output row, gw inputs): per-tensor and per-channel scales
// are gw = K, 128x128 blocks are gw = 128 (any multiple of 32) with each row's block scale repeated (host side).
//
// Batch invariance: a CTA covers 16*MT rows and 32 output columns; its 8 warps take the K
// chunks round robin (warp w: chunks w, w + 8, ...) and their partial sums are added in warp
// order. Nothing in an output's arithmetic depends on M, MT or which rows share its tile (an
// MMA row is computed from that row alone), so a token's outputs are the same in any batch.
#include "mma.cuh"
using namespace flare;

namespace {

constexpr int FP8_WARPS = 8;
constexpr int FP8_BN = 32;  // output columns per CTA: 4 n8 tiles, each warp computes all four
constexpr int FP8_KC = 64;  // K chunk of one warp iteration: two k32 MMA steps (K % 64 == 0)
constexpr int FP8_QUANT_THREADS = 256;

__device__ __forceinline__ float act_block_max(float x) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  x = lane < nwarps ? partial[lane] : 0.f;
  return warp_max(x);
}

// One block per token row.
template <typename T>
__device__ void fp8_quant_act(const T* __restrict__ x, uint8_t* __restrict__ q,
                              float* __restrict__ scales, int K, int gx, float static_scale) {
  const size_t row = blockIdx.x;
  const T* xr = x + row * K;
  uint8_t* qr = q + row * K;
  const int groups = K / gx;
  for (int gi = 0; gi < groups; ++gi) {
    const int k0 = gi * gx;
    float scale = static_scale;
    if (scale <= 0.f) {
      float m = 0.f;
      for (int i = threadIdx.x; i < gx; i += blockDim.x) m = fmaxf(m, fabsf(to_float(xr[k0 + i])));
      scale = act_block_max(m) / E4M3_MAX;
    }
    for (int i = threadIdx.x; i < gx; i += blockDim.x) {
      const float v = to_float(xr[k0 + i]);
      qr[k0 + i] = f32_to_e4m3(scale > 0.f ? v / scale : 0.f);
    }
    if (threadIdx.x == 0) scales[row * groups + gi] = scale;
  }
}

__device__ __forceinline__ uint2 load8(const uint8_t* p, bool ok) {
  return ok ? *reinterpret_cast<const uint2*>(p) : make_uint2(0, 0);
}

template <typename T, int MT>
__device__ void fp8_gemm(const uint8_t* __restrict__ xq, const float* __restrict__ xs,
                         const uint8_t* __restrict__ wq, const float* __restrict__ ws,
                         T* __restrict__ out, int M, int N, int K, int gx, int gw) {
  constexpr int BM = 16 * MT;
  __shared__ float tile[BM * FP8_BN];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * FP8_BN, m0 = blockIdx.y * BM;
  const int xgroups = K / gx, wgroups = K / gw;
  float acc[MT][4][4];
  for (int mt = 0; mt < MT; ++mt)
    for (int j = 0; j < 4; ++j)
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = 0.f;

  for (int c = warp; c < K / FP8_KC; c += FP8_WARPS) {
    // MMA step s covers K positions [c*64 + 32s, +32): lane t holds bytes 8t..8t+7 of it for
    // its rows (logical k 4t.. from bytes 0-3, 16+4t.. from bytes 4-7: a fixed permutation of
    // the step's k, the same for A and B). Scales apply per step, so groups of 32 work.
    uint2 bw[2][4];
    float wsc[2][4][2];
    for (int s = 0; s < 2; ++s) {
      const int k0 = c * FP8_KC + 32 * s + 8 * t;
      for (int j = 0; j < 4; ++j) {
        const int n = n0 + j * 8 + g;
        bw[s][j] = load8(wq + size_t(n) * K + k0, n < N);
        for (int e = 0; e < 2; ++e) {
          const int col = n0 + j * 8 + 2 * t + e;
          wsc[s][j][e] = col < N ? ws[size_t(col) * wgroups + (c * FP8_KC + 32 * s) / gw] : 0.f;
        }
      }
    }
    for (int mt = 0; mt < MT; ++mt) {
      const int r0 = m0 + mt * 16 + g, r1 = r0 + 8;
      for (int s = 0; s < 2; ++s) {
        const int k0 = c * FP8_KC + 32 * s + 8 * t, kg = c * FP8_KC + 32 * s;
        const uint2 a0 = load8(xq + size_t(r0) * K + k0, r0 < M);
        const uint2 a1 = load8(xq + size_t(r1) * K + k0, r1 < M);
        const float xs0 = r0 < M ? xs[size_t(r0) * xgroups + kg / gx] : 0.f;
        const float xs1 = r1 < M ? xs[size_t(r1) * xgroups + kg / gx] : 0.f;
        const uint32_t a[4] = {a0.x, a1.x, a0.y, a1.y};
        for (int j = 0; j < 4; ++j) {
          float p[4] = {0.f, 0.f, 0.f, 0.f};
          const uint32_t b[2] = {bw[s][j].x, bw[s][j].y};
          mma_e4m3_16832(p, a, b);
          // Explicit fmaf: the same rounding in every instantiation, contraction or not.
          acc[mt][j][0] = fmaf(p[0], xs0 * wsc[s][j][0], acc[mt][j][0]);
          acc[mt][j][1] = fmaf(p[1], xs0 * wsc[s][j][1], acc[mt][j][1]);
          acc[mt][j][2] = fmaf(p[2], xs1 * wsc[s][j][0], acc[mt][j][2]);
          acc[mt][j][3] = fmaf(p[3], xs1 * wsc[s][j][1], acc[mt][j][3]);
        }
      }
    }
  }
  // Warps' partial sums in warp order (fixed, whatever M is).
  for (int w = 0; w < FP8_WARPS; ++w) {
    if (warp == w)
      for (int mt = 0; mt < MT; ++mt)
        for (int j = 0; j < 4; ++j)
          for (int i = 0; i < 4; ++i) {
            const int r = mt * 16 + g + 8 * (i >> 1), col = j * 8 + 2 * t + (i & 1);
            float& d = tile[r * FP8_BN + col];
            d = w == 0 ? acc[mt][j][i] : d + acc[mt][j][i];
          }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < BM * FP8_BN; i += blockDim.x) {
    const int r = m0 + i / FP8_BN, col = n0 + i % FP8_BN;
    if (r < M && col < N) out[size_t(r) * N + col] = from_float<T>(tile[i]);
  }
}

}  // namespace

#define FP8_GEMM(T, NAME)                                                                       \
  extern "C" __global__ void __launch_bounds__(FP8_QUANT_THREADS) fp8_quant_act_##NAME(        \
      const T* x, uint8_t* q, float* scales, int K, int gx, float static_scale) {              \
    fp8_quant_act<T>(x, q, scales, K, gx, static_scale);                                       \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(FP8_WARPS * 32) fp8_gemm_m16_##NAME(            \
      const uint8_t* xq, const float* xs, const uint8_t* wq, const float* ws, T* out, int M,   \
      int N, int K, int gx, int gw) {                                                           \
    fp8_gemm<T, 1>(xq, xs, wq, ws, out, M, N, K, gx, gw);                                      \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(FP8_WARPS * 32) fp8_gemm_m64_##NAME(            \
      const uint8_t* xq, const float* xs, const uint8_t* wq, const float* ws, T* out, int M,   \
      int N, int K, int gx, int gw) {                                                           \
    fp8_gemm<T, 4>(xq, xs, wq, ws, out, M, N, K, gx, gw);                                      \
  }

FP8_GEMM(__nv_bfloat16, bf16)
FP8_GEMM(__half, f16)
FP8_GEMM(float, f32)
