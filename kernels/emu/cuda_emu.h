// A CPU emulation of the CUDA C++ that flare's kernels use, to run kernels/*.cu on machines
// without a GPU (scripts/kernel_emu_check.sh). Each block runs as one fiber per thread
// (ucontext) on one OS thread, blocks one after another: __shared__ becomes `static` (one
// block at a time), __syncthreads and warp shuffles are fiber barriers. Deterministic and
// exact in control flow; float math is the host's (no FMA contraction differences matter at
// the tolerances checked). bf16 is emulated with round-to-nearest-even, half with _Float16.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
struct uint2 {
  unsigned x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
using std::isfinite;
using std::isnan;
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
// Round to nearest, ties to even (the default FP environment), as the device intrinsic does.
inline unsigned __float2uint_rn(float f) { return (unsigned)std::nearbyint(f); }

// ---- element types
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {0x7fc0};
  u += 0x7fff + ((u >> 16) & 1);
  return {uint16_t(u >> 16)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 v) {
  return {__bfloat162float(v.x), __bfloat162float(v.y)};
}
typedef _Float16 __half;
struct __half2 {
  __half x, y;
};
inline float __half2float(__half h) { return float(h); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float2 __half22float2(__half2 v) { return {float(v.x), float(v.y)}; }

// ---- fibers: one per thread of the running block
namespace emu {

struct Barrier {
  int count = 0, gen = 0;
};

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  dim3 tid;
  bool done = false;
};

inline ucontext_t main_ctx;
inline std::vector<Fiber> fibers;
inline int current = 0;
inline Barrier block_barrier;
inline std::vector<Barrier> warp_barriers;
inline std::vector<uint64_t> exchange;  // [warps * 32]
inline std::function<void()> body;

inline void yield() { swapcontext(&fibers[current].ctx, &main_ctx); }

inline void wait(Barrier& b, int n) {
  const int gen = b.gen;
  if (++b.count == n) {
    b.count = 0;
    b.gen++;
  } else {
    while (b.gen == gen) yield();
  }
}

inline int warp_size_of(int warp) {
  const int n = int(blockDim.x * blockDim.y * blockDim.z) - warp * 32;
  return n < 32 ? n : 32;
}

inline void entry() {
  body();
  fibers[current].done = true;
}

// Runs `kernel` (a call of the extern "C" entry point) over the whole grid.
inline void launch(dim3 grid, dim3 block, std::function<void()> kernel) {
  gridDim = grid;
  blockDim = block;
  body = std::move(kernel);
  const int n = int(block.x * block.y * block.z);
  const int warps = (n + 31) / 32;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        fibers.assign(n, Fiber{});
        block_barrier = {};
        warp_barriers.assign(warps, Barrier{});
        exchange.assign(warps * 32, 0);
        for (int t = 0; t < n; ++t) {
          Fiber& f = fibers[t];
          f.tid = {unsigned(t % block.x), unsigned(t / block.x % block.y),
                   unsigned(t / (block.x * block.y))};
          f.stack.resize(256 * 1024);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = &main_ctx;
          makecontext(&f.ctx, entry, 0);
        }
        for (bool any = true; any;) {
          any = false;
          for (int t = 0; t < n; ++t) {
            if (fibers[t].done) continue;
            any = true;
            current = t;
            threadIdx = fibers[t].tid;
            swapcontext(&main_ctx, &fibers[t].ctx);
          }
        }
      }
}

template <typename T>
T shuffle(T v, int src_lane_of_mine) {
  static_assert(sizeof(T) <= 8);
  const int t = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int warp = t / 32, lane = t % 32;
  std::memcpy(&exchange[warp * 32 + lane], &v, sizeof(T));
  wait(warp_barriers[warp], warp_size_of(warp));
  T r;
  std::memcpy(&r, &exchange[warp * 32 + src_lane_of_mine], sizeof(T));
  wait(warp_barriers[warp], warp_size_of(warp));
  threadIdx = fibers[current].tid;
  return r;
}

}  // namespace emu

inline void __syncthreads() {
  emu::wait(emu::block_barrier, int(blockDim.x * blockDim.y * blockDim.z));
  threadIdx = emu::fibers[emu::current].tid;
}

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  const int lane = int(threadIdx.x) % 32;
  return emu::shuffle(v, lane ^ mask);
}

template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  return emu::shuffle(v, src);
}
