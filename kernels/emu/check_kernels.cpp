// Runs flare's CUDA kernels (kernels/*.cu, unchanged) in the CPU emulation of cuda_emu.h
// against straightforward C++ references, with outputs NaN-poisoned before each launch.
// Checks the kernels' indexing, masking, splits and reductions where no GPU is at hand;
// numerics on the real GPU are checked by tests/cuda_kernels.rs. Build and run:
// scripts/kernel_emu_check.sh.
#include "../fp8_gemm.cu"
#include "../moe.cu"
#include "../paged_attention.cu"
#include "../reshape_and_cache.cu"
#include "../rms_norm.cu"
#include "../rotary.cu"
#include "../sampling.cu"
#include "../silu_mul.cu"
#include "../w4a16_gemm.cu"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>

static std::mt19937_64 rng(12345);
static int failures = 0;

template <typename T> static float tof(T x) { return flare::to_float(x); }
template <typename T> static T fromf(float x);
template <> float fromf<float>(float x) { return x; }
template <> __half fromf<__half>(float x) { return __float2half_rn(x); }
template <> __nv_bfloat16 fromf<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T> static const char* tname();
template <> const char* tname<float>() { return "f32"; }
template <> const char* tname<__half>() { return "f16"; }
template <> const char* tname<__nv_bfloat16>() { return "bf16"; }

template <typename T> static float rtol() {
  if (sizeof(T) == 4) return 2e-5f;
  return std::is_same_v<T, __half> ? 4.0f / 2048 : 4.0f / 256;
}

template <typename T> static std::vector<T> randn(size_t n) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<T> v(n);
  for (auto& x : v) x = fromf<T>(d(rng));
  return v;
}

template <typename T> static void poison(std::vector<T>& v) {
  std::memset(v.data(), 0xff, v.size() * sizeof(T));
}

// |got - want| <= rtol * (|want| + rms(want)); NaN (unwritten) fails.
template <typename T>
static void check(const std::vector<T>& got, const std::vector<float>& want, const std::string& what) {
  double ss = 0;
  for (float w : want) ss += double(w) * w;
  const float scale = std::sqrt(float(ss / std::max<size_t>(1, want.size())));
  float worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float g = tof(got[i]);
    if (!std::isfinite(g)) {
      std::printf("FAIL %s: element %zu is %f (unwritten?), want %f\n", what.c_str(), i, g, want[i]);
      failures++;
      return;
    }
    const float e = std::fabs(g - want[i]) / (std::fabs(want[i]) + scale);
    if (e > worst) worst = e, at = i;
  }
  const bool ok = worst <= rtol<T>();
  if (!ok) failures++;
  std::printf("%s %s: max rel err %.2e at %zu\n", ok ? "ok  " : "FAIL", what.c_str(), worst, at);
}

// ---------------------------------------------------------------- paged attention
struct Seq {
  int query_start, query_len, context_len;
  std::vector<uint32_t> table;
};

// K: the cache's element type as the reference reads it (T, or float values of an FP8 cache).
template <typename T, typename K>
static std::vector<float> attention_reference(const std::vector<T>& q, const std::vector<K>& k,
                                              const std::vector<K>& v, const std::vector<Seq>& seqs,
                                              int heads, int kvh, int d, int bs, int window,
                                              float scale, const std::vector<float>& sinks) {
  const int group = heads / kvh;
  int tokens = 0;
  for (auto& s : seqs) tokens += s.query_len;
  std::vector<float> out(size_t(tokens) * heads * d);
  for (auto& s : seqs) {
    for (int i = 0; i < s.query_len; ++i) {
      const int pos = s.context_len - s.query_len + i, row = s.query_start + i;
      const int lo = window > 0 ? std::max(0, pos + 1 - window) : 0;
      for (int h = 0; h < heads; ++h) {
        std::vector<float> sc;
        float m = -INFINITY;
        for (int p = lo; p <= pos; ++p) {
          const size_t slot = size_t(s.table[p / bs]) * bs + p % bs;
          float dot = 0;
          for (int c = 0; c < d; ++c)
            dot += tof(q[(size_t(row) * heads + h) * d + c]) * scale *
                   tof(k[(slot * kvh + h / group) * d + c]);
          sc.push_back(dot);
          m = std::max(m, dot);
        }
        if (!sinks.empty()) m = std::max(m, sinks[h]);
        float sum = sinks.empty() ? 0.f : std::exp(sinks[h] - m);
        for (auto& x : sc) sum += (x = std::exp(x - m));
        for (int c = 0; c < d; ++c) {
          float acc = 0;
          for (int p = lo; p <= pos; ++p) {
            const size_t slot = size_t(s.table[p / bs]) * bs + p % bs;
            acc += sc[p - lo] / sum * tof(v[(slot * kvh + h / group) * d + c]);
          }
          out[(size_t(row) * heads + h) * d + c] = tof(fromf<T>(acc));
        }
      }
    }
  }
  return out;
}

#define ATTN_KERNELS(T, NAME, D) \
  if constexpr (std::is_same_v<T, Elem>) if (d == D) { attn = paged_attention_##NAME##_d##D; attn8 = paged_attention_##NAME##_fp8_d##D; reduce = attn_reduce_##NAME##_d##D; }

// ---------------------------------------------------------------- FP8 e4m3, independently
// The value of an e4m3fn byte from its fields (NaN for 0x7f / 0xff).
static float e4m3_value(uint8_t b) {
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  const float mag = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.f + m / 8.f, e - 7);
  return (b & 0x80) ? -mag : mag;
}

// The nearest finite e4m3 byte by search (ties to the even mantissa), after clamping to 448.
static uint8_t e4m3_nearest(float x) {
  const float c = std::fmin(std::fabs(x), 448.f);
  int best = 0;
  for (int b = 1; b < 0x7f; ++b) {
    const float d = std::fabs(e4m3_value(b) - c), db = std::fabs(e4m3_value(best) - c);
    if (d < db || (d == db && (b & 1) == 0)) best = b;
  }
  return uint8_t(best | (std::signbit(x) ? 0x80 : 0));
}

static void check_fp8_conversions() {
  bool ok = true;
  for (int b = 0; b < 256; ++b) {
    const float want = e4m3_value(uint8_t(b)), got = flare::fp8_e4m3_to_float(uint8_t(b));
    if (!(std::isnan(want) ? std::isnan(got) : want == got && std::signbit(want) == std::signbit(got))) ok = false;
  }
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> xs = {0.f, -0.f, 448.f, 464.f, 1e6f, -1e6f, 0.0009765625f, 0.0029296875f,
                           1.0625f, 1.1875f, 0.0146484375f, 0.0152587890625f, 240.f, 232.f};
  for (int i = 0; i < 20000; ++i) xs.push_back(nd(rng) * std::ldexp(1.f, int(i % 24) - 12));
  for (float x : xs)
    if (flare::float_to_fp8_e4m3(x) != e4m3_nearest(x)) {
      if (ok) std::printf("     e4m3(%g): kernel %#x, search %#x\n", x, flare::float_to_fp8_e4m3(x), e4m3_nearest(x));
      ok = false;
    }
  if (flare::float_to_fp8_e4m3(NAN) != 0x7f) ok = false;
  if (!ok) failures++;
  std::printf("%s fp8 e4m3 decode (256 bytes) and encode (%zu values) vs search\n", ok ? "ok  " : "FAIL", xs.size());
}

template <typename Elem>
static void check_attention(int heads, int kvh, int d, const std::vector<std::pair<int, int>>& lens,
                            int window, bool with_sinks = false, bool fp8 = false) {
  using AttnFn = void (*)(const Elem*, const Elem*, const Elem*, const uint32_t*, const uint4*,
                          Elem*, float*, float*, const float*, int, int, int, int, int, int, int,
                          float, float);
  using Attn8Fn = void (*)(const Elem*, const uint8_t*, const uint8_t*, const uint32_t*,
                           const uint4*, Elem*, float*, float*, const float*, int, int, int, int,
                           int, int, int, float, float);
  Attn8Fn attn8 = nullptr;
  using ReduceFn = void (*)(const float*, const float*, const float*, Elem*, int, int, int);
  AttnFn attn = nullptr;
  ReduceFn reduce = nullptr;
  ATTN_KERNELS(__nv_bfloat16, bf16, 64)
  ATTN_KERNELS(__nv_bfloat16, bf16, 128)
  ATTN_KERNELS(__nv_bfloat16, bf16, 256)
  ATTN_KERNELS(__half, f16, 64)
  ATTN_KERNELS(__half, f16, 128)
  ATTN_KERNELS(__half, f16, 256)
  ATTN_KERNELS(float, f32, 64)
  ATTN_KERNELS(float, f32, 128)
  if (!attn) return;
  const int bs = 16, num_blocks = 192;
  std::vector<uint32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<Seq> seqs;
  int tokens = 0, max_ctx = 0;
  for (auto [cached, n] : lens) {
    Seq s{tokens, n, cached + n, {}};
    for (int b = 0; b < (s.context_len + bs - 1) / bs; ++b) {
      s.table.push_back(pool.back());
      pool.pop_back();
    }
    tokens += n;
    max_ctx = std::max(max_ctx, s.context_len);
    seqs.push_back(s);
  }
  auto q = randn<Elem>(size_t(tokens) * heads * d);
  auto k = randn<Elem>(size_t(num_blocks) * bs * kvh * d);
  auto v = randn<Elem>(size_t(num_blocks) * bs * kvh * d);
  const float scale = 1.f / std::sqrt(float(d));
  std::vector<float> sinks;
  if (with_sinks) {
    std::normal_distribution<float> nd(0.f, 2.f);
    for (int h = 0; h < heads; ++h) sinks.push_back(nd(rng));
  }
  const float* sinks_p = with_sinks ? sinks.data() : nullptr;
  // FP8: the cache holds e4m3(x / s) (k spread so some saturate at 448); the reference reads
  // the bytes' values times the scales.
  const float k_scale = 0.011f, v_scale = 0.37f;
  std::vector<uint8_t> k8, v8;
  std::vector<float> kf, vf;
  for (auto& x : k) k8.push_back(e4m3_nearest(tof(x) / k_scale)), kf.push_back(e4m3_value(k8.back()) * k_scale);
  for (auto& x : v) v8.push_back(e4m3_nearest(tof(x) / v_scale)), vf.push_back(e4m3_value(v8.back()) * v_scale);
  auto want = fp8 ? attention_reference(q, kf, vf, seqs, heads, kvh, d, bs, window, scale, sinks)
                  : attention_reference(q, k, v, seqs, heads, kvh, d, bs, window, scale, sinks);

  // Host plan, as src/ops/paged_attention.rs makes it.
  const int group = heads / kvh;
  const int per_item = std::max(1, (d == 256 ? 8 : 16) / group);
  size_t max_blocks = 1;
  for (auto& s : seqs) max_blocks = std::max(max_blocks, s.table.size());
  std::vector<uint32_t> tables(seqs.size() * max_blocks, 0);
  std::vector<uint4> items;
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::copy(seqs[i].table.begin(), seqs[i].table.end(), tables.begin() + i * max_blocks);
    const int first = seqs[i].context_len - seqs[i].query_len;
    for (int off = 0; off < seqs[i].query_len; off += per_item)
      items.push_back({unsigned(seqs[i].query_start + off),
                       unsigned(std::min(per_item, seqs[i].query_len - off)),
                       unsigned(first + off), unsigned(i)});
  }
  const int base = int(items.size()) * kvh, target = 2 * 132;
  int splits = base >= target ? 1 : std::max(1, std::min((target + base - 1) / base, (max_ctx + 63) / 64));
  const int part_len = ((max_ctx + splits - 1) / splits + 31) / 32 * 32;
  splits = (max_ctx + part_len - 1) / part_len;

  std::vector<Elem> out(size_t(tokens) * heads * d);
  poison(out);
  std::vector<float> part_o, part_ml;
  if (splits > 1) {
    part_o.resize(size_t(splits) * tokens * heads * d);
    part_ml.resize(size_t(splits) * tokens * heads * 2);
    poison(part_o);
    poison(part_ml);
  }
  emu::launch({unsigned(items.size()), unsigned(kvh), unsigned(splits)}, {128, 1, 1}, [&] {
    float* po = splits > 1 ? part_o.data() : nullptr;
    float* pml = splits > 1 ? part_ml.data() : nullptr;
    if (fp8)
      attn8(q.data(), k8.data(), v8.data(), tables.data(), items.data(), out.data(), po, pml,
            sinks_p, tokens, heads, kvh, int(max_blocks), bs, window, part_len,
            scale * k_scale * 1.4426950408889634f, v_scale);
    else
      attn(q.data(), k.data(), v.data(), tables.data(), items.data(), out.data(), po, pml, sinks_p,
           tokens, heads, kvh, int(max_blocks), bs, window, part_len, scale * 1.4426950408889634f,
           1.f);
  });
  if (splits > 1)
    emu::launch({unsigned(tokens * heads), 1, 1}, {unsigned(d), 1, 1}, [&] {
      reduce(part_o.data(), part_ml.data(), sinks_p, out.data(), tokens * heads, heads, splits);
    });
  char what[160];
  std::snprintf(what, sizeof what, "paged_attention %s%s h%d/%d d%d %zu seqs %d tokens window %d splits %d%s",
                tname<Elem>(), fp8 ? " fp8-kv" : "", heads, kvh, d, seqs.size(), tokens, window, splits,
                with_sinks ? " sinks" : "");
  check(out, want, what);
}


// ---------------------------------------------------------------- fused mixture of experts
struct Routing {
  bool sigmoid = false;
  int n_group = 0, topk_group = 0;
  bool group_by_best = false, norm = true, correction = false;
  float scaling = 1.f;
};

// Indices of the k largest, best first, ties to the lower index (as ops::moe::top_indices).
static std::vector<int> top_indices(const std::vector<float>& v, int k) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  order.resize(k);
  return order;
}

static void route_reference(const float* l, int experts, int top_k, const Routing& r,
                            const std::vector<float>& corr, std::vector<int>& ids,
                            std::vector<float>& w) {
  std::vector<float> scores(experts);
  if (r.sigmoid) {
    for (int i = 0; i < experts; ++i) scores[i] = 1.f / (1.f + std::exp(-l[i]));
  } else {
    float mx = -INFINITY, sum = 0;
    for (int i = 0; i < experts; ++i) mx = std::max(mx, l[i]);
    for (int i = 0; i < experts; ++i) sum += std::exp(l[i] - mx);
    for (int i = 0; i < experts; ++i) scores[i] = std::exp(l[i] - mx) / sum;
  }
  std::vector<float> choice = scores;
  if (r.correction)
    for (int i = 0; i < experts; ++i) choice[i] += corr[i];
  if (r.n_group > 0) {
    const int per = experts / r.n_group;
    std::vector<float> gs;
    for (int g = 0; g < r.n_group; ++g) {
      std::vector<float> part(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      float s = 0;
      for (int i : top_indices(part, r.group_by_best ? 1 : std::min(2, per))) s += part[i];
      gs.push_back(s);
    }
    const auto keep = top_indices(gs, r.topk_group);
    for (int i = 0; i < experts; ++i)
      if (std::find(keep.begin(), keep.end(), i / per) == keep.end()) choice[i] = -INFINITY;
  }
  ids = top_indices(choice, top_k);
  float sum = 0;
  for (int e : ids) sum += scores[e];
  w.clear();
  for (int e : ids) w.push_back((r.norm ? scores[e] / (sum + 1e-20f) : scores[e]) * r.scaling);
}

static float act_reference(float g, float u, int act) {
  if (act == 0) return g / (1 + std::exp(-g)) * u;
  if (act == 1) return 0.5f * g * (1 + std::tanh(0.7978845608028654f * (g + 0.044715f * g * g * g))) * u;
  g = std::min(g, 7.f);
  u = std::min(std::max(u, -7.f), 7.f);
  return (u + 1) * (g / (1 + std::exp(-g * 1.702f)));
}

template <typename T>
static void check_moe(int tokens, int experts, int top_k, int hidden, int inter, int act,
                      const Routing& r, bool biases, const char* what) {
  const int n = tokens * top_k;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> logits(size_t(tokens) * experts), corr(experts);
  for (auto& x : logits) x = 2 * nd(rng);
  for (auto& x : corr) x = 0.3f * nd(rng);
  auto x = randn<T>(size_t(tokens) * hidden);
  auto gu = randn<T>(size_t(experts) * 2 * inter * hidden);
  auto down = randn<T>(size_t(experts) * hidden * inter);
  // Scale weights as a model's are (keeps activations O(1)).
  for (auto& v : gu) v = fromf<T>(tof(v) / std::sqrt(float(hidden)));
  for (auto& v : down) v = fromf<T>(tof(v) / std::sqrt(float(inter)));
  std::vector<float> gub, db;
  if (biases) {
    for (int i = 0; i < experts * 2 * inter; ++i) gub.push_back(0.5f * nd(rng));
    for (int i = 0; i < experts * hidden; ++i) db.push_back(0.5f * nd(rng));
  }
  const float* gub_p = biases ? gub.data() : nullptr;
  const float* db_p = biases ? db.data() : nullptr;

  // Routing.
  std::vector<uint32_t> ids(n);
  std::vector<float> w(n);
  poison(ids), poison(w);
  emu::launch({unsigned((tokens + 63) / 64), 1, 1}, {64, 1, 1}, [&] {
    moe_route(logits.data(), r.correction ? corr.data() : nullptr, ids.data(), w.data(), tokens,
              experts, top_k, r.sigmoid, r.n_group, r.topk_group, r.group_by_best, r.norm, r.scaling);
  });
  std::vector<float> want_w(n);
  bool ids_ok = true;
  std::vector<std::vector<int>> ref_ids(tokens);
  for (int t = 0; t < tokens; ++t) {
    std::vector<float> wt;
    route_reference(&logits[size_t(t) * experts], experts, top_k, r, corr, ref_ids[t], wt);
    for (int s = 0; s < top_k; ++s) {
      want_w[t * top_k + s] = wt[s];
      ids_ok &= ids[t * top_k + s] == uint32_t(ref_ids[t][s]);
    }
  }
  if (!ids_ok) failures++;
  std::printf("%s moe_route %s: expert ids\n", ids_ok ? "ok  " : "FAIL", what);
  check(w, want_w, std::string("moe_route weights ") + what);

  // Permutation.
  const int max_tiles = (n + MOE_BM - 1) / MOE_BM + std::min(experts, n);
  std::vector<uint32_t> sorted(n), pos(n), offsets(experts + 1), tiles(2 * max_tiles);
  poison(sorted), poison(pos), poison(offsets), poison(tiles);
  emu::launch({1, 1, 1}, {256, 1, 1}, [&] {
    moe_align(ids.data(), n, experts, sorted.data(), pos.data(), offsets.data(), tiles.data(), max_tiles);
  });
  bool perm_ok = offsets[0] == 0 && offsets[experts] == uint32_t(n);
  std::vector<uint32_t> want_sorted;
  for (int e = 0; e < experts; ++e) {
    for (int a = 0; a < n; ++a)
      if (ids[a] == uint32_t(e)) want_sorted.push_back(a);
    perm_ok &= offsets[e + 1] == want_sorted.size();
  }
  for (int i = 0; i < n; ++i) perm_ok &= sorted[i] == want_sorted[i] && pos[sorted[i]] == uint32_t(i);
  int tile = 0;
  for (int e = 0; e < experts; ++e)
    for (uint32_t row = offsets[e]; row < offsets[e + 1]; row += MOE_BM, ++tile)
      perm_ok &= tiles[2 * tile] == uint32_t(e) && tiles[2 * tile + 1] == row;
  for (; tile < max_tiles; ++tile) perm_ok &= tiles[2 * tile] == NO_TILE;
  if (!perm_ok) failures++;
  std::printf("%s moe_align %s: %d rows, %d tiles max\n", perm_ok ? "ok  " : "FAIL", what, n, max_tiles);

  // Grouped GEMMs and the weighted un-permute.
  std::vector<T> h(size_t(n) * inter), y(size_t(n) * hidden), out(size_t(tokens) * hidden);
  poison(h), poison(y), poison(out);
  void (*fu)(const T*, const T*, const float*, const uint32_t*, const uint32_t*, const uint32_t*, T*,
             int, int, int, int, float, float) = nullptr;
  void (*fd)(const T*, const T*, const float*, const uint32_t*, const uint32_t*, T*, int, int) = nullptr;
  void (*fc)(const T*, const float*, const uint32_t*, T*, int, int, int) = nullptr;
  if constexpr (std::is_same_v<T, float>) fu = moe_gate_up_f32, fd = moe_down_f32, fc = moe_combine_f32;
  if constexpr (std::is_same_v<T, __half>) fu = moe_gate_up_f16, fd = moe_down_f16, fc = moe_combine_f16;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) fu = moe_gate_up_bf16, fd = moe_down_bf16, fc = moe_combine_bf16;
  emu::launch({unsigned(max_tiles), unsigned((inter + MOE_BN - 1) / MOE_BN), 1}, {MOE_THREADS, 1, 1}, [&] {
    fu(x.data(), gu.data(), gub_p, sorted.data(), offsets.data(), tiles.data(), h.data(), hidden, inter,
       top_k, act, 1.702f, 7.f);
  });
  emu::launch({unsigned(max_tiles), unsigned((hidden + 2 * MOE_BN - 1) / (2 * MOE_BN)), 1}, {MOE_THREADS, 1, 1}, [&] {
    fd(h.data(), down.data(), db_p, offsets.data(), tiles.data(), y.data(), hidden, inter);
  });
  emu::launch({2, 1, 1}, {128, 1, 1}, [&] { fc(y.data(), w.data(), pos.data(), out.data(), tokens, hidden, top_k); });

  std::vector<float> want(size_t(tokens) * hidden, 0.f), hrow(inter);
  for (int t = 0; t < tokens; ++t)
    for (int s = 0; s < top_k; ++s) {
      const int e = ref_ids[t][s];
      for (int j = 0; j < inter; ++j) {
        float g = 0, u = 0;
        for (int c = 0; c < hidden; ++c) {
          const float xv = tof(x[size_t(t) * hidden + c]);
          g += xv * tof(gu[(size_t(e) * 2 * inter + j) * hidden + c]);
          u += xv * tof(gu[(size_t(e) * 2 * inter + inter + j) * hidden + c]);
        }
        if (biases) g += gub[e * 2 * inter + j], u += gub[e * 2 * inter + inter + j];
        hrow[j] = tof(fromf<T>(act_reference(g, u, act)));
      }
      for (int c = 0; c < hidden; ++c) {
        float v = 0;
        for (int j = 0; j < inter; ++j) v += hrow[j] * tof(down[(size_t(e) * hidden + c) * inter + j]);
        if (biases) v += db[e * hidden + c];
        want[size_t(t) * hidden + c] += want_w[t * top_k + s] * tof(fromf<T>(v));
      }
    }
  check(out, want, std::string("fused moe ") + tname<T>() + " " + what);
}

// ---------------------------------------------------------------- the small kernels
template <typename T> static void check_small() {
  const char* tn = tname<T>();
  {  // silu_mul
    const int n = 1000;
    auto g = randn<T>(n), u = randn<T>(n);
    std::vector<T> out(n);
    poison(out);
    std::vector<float> want(n);
    for (int i = 0; i < n; ++i) {
      const float x = tof(g[i]);
      want[i] = x / (1 + std::exp(-x)) * tof(u[i]);
    }
    void (*f)(const T*, const T*, T*, int64_t) = nullptr;
    if constexpr (std::is_same_v<T, float>) f = silu_mul_f32;
    if constexpr (std::is_same_v<T, __half>) f = silu_mul_f16;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) f = silu_mul_bf16;
    emu::launch({2, 1, 1}, {256, 1, 1}, [&] { f(g.data(), u.data(), out.data(), n); });
    check(out, want, std::string("silu_mul ") + tn);
  }
  for (int n : {576, 100, 4096}) {  // add_rms_norm and rms_norm
    const int rows = 3;
    auto x = randn<T>(rows * n), r = randn<T>(rows * n), w = randn<T>(n);
    std::vector<T> sum(rows * n), norm(rows * n), plain(rows * n);
    poison(sum), poison(norm), poison(plain);
    std::vector<float> want_sum(rows * n), want_norm(rows * n), want_plain(rows * n);
    for (int i = 0; i < rows; ++i) {
      float sq = 0, sqp = 0;
      for (int c = 0; c < n; ++c) {
        const float s = tof(fromf<T>(tof(x[i * n + c]) + tof(r[i * n + c])));
        want_sum[i * n + c] = s;
        sq += s * s;
        sqp += tof(x[i * n + c]) * tof(x[i * n + c]);
      }
      for (int c = 0; c < n; ++c) {
        want_norm[i * n + c] = want_sum[i * n + c] / std::sqrt(sq / n + 1e-5f) * tof(w[c]);
        want_plain[i * n + c] = tof(x[i * n + c]) / std::sqrt(sqp / n + 1e-5f) * tof(w[c]);
      }
    }
    void (*fa)(const T*, const T*, const T*, T*, T*, int, float) = nullptr;
    void (*fp)(const T*, const T*, T*, int, float) = nullptr;
    if constexpr (std::is_same_v<T, float>) fa = add_rms_norm_f32, fp = rms_norm_f32;
    if constexpr (std::is_same_v<T, __half>) fa = add_rms_norm_f16, fp = rms_norm_f16;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) fa = add_rms_norm_bf16, fp = rms_norm_bf16;
    const unsigned threads = n >= 4096 ? 1024 : std::min(1024, (n + 31) / 32 * 32);
    emu::launch({rows, 1, 1}, {threads, 1, 1}, [&] {
      fa(x.data(), r.data(), w.data(), sum.data(), norm.data(), n, 1e-5f);
    });
    emu::launch({rows, 1, 1}, {threads, 1, 1}, [&] { fp(x.data(), w.data(), plain.data(), n, 1e-5f); });
    check(sum, want_sum, std::string("add_rms_norm sum ") + tn + " n" + std::to_string(n));
    check(norm, want_norm, std::string("add_rms_norm norm ") + tn + " n" + std::to_string(n));
    check(plain, want_plain, std::string("rms_norm ") + tn + " n" + std::to_string(n));
  }
  for (int inter = 0; inter < 2; ++inter) {  // rotary
    const int t = 5, h = 3, d = 64;
    auto x = randn<T>(t * h * d);
    std::vector<uint32_t> pos = {0, 7, 100, 4095, 131071};
    std::vector<float> inv(d / 2);
    for (int i = 0; i < d / 2; ++i) inv[i] = 1.f / std::pow(500000.f, 2.f * i / d);
    std::vector<float> want(t * h * d);
    for (int i = 0; i < t * h * d; ++i) want[i] = tof(x[i]);
    for (int tok = 0; tok < t; ++tok)
      for (int hh = 0; hh < h; ++hh)
        for (int i = 0; i < d / 2; ++i) {
          const float a = float(pos[tok]) * inv[i];
          const float c = std::cos(a), s = std::sin(a);
          float* b = &want[(tok * h + hh) * d];
          const int i1 = inter ? 2 * i : i, i2 = inter ? 2 * i + 1 : i + d / 2;
          const float u = b[i1], w = b[i2];
          b[i1] = u * c - w * s;
          b[i2] = w * c + u * s;
        }
    void (*f)(T*, const uint32_t*, const float*, int, int, float, int) = nullptr;
    if constexpr (std::is_same_v<T, float>) f = rotary_f32;
    if constexpr (std::is_same_v<T, __half>) f = rotary_f16;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) f = rotary_bf16;
    emu::launch({t, 1, 1}, {96, 1, 1}, [&] { f(x.data(), pos.data(), inv.data(), h, d, 1.f, inter); });
    check(x, want, std::string("rotary ") + tn + (inter ? " interleaved" : " neox"));
  }
  {  // reshape_and_cache: mapped rows copied exactly, the rest untouched (NaN)
    const int t = 9, row = 4 * 64, slots = 64;
    auto src = randn<T>(t * row);
    std::vector<T> cache(slots * row);
    poison(cache);
    std::vector<uint32_t> map = {3, 60, 0xffffffffu, 17, 5, 6, 7, 0xffffffffu, 33};
    void (*f)(const T*, T*, const uint32_t*, int) = nullptr;
    if constexpr (std::is_same_v<T, float>) f = reshape_and_cache_f32;
    if constexpr (std::is_same_v<T, __half>) f = reshape_and_cache_f16;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) f = reshape_and_cache_bf16;
    emu::launch({t, 1, 1}, {128, 1, 1}, [&] { f(src.data(), cache.data(), map.data(), row); });
    bool ok = true;
    for (int s = 0; s < slots; ++s) {
      const auto it = std::find(map.begin(), map.end(), uint32_t(s));
      for (int c = 0; c < row; ++c) {
        const float got = tof(cache[s * row + c]);
        if (it == map.end() ? !std::isnan(got) : got != tof(src[(it - map.begin()) * row + c])) ok = false;
      }
    }
    if (!ok) failures++;
    std::printf("%s reshape_and_cache %s\n", ok ? "ok  " : "FAIL", tn);
  }
  {  // reshape_and_cache_fp8: mapped rows as e4m3(x * inv_scale) bytes, the rest untouched
    const int t = 9, row = 4 * 64, slots = 64;
    const float inv = 1.f / 0.013f;
    auto src = randn<T>(t * row);
    std::vector<uint8_t> cache(slots * row, 0xa5);
    std::vector<uint32_t> map = {3, 60, 0xffffffffu, 17, 5, 6, 7, 0xffffffffu, 33};
    void (*f)(const T*, uint8_t*, const uint32_t*, int, float) = nullptr;
    if constexpr (std::is_same_v<T, float>) f = reshape_and_cache_fp8_f32;
    if constexpr (std::is_same_v<T, __half>) f = reshape_and_cache_fp8_f16;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) f = reshape_and_cache_fp8_bf16;
    emu::launch({t, 1, 1}, {128, 1, 1}, [&] { f(src.data(), cache.data(), map.data(), row, inv); });
    bool ok = true;
    for (int s = 0; s < slots; ++s) {
      const auto it = std::find(map.begin(), map.end(), uint32_t(s));
      for (int c = 0; c < row; ++c) {
        const uint8_t got = cache[s * row + c];
        const uint8_t want = it == map.end() ? 0xa5 : e4m3_nearest(tof(src[(it - map.begin()) * row + c]) * inv);
        if (got != want) ok = false;
      }
    }
    if (!ok) failures++;
    std::printf("%s reshape_and_cache_fp8 %s\n", ok ? "ok  " : "FAIL", tn);
  }
  {  // argmax: ties to the lowest id, NaN never wins
    const int vocab = 5000, rows = 3;
    auto x = randn<T>(rows * vocab);
    x[17] = fromf<T>(9.f), x[900] = fromf<T>(9.f);
    x[vocab + 3] = fromf<T>(NAN), x[vocab + 4000] = fromf<T>(9.f);
    std::vector<uint32_t> out(rows, 0xdeadbeef);
    void (*f)(const T*, uint32_t*, int) = nullptr;
    if constexpr (std::is_same_v<T, float>) f = argmax_f32;
    if constexpr (std::is_same_v<T, __half>) f = argmax_f16;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) f = argmax_bf16;
    emu::launch({rows, 1, 1}, {1024, 1, 1}, [&] { f(x.data(), out.data(), vocab); });
    uint32_t best2 = 0;
    for (int i = 1; i < vocab; ++i)
      if (tof(x[2 * vocab + i]) > tof(x[2 * vocab + best2])) best2 = i;
    const bool ok = out[0] == 17 && out[1] == 4000 && out[2] == best2;
    if (!ok) failures++;
    std::printf("%s argmax %s: %u %u %u\n", ok ? "ok  " : "FAIL", tn, out[0], out[1], out[2]);
  }
}


// ---- batched sampling: a sort-based reference of sample_rows (the kernel bisects instead)
struct SampleParams {
  float temperature;
  uint32_t top_k;
  float top_p, min_p;
  uint64_t seed, position;
};

static uint32_t argmax_reference(const float* x, int vocab) {
  uint32_t best = 0;
  float bv = -INFINITY;
  for (int i = 0; i < vocab; ++i)
    if (x[i] > bv) bv = x[i], best = i;
  return best;
}

// Also returns, through `margin`, how close the draw's target came to a CDF boundary
// (relative), so that a mismatch caused only by summation order can be told apart.
static uint32_t sample_reference(const float* x, int vocab, const SampleParams& p, double* margin) {
  *margin = 1.0;
  float m = -INFINITY;
  for (int i = 0; i < vocab; ++i) m = std::fmax(m, x[i]);
  if (!(p.temperature > 0.f) || !std::isfinite(m)) return argmax_reference(x, vocab);
  const float scale = std::fmin(1.f / p.temperature, 3.402823466e38f);
  std::vector<float> sorted;
  for (int i = 0; i < vocab; ++i)
    if (x[i] > -INFINITY) sorted.push_back(x[i]);
  std::sort(sorted.rbegin(), sorted.rend());
  float min_logit = -INFINITY;
  if (p.top_k > 0 && p.top_k < sorted.size()) min_logit = sorted[p.top_k - 1];
  std::vector<float> w(vocab);
  for (int i = 0; i < vocab; ++i) w[i] = x[i] >= min_logit ? std::exp((x[i] - m) * scale) : 0.f;
  float min_w = 0.f;
  if (p.top_p < 1.f) {
    double total = 0;
    for (float v : w) total += v;
    std::vector<float> ws(w);
    std::sort(ws.rbegin(), ws.rend());
    const double target = ((double)p.top_p - 1e-6) * total;
    double cum = 0;
    for (float v : ws) {
      cum += v;
      min_w = v;
      if (cum >= target) break;
    }
  }
  if (p.min_p > 0.f) min_w = std::fmax(min_w, std::fmin(p.min_p, 1.f));
  double total = 0;
  for (float v : w)
    if (v > 0.f && v >= min_w) total += v;
  const double target = philox_uniform(p.seed, p.position) * total;
  double cum = 0;
  uint32_t last = 0;
  for (int i = 0; i < vocab; ++i)
    if (w[i] > 0.f && w[i] >= min_w) {
      last = i;
      const double before = cum;
      cum += w[i];
      *margin = std::min(*margin, std::fabs(before - target) / total);
      if (cum > target) {
        *margin = std::min(*margin, std::fabs(cum - target) / total);
        return i;
      }
    }
  return last;
}

static void check_sampling() {
  {  // Philox4x32-10: Random123's known answers
    uint32_t c[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
    philox4x32_10(c, 0xa4093822, 0x299f31d0);
    const bool ok = c[0] == 0xd16cfe09 && c[1] == 0x94fdcceb && c[2] == 0x5001e420 && c[3] == 0x24126ea1;
    if (!ok) failures++;
    std::printf("%s philox4x32_10 known answer\n", ok ? "ok  " : "FAIL");
  }
  const int vocab = 1000;
  const SampleParams kinds[] = {
      {0.f, 0, 1.f, 0.f, 1, 0},        // greedy
      {1.f, 0, 1.f, 0.f, 2, 0},        // plain temperature
      {0.6f, 7, 1.f, 0.f, 3, 0},       // top-k
      {1.3f, 0, 0.8f, 0.f, 4, 0},      // top-p
      {1.f, 0, 1.f, 0.2f, 5, 0},       // min-p
      {0.9f, 40, 0.9f, 0.05f, 6, 0},   // all three
      {1.f, 3, 1.f, 0.f, 7, 0},        // top-k on a row with ties and -inf
      {1.f, 0, 0.5f, 0.f, 8, 0},       // all -inf but one NaN: argmax
  };
  const int rows = sizeof(kinds) / sizeof(kinds[0]);
  auto x = randn<float>(rows * vocab);
  for (int i = 0; i < vocab; ++i) x[i] *= 3.f;  // sharper rows
  for (int i = 0; i < vocab; ++i) x[6 * vocab + i] = i % 3 ? -INFINITY : float(i % 4);
  for (int i = 0; i < vocab; ++i) x[7 * vocab + i] = i == 5 ? NAN : -INFINITY;
  int mismatches = 0, close_calls = 0, launches = 0;
  bool batch_ok = true;
  for (uint64_t pos = 0; pos < 24; ++pos) {
    std::vector<uint32_t> params(rows * 8);
    for (int r = 0; r < rows; ++r) {
      const SampleParams& k = kinds[r];
      uint32_t* q = &params[r * 8];
      std::memcpy(&q[0], &k.temperature, 4);
      q[1] = k.top_k;
      std::memcpy(&q[2], &k.top_p, 4);
      std::memcpy(&q[3], &k.min_p, 4);
      q[4] = uint32_t(k.seed), q[5] = uint32_t(k.seed >> 32);
      q[6] = uint32_t(pos + 100 * r), q[7] = 0;
    }
    std::vector<uint32_t> out(rows, 0xdeadbeef);
    emu::launch({unsigned(rows), 1, 1}, {SAMPLE_THREADS, 1, 1},
                [&] { sample_rows_f32(x.data(), params.data(), vocab, out.data()); });
    launches++;
    for (int r = 0; r < rows; ++r) {
      const SampleParams& k = kinds[r];
      double margin;
      const uint32_t want = sample_reference(&x[r * vocab], vocab, {k.temperature, k.top_k, k.top_p, k.min_p, k.seed, pos + 100 * r}, &margin);
      if (out[r] != want) {
        if (margin < 1e-9) close_calls++;
        else {
          mismatches++;
          std::printf("  row %d pos %llu: kernel %u, reference %u\n", r, (unsigned long long)pos, out[r], want);
        }
      }
    }
    if (pos % 8 == 3) {  // the same row alone: the same token
      for (int r = 1; r < rows; r += 2) {
        uint32_t alone = 0xdeadbeef;
        emu::launch({1, 1, 1}, {SAMPLE_THREADS, 1, 1},
                    [&] { sample_rows_f32(&x[r * vocab], &params[r * 8], vocab, &alone); });
        if (alone != out[r]) batch_ok = false;
      }
    }
  }
  if (mismatches || !batch_ok) failures++;
  std::printf("%s sample_rows: %d launches x %d rows, %d mismatches, %d at a CDF boundary, batch-invariant %s\n",
              mismatches || !batch_ok ? "FAIL" : "ok  ", launches, rows, mismatches, close_calls,
              batch_ok ? "yes" : "NO");
  {  // adjust_logits: bias, mask, repetition on both signs, frequency/presence, out-of-vocab ids
    const int v = 50;
    auto l = randn<float>(2 * v);
    auto want = l;
    auto f = [](float a) { uint32_t u; std::memcpy(&u, &a, 4); return u; };
    std::vector<uint32_t> e = {
        0, 3, 0, f(1.5f), f(1.f), f(0.f),      // bias only
        0, 4, 1, f(0.f), f(1.f), f(0.f),       // masked
        1, 7, 0, f(0.f), f(1.3f), f(0.f),      // repetition
        1, 8, 0, f(-0.5f), f(2.f), f(0.7f),    // bias, repetition and frequency/presence
        1, 99, 0, f(5.f), f(1.f), f(0.f),      // out of the vocabulary: ignored
    };
    auto rep = [](float x, float r) { return x > 0 ? x / r : x * r; };
    want[3] += 1.5f;
    want[4] = -INFINITY;
    want[v + 7] = rep(want[v + 7], 1.3f);
    want[v + 8] = rep(want[v + 8] - 0.5f, 2.f) - 0.7f;
    emu::launch({1, 1, 1}, {128, 1, 1}, [&] { adjust_logits_f32(l.data(), e.data(), 5, v); });
    const bool ok = std::memcmp(l.data(), want.data(), l.size() * 4) == 0;
    if (!ok) failures++;
    std::printf("%s adjust_logits\n", ok ? "ok  " : "FAIL");
  }
}

// ---------------------------------------------------------------- quantized GEMMs
// e4m3 by brute force: the nearest of the 253 finite values, ties to the even mantissa,
// saturating (what src/quant/fp8.rs::round_e4m3 computes).
static uint8_t e4m3_reference(float v) {
  if (std::isnan(v)) return 0x7f;
  const uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const float a = std::min(std::fabs(v), 448.f);
  int best = 0;
  for (int b = 1; b <= 0x7e; ++b) {
    const float d = std::fabs(flare::e4m3_to_f32(uint8_t(b)) - a);
    const float db = std::fabs(flare::e4m3_to_f32(uint8_t(best)) - a);
    if (d < db || (d == db && (b & 1) == 0 && (best & 1) == 1)) best = b;
  }
  return sign | uint8_t(best);
}

static void check_e4m3_rounding() {
  std::vector<float> vs = {0.f, -0.f, 1.0625f, 1.1875f, 447.f, 448.f, 460.f, 1e9f, 0.001953125f,
                           0.0009765625f, 0.0029296875f, 0.015625f, 0.0146484375f, 1e-12f};
  // Every grid value and every midpoint between neighbours, and random values.
  for (int b = 0; b < 0x7e; ++b) {
    const float x = flare::e4m3_to_f32(uint8_t(b)), y = flare::e4m3_to_f32(uint8_t(b + 1));
    vs.push_back(x), vs.push_back((x + y) / 2), vs.push_back(std::nextafter((x + y) / 2, 0.f));
    vs.push_back(std::nextafter((x + y) / 2, 1e9f));
  }
  std::normal_distribution<float> d(0.f, 30.f);
  for (int i = 0; i < 20000; ++i) vs.push_back(d(rng) * (i % 3 == 0 ? 0.001f : 1.f));
  int bad = 0;
  for (float v : vs)
    for (float s : {1.f, -1.f}) {
      const uint8_t got = flare::f32_to_e4m3(v * s), want = e4m3_reference(v * s);
      if (got != want && !(flare::e4m3_to_f32(got) == 0 && flare::e4m3_to_f32(want) == 0)) {
        if (bad++ < 5) std::printf("  e4m3(%g): got %#x want %#x\n", v * s, got, want);
      }
    }
  if (bad) failures++;
  std::printf("%s f32_to_e4m3: %d of %zu values off\n", bad ? "FAIL" : "ok  ", bad, vs.size() * 2);
}

template <typename T> static void check_fp8_quant_act(int M, int K, int gx, float static_scale) {
  auto x = randn<T>(size_t(M) * K);
  if (M > 1) for (int k = 0; k < K; ++k) x[k] = fromf<T>(0.f);  // an all-zero row: scale 0
  std::vector<uint8_t> q(size_t(M) * K);
  std::vector<float> sc(size_t(M) * (K / gx));
  poison(q), poison(sc);
  void (*f)(const T*, uint8_t*, float*, int, int, float) = nullptr;
  if constexpr (std::is_same_v<T, float>) f = fp8_quant_act_f32;
  if constexpr (std::is_same_v<T, __half>) f = fp8_quant_act_f16;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) f = fp8_quant_act_bf16;
  emu::launch({unsigned(M), 1, 1}, {256, 1, 1}, [&] { f(x.data(), q.data(), sc.data(), K, gx, static_scale); });
  int bad = 0;
  for (int m = 0; m < M; ++m)
    for (int gi = 0; gi < K / gx; ++gi) {
      float s = static_scale;
      if (s <= 0) {
        float amax = 0;
        for (int i = 0; i < gx; ++i) amax = std::max(amax, std::fabs(tof(x[size_t(m) * K + gi * gx + i])));
        s = amax / 448.f;
      }
      if (std::memcmp(&s, &sc[size_t(m) * (K / gx) + gi], 4) != 0) bad++;
      for (int i = 0; i < gx; ++i) {
        const size_t at = size_t(m) * K + gi * gx + i;
        const uint8_t want = e4m3_reference(s > 0 ? tof(x[at]) / s : 0.f);
        if (q[at] != want && !(flare::e4m3_to_f32(q[at]) == 0 && flare::e4m3_to_f32(want) == 0)) bad++;
      }
    }
  if (bad) failures++;
  std::printf("%s fp8_quant_act %s M=%d K=%d gx=%d static=%g: %d mismatches (exact)\n",
              bad ? "FAIL" : "ok  ", tname<T>(), M, K, gx, static_scale, bad);
}

static std::vector<uint8_t> random_e4m3(size_t n) {
  std::uniform_int_distribution<int> d(0, 255);
  std::vector<uint8_t> v(n);
  for (auto& b : v) {
    do b = uint8_t(d(rng));
    while ((b & 0x7f) == 0x7f);
  }
  return v;
}

static std::vector<float> random_scales(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <typename T> static void check_fp8_gemm(int M, int N, int K, int gx, int gw) {
  auto xq = random_e4m3(size_t(M) * K), wq = random_e4m3(size_t(N) * K);
  auto xs = random_scales(size_t(M) * (K / gx), 0.001f, 0.01f);
  auto ws = random_scales(size_t(N) * (K / gw), 0.001f, 0.01f);
  std::vector<float> want(size_t(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int c = 0; c < K / 32; ++c) {
        double p = 0;
        for (int k = c * 32; k < c * 32 + 32; ++k)
          p += double(flare::e4m3_to_f32(xq[size_t(m) * K + k])) * flare::e4m3_to_f32(wq[size_t(n) * K + k]);
        acc += p * xs[size_t(m) * (K / gx) + c * 32 / gx] * ws[size_t(n) * (K / gw) + c * 32 / gw];
      }
      want[size_t(m) * N + n] = float(acc);
    }
  using F = void (*)(const uint8_t*, const float*, const uint8_t*, const float*, T*, int, int, int, int, int);
  F f16 = nullptr, f64 = nullptr;
  if constexpr (std::is_same_v<T, float>) f16 = fp8_gemm_m16_f32, f64 = fp8_gemm_m64_f32;
  if constexpr (std::is_same_v<T, __half>) f16 = fp8_gemm_m16_f16, f64 = fp8_gemm_m64_f16;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) f16 = fp8_gemm_m16_bf16, f64 = fp8_gemm_m64_bf16;
  const std::string what = std::string("fp8_gemm ") + tname<T>() + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K) + " gx=" +
                           std::to_string(gx) + " gw=" + std::to_string(gw);
  std::vector<T> batch(size_t(M) * N);
  poison(batch);
  emu::launch({unsigned((N + 31) / 32), unsigned((M + 63) / 64), 1}, {256, 1, 1},
              [&] { f64(xq.data(), xs.data(), wq.data(), ws.data(), batch.data(), M, N, K, gx, gw); });
  check(batch, want, what + " (m64 tiles)");
  // Batch invariance: each row alone through the decode tile is bit-identical to the batch.
  int differ = 0;
  for (int m : {0, M / 2, M - 1}) {
    std::vector<T> alone(N);
    poison(alone);
    emu::launch({unsigned((N + 31) / 32), 1, 1}, {256, 1, 1}, [&] {
      f16(xq.data() + size_t(m) * K, xs.data() + size_t(m) * (K / gx), wq.data(), ws.data(),
          alone.data(), 1, N, K, gx, gw);
    });
    differ += std::memcmp(alone.data(), batch.data() + size_t(m) * N, N * sizeof(T)) != 0;
  }
  if (differ) failures++;
  std::printf("%s %s: rows alone (m16) vs in the batch (m64): %d differ (bitwise)\n",
              differ ? "FAIL" : "ok  ", what.c_str(), differ);
}

// Random packed weights of `bits` and (scale, offset) pairs; the reference dequantizes them
// as the kernel's layout says (value k of a row at bits (k % per) * bits of word k / per).
static void check_wint_gemm(int bits, int M, int N, int K, int G) {
  const int per = 32 / bits;
  std::uniform_int_distribution<uint32_t> dw;
  std::vector<uint32_t> qw(size_t(N) * K / per);
  for (auto& w : qw) w = dw(rng);
  auto s = random_scales(size_t(N) * (K / G), 0.005f, 0.02f);
  auto o = random_scales(size_t(N) * (K / G), -0.1f, 0.1f);
  std::vector<float2> sb(s.size());
  for (size_t i = 0; i < s.size(); ++i) sb[i] = {s[i], o[i]};
  auto x = randn<__nv_bfloat16>(size_t(M) * K);
  std::vector<float> want(size_t(M) * N);
  std::vector<float> w(size_t(N) * K);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      const uint32_t q = (qw[(size_t(n) * K + k) / per] >> ((k % per) * bits)) & ((1u << bits) - 1);
      const float2 p = sb[size_t(n) * (K / G) + k / G];
      w[size_t(n) * K + k] = tof(__float2bfloat16_rn(std::fmaf(float(q), p.x, p.y)));
    }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += double(tof(x[size_t(m) * K + k])) * w[size_t(n) * K + k];
      want[size_t(m) * N + n] = float(acc);
    }
  using F = void (*)(const __nv_bfloat16*, const uint32_t*, const float2*, __nv_bfloat16*, int, int, int, int);
  F f16 = bits == 4 ? wint_gemm_w4_m16_bf16 : wint_gemm_w8_m16_bf16;
  F f64 = bits == 4 ? wint_gemm_w4_m64_bf16 : wint_gemm_w8_m64_bf16;
  const std::string what = "wint_gemm w" + std::to_string(bits) + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K) + " G=" + std::to_string(G);
  std::vector<__nv_bfloat16> batch(size_t(M) * N);
  poison(batch);
  emu::launch({unsigned((N + 31) / 32), unsigned((M + 63) / 64), 1}, {256, 1, 1},
              [&] { f64(x.data(), qw.data(), sb.data(), batch.data(), M, N, K, G); });
  check(batch, want, what + " (m64 tiles)");
  int differ = 0;
  for (int m : {0, M / 2, M - 1}) {
    std::vector<__nv_bfloat16> alone(N);
    poison(alone);
    emu::launch({unsigned((N + 31) / 32), 1, 1}, {256, 1, 1}, [&] {
      f16(x.data() + size_t(m) * K, qw.data(), sb.data(), alone.data(), 1, N, K, G);
    });
    differ += std::memcmp(alone.data(), batch.data() + size_t(m) * N, N * sizeof(__nv_bfloat16)) != 0;
  }
  if (differ) failures++;
  std::printf("%s %s: rows alone (m16) vs in the batch (m64): %d differ (bitwise)\n",
              differ ? "FAIL" : "ok  ", what.c_str(), differ);
}

static void check_quantized_gemms() {
  check_e4m3_rounding();
  check_fp8_quant_act<__nv_bfloat16>(3, 576, 576, 0.f);
  check_fp8_quant_act<float>(2, 512, 128, 0.f);
  check_fp8_quant_act<__half>(2, 256, 256, 0.05f);
  // Per-token x per-channel (gx = gw = K), 1x128 x 128x128 blocks, off-tile M and N.
  check_fp8_gemm<__nv_bfloat16>(37, 72, 192, 192, 192);
  check_fp8_gemm<float>(19, 40, 256, 128, 128);
  check_fp8_gemm<__half>(5, 33, 640, 128, 640);
  check_fp8_gemm<__nv_bfloat16>(17, 64, 128, 32, 32);  // the fixtures' 32x32 blocks
  // GPTQ/AWQ-style groups of 128 and GGUF-style 32 and 16, int4 and int8.
  check_wint_gemm(4, 37, 72, 256, 128);
  check_wint_gemm(4, 9, 40, 576, 32);
  check_wint_gemm(8, 21, 48, 192, 16);
  check_wint_gemm(8, 3, 8, 128, 32);
}

int main(int argc, char** argv) {
  // `check_kernels moe` runs only the MoE checks, `check_kernels sampling` only the sampling
  // ones (quick while working on them).
  const bool only_moe = argc > 1 && std::string(argv[1]) == "moe";
  if (argc > 1 && std::string(argv[1]) == "sampling") {
    check_sampling();
    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "all kernels ok", failures);
    return failures ? 1 : 0;
  }
  // `check_kernels quant` runs only the quantized-GEMM checks.
  if (argc > 1 && std::string(argv[1]) == "quant") {
    check_quantized_gemms();
    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "all kernels ok", failures);
    return failures ? 1 : 0;
  }
  if (!only_moe) {
  check_quantized_gemms();
  check_fp8_conversions();
  check_small<__nv_bfloat16>();
  check_small<__half>();
  check_small<float>();
  check_sampling();
  const std::vector<std::vector<std::pair<int, int>>> batches = {
      {{0, 1}, {15, 1}, {16, 1}, {100, 1}, {700, 1}},  // decode, split over KV
      {{0, 37}, {20, 1}, {64, 13}, {3, 1}},            // ragged prefill + decode
      {{300, 45}},                                     // a chunk after context
  };
  const int shapes[][3] = {{32, 8, 128}, {28, 4, 128}, {9, 3, 64}, {8, 4, 256}, {16, 1, 128}, {4, 4, 64}};
  for (auto& s : shapes)
    for (size_t b = 0; b < batches.size(); ++b) {
      check_attention<__nv_bfloat16>(s[0], s[1], s[2], batches[b], b == 1 ? 50 : 0);
      if (b == 1 && s[2] != 256) check_attention<float>(s[0], s[1], s[2], batches[b], 0);
    }
  // Enough work items for one split (the direct-output path), and the f16 kernels.
  check_attention<__nv_bfloat16>(16, 4, 64, std::vector<std::pair<int, int>>(70, {19, 1}), 0);
  check_attention<__half>(32, 8, 128, batches[0], 0);
  check_attention<__half>(8, 4, 256, batches[1], 50);
  // Sinks (gpt-oss: 64 heads of 64 over 8 KV heads, window 128 on half the layers), through
  // both the split (reduce) and the direct-output paths.
  for (size_t b = 0; b < batches.size(); ++b) {
    check_attention<__nv_bfloat16>(64, 8, 64, batches[b], b == 1 ? 50 : 0, true);
    check_attention<float>(8, 2, 64, batches[b], 0, true);
  }
  check_attention<__nv_bfloat16>(16, 4, 64, std::vector<std::pair<int, int>>(70, {19, 1}), 5, true);
  // FP8 KV cache (e4m3 bytes, per-tensor scales): split and direct paths, every q dtype.
  for (size_t b = 0; b < batches.size(); ++b) {
    check_attention<__nv_bfloat16>(9, 3, 64, batches[b], b == 1 ? 50 : 0, false, true);
    check_attention<__half>(32, 8, 128, batches[b], 0, false, true);
  }
  check_attention<float>(8, 2, 64, batches[1], 0, true, true);
  check_attention<__nv_bfloat16>(8, 4, 256, batches[0], 0, false, true);
  check_attention<__nv_bfloat16>(16, 4, 64, std::vector<std::pair<int, int>>(70, {19, 1}), 0, false, true);
  }
  // Fused MoE: Qwen3/Mixtral softmax top-k, DeepSeek-V3 sigmoid groups + correction +
  // scaling, V2 softmax groups without renorm, gpt-oss clamped SwiGLU with biases; shapes off
  // the tile sizes, and one expert with more rows than a tile.
  {
    Routing softmax;
    Routing v3{true, 4, 2, false, true, true, 2.5f};
    Routing v2{false, 4, 2, true, false, false, 1.f};
    check_moe<__nv_bfloat16>(9, 8, 2, 48, 40, 0, softmax, false, "softmax top-2 silu");
    check_moe<float>(9, 8, 2, 48, 40, 0, softmax, false, "softmax top-2 silu");
    check_moe<__half>(5, 8, 3, 64, 32, 1, softmax, false, "softmax top-3 gelu");
    check_moe<__nv_bfloat16>(7, 16, 4, 40, 24, 0, v3, false, "sigmoid groups correction");
    check_moe<float>(7, 16, 4, 40, 24, 0, v3, false, "sigmoid groups correction");
    check_moe<float>(6, 16, 3, 33, 20, 0, v2, false, "softmax groups no renorm");
    check_moe<__nv_bfloat16>(6, 4, 2, 64, 64, 2, softmax, true, "clamped swiglu biases");
    check_moe<float>(40, 2, 2, 36, 70, 0, softmax, true, "two tiles per expert");
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "all kernels ok", failures);
  return failures ? 1 : 0;
}
