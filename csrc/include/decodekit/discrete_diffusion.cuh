// One reverse step of SEDD (score-based discrete diffusion), torch-free: discrete_diffusion_step. The
// spec is decodekit/reference/discrete_diffusion.py (its module docstring is the contract); the RNG is
// decodekit/rng.cuh, stream kStreamDiffusionToken, c0 = (l * V + y) mod 2^32.
//
// One group of threads per canvas position (b, l): a CTA of kBlockThreads for large vocabularies, a
// warp for V <= kWarpMaxVocab (kBlockThreads / 32 positions per CTA). Untouched positions (fixed, or
// absorbing with x != mask_id) write x and return without reading their row. Otherwise two passes over
// the row with 16-byte loads:
//   1. statistics: NaN / +inf flag and, for the log-score, sum_{y != x} exp(s_y); for clean logits the
//      online softmax max m and Z = sum exp(s_y - m) over the softmax domain and the same sum without
//      x. From them the row's constants, sum S included (closed form for clean logits: see row_math).
//   2. the weight P_y of every y != x (the only special entry: on the absorbing graph only x == mask
//      reaches here), the Gumbel key log P_y - log(-log u_y) and a (max, first index) argmax; Philox
//      only runs for a y whose key can still beat the thread's best (the noise is at most 16.64).
// The staying weight P_x needs sum_{y != x} P_y (Euler) or sum S, so it is merged last, with the same
// lowest-index tie rule. Float32 throughout, with the reference's formulas and operation order.
//
// Everything per element and per row below the kernel is __host__ __device__ so that a host harness can
// run the same code serially against the reference.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "decodekit/elem.cuh"
#include "decodekit/rng.cuh"

namespace decodekit {
namespace discrete_diffusion {

// Must match decodekit.reference.discrete_diffusion.{Graph, Sampler, Parameterization}.
enum Graph : int { kAbsorbing = 0, kUniform = 1 };
enum Sampler : int { kEuler = 0, kAnalytic = 1, kFinal = 2 };
enum Param : int { kLogScore = 0, kCleanLogits = 1 };

constexpr int kBlockThreads = 256;
// Up to this V one warp per position: 32 lanes x 4 fp32 per 16-byte load cover 4096 entries in 8
// steps, where a 256-thread CTA would leave most threads idle and pay two __syncthreads reductions.
constexpr int kWarpMaxVocab = 4096;
constexpr int kNoIndex = 0x7fffffff;
constexpr unsigned kFullMask = 0xffffffffu;
// Largest Gumbel noise -log(-log(u)): u <= 0.99999994 gives 16.6355 in float32.
constexpr float kMaxGumbelNoise = 16.7f;

// What a row's pass 1 needs to know besides its values.
struct RowConfig {
  int graph, sampler, param;
  int vocab;
  int x;  // current token, in [0, V); on the absorbing graph x == mask_id here
};

// ------------------------------------------------------------------------------------------------
// Pass 1: statistics

struct Stats {
  int bad;          // NaN or +inf seen anywhere in the row
  float other_sum;  // log-score: sum_{y != x} exp(s_y)
  float m;          // clean logits: max over the softmax domain (-inf: empty so far)
  float z;          //   sum exp(s_y - m) over the domain
  float z_other;    //   the same without y == x
};

DK_HOST_DEVICE Stats empty_stats() { return {0, 0.f, -INFINITY, 0.f, 0.f}; }

// The softmax domain excludes the mask column on the absorbing graph, i.e. x itself.
DK_HOST_DEVICE void visit_stats(Stats& st, const RowConfig& c, float s, int y) {
  st.bad |= (s != s) | (s == INFINITY);
  if (c.param == kLogScore) {
    if (y != c.x) st.other_sum += expf(s);
    return;
  }
  const bool in_domain = c.graph != kAbsorbing || y != c.x;
  if (!in_domain) return;
  const float e_other = y != c.x ? 1.f : 0.f;
  if (s > st.m) {
    // while m is -inf every earlier term is 0: nothing to rescale (and m - s would be NaN for s = -inf)
    const float scale = st.m > -INFINITY ? expf(st.m - s) : 0.f;
    st.z = st.z * scale + 1.f;
    st.z_other = st.z_other * scale + e_other;
    st.m = s;
  } else if (s > -INFINITY) {  // NaN and -inf add nothing
    const float e = expf(s - st.m);
    st.z += e;
    st.z_other += e * e_other;
  }
}

// Merge of two threads' statistics (any order up to float rounding; callers use a fixed tree).
DK_HOST_DEVICE Stats combine_stats(const Stats& a, const Stats& b) {
  Stats r;
  r.bad = a.bad | b.bad;
  r.other_sum = a.other_sum + b.other_sum;
  r.m = fmaxf(a.m, b.m);
  const float fa = a.m > -INFINITY ? expf(a.m - r.m) : 0.f;
  const float fb = b.m > -INFINITY ? expf(b.m - r.m) : 0.f;
  r.z = a.z * fa + b.z * fb;
  r.z_other = a.z_other * fa + b.z_other * fb;
  return r;
}

// ------------------------------------------------------------------------------------------------
// Row constants and per-element math (step 1 concrete score, step 2 weights, step 3 key)

struct RowMath {
  int graph, sampler, param;
  int vocab;
  int x;
  bool invalid;
  float ds;              // dsigma
  float e;               // expm1(dsigma)
  float e_plus_1;        // e + 1
  float jump;            // uniform: -expm1(-dsigma) / V
  float stay_scale;      // uniform: 1 - (V - 1) jump
  float total;           // sum S over the row, S_x = 1 included
  float e_total_over_v;  // uniform: e * total / V
  float m, z;            // clean logits: softmax statistics
  float em1_sigma;       // clean absorbing: expm1(sigma)
  float a_over_c;        // clean uniform: a / c with a = e^-sigma, c = -expm1(-sigma) / V
  float px_k2;           // clean uniform: p_x * (a / (a + c))
};

DK_HOST_DEVICE bool is_finite(float v) { return fabsf(v) < INFINITY; }  // false for NaN too

// The row's constants from its merged statistics; s_x = the row's value at x (read only by clean
// logits on the uniform graph). For clean logits sum S comes in closed form from the statistics, since
// the uniform graph's analytic weights need it during pass 2:
//   absorbing: sum S = 1 + sum_{y != mask} p_y / expm1(sigma) = 1 + (Z_other / Z) / expm1(sigma);
//   uniform:   sum S = 1 + (V - 1)(1 - p_x k2) + (a / c) Z_other / Z.
// The reference's clamp at 0 of S_y = (1 + p_y a / c) - p_x k2 never acts: p_x <= 1 and k2 <= 1, so the
// rounded p_x k2 is <= 1 <= 1 + p_y a / c. A non-finite S_y makes the sum non-finite as well (p_y a / c
// overflows, or is 0 * inf = NaN, only where a / c * sum_{y != x} p_y does), so checking the sum
// suffices, as it does for the log-score, whose S_y are >= 0.
DK_HOST_DEVICE RowMath row_math(const RowConfig& c, const Stats& st, float sigma, float dsigma, float s_x) {
  RowMath r;
  r.graph = c.graph;
  r.sampler = c.sampler;
  r.param = c.param;
  r.vocab = c.vocab;
  r.x = c.x;
  const float v = static_cast<float>(c.vocab);
  r.ds = dsigma;
  r.e = expm1f(dsigma);
  r.e_plus_1 = r.e + 1.f;
  r.jump = -expm1f(-dsigma) / v;
  r.stay_scale = 1.f - static_cast<float>(c.vocab - 1) * r.jump;
  r.m = st.m;
  r.z = st.z;
  r.em1_sigma = expm1f(sigma);
  const float a = expf(-sigma);
  const float cc = -expm1f(-sigma) / v;
  r.a_over_c = a / cc;
  r.px_k2 = 0.f;
  bool invalid = st.bad != 0;
  if (c.param == kLogScore) {
    r.total = 1.f + st.other_sum;
  } else {
    invalid |= !(st.m > -INFINITY);  // every softmax entry -inf
    const float p_other = st.z_other / st.z;
    if (c.graph == kAbsorbing) {
      r.total = 1.f + p_other / r.em1_sigma;
    } else {
      const float p_x = expf(s_x - st.m) / st.z;
      r.px_k2 = p_x * (a / (a + cc));
      // V == 1: no y != x, S = [1] whatever a / c is
      r.total = c.vocab > 1 ? (1.f + static_cast<float>(c.vocab - 1) * (1.f - r.px_k2)) + r.a_over_c * p_other : 1.f;
    }
  }
  invalid |= !is_finite(r.total);
  r.invalid = invalid;
  r.e_total_over_v = r.e * r.total / v;
  return r;
}

// S_y of a y != x (step 1).
DK_HOST_DEVICE float concrete_score(const RowMath& r, float s) {
  if (r.param == kLogScore) return expf(s);
  const float p = expf(s - r.m) / r.z;  // s = -inf gives 0 (m is finite in a valid row)
  if (r.graph == kAbsorbing) return p / r.em1_sigma;
  return fmaxf((1.f + p * r.a_over_c) - r.px_k2, 0.f);
}

// P_y of a y != x from its S_y (step 2). A NaN weight (0 * inf when expm1(dsigma) overflows) is never
// positive, as in the reference, whose clamp keeps NaN where fmaxf gives 0: both are skipped.
DK_HOST_DEVICE float move_weight(const RowMath& r, float score) {
  if (r.sampler == kEuler) {
    return r.graph == kAbsorbing ? r.ds * score : r.ds * (score / static_cast<float>(r.vocab));
  }
  if (r.graph == kAbsorbing) return score * r.e;
  return fmaxf(score * r.e_plus_1 - r.e_total_over_v, 0.f) * r.jump;
}

// P_x, the weight of staying; move_sum = sum_{y != x} P_y (used by Euler only).
DK_HOST_DEVICE float stay_weight(const RowMath& r, float move_sum) {
  if (r.sampler == kEuler) return fmaxf(1.f - move_sum, 0.f);
  if (r.graph == kAbsorbing) return r.sampler == kFinal ? 0.f : fmaxf(r.e_plus_1 - r.e * r.total, 0.f);
  return fmaxf(r.e_plus_1 - r.e_total_over_v, 0.f) * r.stay_scale;  // stag_x with S_x = 1
}

// The Gumbel-max key of a positive weight; u == 0 gives -inf.
DK_HOST_DEVICE float gumbel_key(float log_weight, float u) { return log_weight - logf(-logf(u)); }

// Lowest log P that may still reach a key of `bound`: anything below scores strictly less, since its
// noise is at most 16.64 < kMaxGumbelNoise and the relative 4e-6 covers the rounding of the key, of
// log P and of this bound. -inf while nothing is drawn.
DK_HOST_DEVICE float min_competitive_log_weight(float bound) {
  return bound - kMaxGumbelNoise - (fabsf(bound) + kMaxGumbelNoise) * 4e-6f;
}

// ------------------------------------------------------------------------------------------------
// Pass 2: weights and the draw

struct DrawParams {
  uint64_t seed, offset;
  uint32_t counter_base;  // c0 of y = 0: (l * V) mod 2^32
};

struct Draw {
  float move_sum;  // sum_{y != x} P_y
  float best_key;
  int best_index;  // kNoIndex: no positive weight yet
  float min_log_weight;  // pruning bound from best_key (thread-local)
};

DK_HOST_DEVICE Draw empty_draw() { return {0.f, -INFINITY, kNoIndex, -INFINITY}; }

// Highest key wins, the lower index on ties; the first entry is taken even at a key of -inf, so with
// every uniform 0 the first positive index wins (reference first_argmax).
DK_HOST_DEVICE void offer(Draw& d, float key, int y) {
  if (key > d.best_key || (key == d.best_key && y < d.best_index)) {
    d.best_key = key;
    d.best_index = y;
  }
}

DK_HOST_DEVICE void visit_draw(Draw& d, const RowMath& r, const DrawParams& p, float s, int y) {
  if (y == r.x) return;
  const float weight = move_weight(r, concrete_score(r, s));
  if (r.sampler == kEuler) d.move_sum += weight;
  if (!(weight > 0.f)) return;
  const float log_weight = logf(weight);
  if (log_weight < d.min_log_weight) return;
  const float u = philox_uniform(p.seed, p.offset, kStreamDiffusionToken, p.counter_base + static_cast<uint32_t>(y));
  offer(d, gumbel_key(log_weight, u), y);
  d.min_log_weight = fmaxf(d.min_log_weight, min_competitive_log_weight(d.best_key));
}

DK_HOST_DEVICE Draw combine_draw(const Draw& a, const Draw& b) {
  Draw r = a;
  r.move_sum = a.move_sum + b.move_sum;
  if (b.best_index != kNoIndex) offer(r, b.best_key, b.best_index);
  r.min_log_weight = fmaxf(a.min_log_weight, b.min_log_weight);
  return r;
}

// The new token of a valid row from its merged draw: P_x joins last; -1 when no weight is positive.
DK_HOST_DEVICE int64_t finish_draw(const RowMath& r, Draw d, const DrawParams& p) {
  const float stay = stay_weight(r, d.move_sum);
  if (stay > 0.f) {
    const float u = philox_uniform(p.seed, p.offset, kStreamDiffusionToken, p.counter_base + static_cast<uint32_t>(r.x));
    offer(d, gumbel_key(logf(stay), u), r.x);
  }
  return d.best_index == kNoIndex ? int64_t{-1} : int64_t{d.best_index};
}

// ------------------------------------------------------------------------------------------------
// Device side: loads and group reductions

#if defined(__CUDACC__)

// Elem<T> and lane_value<T>: decodekit/elem.cuh

// Calls visit(value, y) for every element of the row, spread over kGroup threads (rank = this thread's
// index in its group) with 16-byte loads. Rows start at (b L + l) V elements, so only element-aligned:
// the elements before the first 16-byte boundary and after the last full vector go one per thread.
template <typename T, int kGroup, typename Visit>
__device__ __forceinline__ void for_each_element(const T* row, int vocab, int rank, Visit&& visit) {
  constexpr int kVec = 16 / sizeof(T);
  const int misaligned = static_cast<int>((reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T));
  const int head = min(vocab, misaligned == 0 ? 0 : kVec - misaligned);
  if (rank < head) visit(Elem<T>::load(row + rank), rank);
  const uint4* body = reinterpret_cast<const uint4*>(row + head);
  const int num_vecs = (vocab - head) / kVec;
  for (int k = rank; k < num_vecs; k += kGroup) {
    const uint4 packed = body[k];
    const int base = head + k * kVec;
#pragma unroll
    for (int j = 0; j < kVec; ++j) visit(lane_value<T>(packed, j), base + j);
  }
  const int tail = head + num_vecs * kVec;
  if (tail + rank < vocab) visit(Elem<T>::load(row + tail + rank), tail + rank);
}

__device__ __forceinline__ Stats shfl_xor_stats(const Stats& s, int mask) {
  return {__shfl_xor_sync(kFullMask, s.bad, mask), __shfl_xor_sync(kFullMask, s.other_sum, mask),
          __shfl_xor_sync(kFullMask, s.m, mask), __shfl_xor_sync(kFullMask, s.z, mask),
          __shfl_xor_sync(kFullMask, s.z_other, mask)};
}

__device__ __forceinline__ Draw shfl_xor_draw(const Draw& d, int mask) {
  return {__shfl_xor_sync(kFullMask, d.move_sum, mask), __shfl_xor_sync(kFullMask, d.best_key, mask),
          __shfl_xor_sync(kFullMask, d.best_index, mask), __shfl_xor_sync(kFullMask, d.min_log_weight, mask)};
}

struct CombineStats {
  __device__ __forceinline__ Stats operator()(const Stats& a, const Stats& b) const { return combine_stats(a, b); }
  __device__ __forceinline__ Stats shfl(const Stats& s, int mask) const { return shfl_xor_stats(s, mask); }
};

struct CombineDraw {
  __device__ __forceinline__ Draw operator()(const Draw& a, const Draw& b) const { return combine_draw(a, b); }
  __device__ __forceinline__ Draw shfl(const Draw& d, int mask) const { return shfl_xor_draw(d, mask); }
};

// Every thread of the group gets the merge of the group's states, by a fixed tree (deterministic
// floats, the same value in every thread). kGroup is 32 (a warp, no shared memory) or kBlockThreads.
template <int kGroup, typename State, typename Combine>
__device__ __forceinline__ State group_all_reduce(State st, Combine combine) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) st = combine(st, combine.shfl(st, mask));
  if constexpr (kGroup > 32) {
    constexpr int kWarps = kGroup / 32;
    __shared__ State partials[kWarps];
    if ((threadIdx.x & 31) == 0) partials[threadIdx.x >> 5] = st;
    __syncthreads();
    st = partials[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) st = combine(st, partials[w]);
    __syncthreads();  // partials is reused by the next call with this State
  }
  return st;
}

// grid = ceil(B L / (kBlockThreads / kGroup)), kBlockThreads threads; one group of kGroup threads per
// position. fixed may be null. mask_id is in [0, V) on the absorbing graph.
template <typename T, int kGroup>
__global__ void __launch_bounds__(kBlockThreads)
    discrete_diffusion_step_kernel(const T* scores, const int64_t* tokens, const float* sigma, const float* dsigma,
                                   const bool* fixed, const int64_t* seed, const int64_t* offset, int64_t positions,
                                   int length, int vocab, int graph, int sampler, int param, int64_t mask_id,
                                   int64_t* out) {
  static_assert(kGroup == 32 || kGroup == kBlockThreads, "a group is a warp or the whole CTA");
  constexpr int kGroupsPerBlock = kBlockThreads / kGroup;
  const int rank = static_cast<int>(threadIdx.x) % kGroup;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kGroup;  // b L + l
  // Every branch up to the kernel's end is uniform over the group (one position), and a CTA-wide
  // group has one position, so the reductions' __syncthreads see the whole CTA.
  if (i >= positions) return;
  const int b = static_cast<int>(i / length);
  const int l = static_cast<int>(i - static_cast<int64_t>(b) * length);
  const int64_t x = tokens[i];
  if (x < 0 || x >= vocab) {
    if (rank == 0) out[i] = -1;
    return;
  }
  if ((fixed != nullptr && fixed[i]) || (graph == kAbsorbing && x != mask_id)) {
    if (rank == 0) out[i] = x;
    return;
  }
  const T* row = scores + i * vocab;
  const RowConfig config{graph, sampler, param, vocab, static_cast<int>(x)};

  Stats st = empty_stats();
  for_each_element<T, kGroup>(row, vocab, rank, [&](float s, int y) { visit_stats(st, config, s, y); });
  st = group_all_reduce<kGroup>(st, CombineStats{});
  const float s_x = param == kCleanLogits && graph == kUniform ? Elem<T>::load(row + x) : 0.f;
  const RowMath r = row_math(config, st, sigma[b], dsigma[b], s_x);
  if (r.invalid) {
    if (rank == 0) out[i] = -1;
    return;
  }

  const DrawParams p{static_cast<uint64_t>(seed[b]), static_cast<uint64_t>(offset[b]),
                     static_cast<uint32_t>(static_cast<uint64_t>(l) * static_cast<uint64_t>(vocab))};
  Draw d = empty_draw();
  for_each_element<T, kGroup>(row, vocab, rank, [&](float s, int y) { visit_draw(d, r, p, s, y); });
  d = group_all_reduce<kGroup>(d, CombineDraw{});
  if (rank == 0) out[i] = finish_draw(r, d, p);
}

#endif  // __CUDACC__

}  // namespace discrete_diffusion
}  // namespace decodekit
