// Parallel mask-denoising kernels, torch-free: denoise_propose and denoise_select. The spec is
// decodekit/reference/denoise.py; the RNG is decodekit/rng.cuh. The C++ CPU kernels
// (csrc/cpu/denoise.cpp) run the same algorithm.
//
// propose: one CTA per window position (b, j). Its logits row is read once with 16-byte loads; each
// thread keeps, over its elements in ascending index order,
//   - NaN / +inf flag, the first argmax (greedy proposal) and the largest kept logit (x/T overflow),
//   - online softmax statistics of the confidence distribution D: max m, Z = sum exp(y - m),
//     S = sum exp(y - m)(y - m), and the second largest y (a new max m' rescales Z' = Z e^{m-m'},
//     S' = e^{m-m'}(S + Z(m - m'))),
//   - the Gumbel-max draw: Philox only for kept tokens whose z = x/T can still reach the best score
//     published in the CTA (the noise -log(-log u) is at most kMaxGumbelNoise), scored 32 at a time
//     from a per-warp queue so the ~100-instruction Philox never runs in a divergent branch,
// and the CTA merges the per-thread states. Nothing of size [W, V] is written.
// select: one CTA per canvas row; eligible window positions are ranked inside their group by
// (confidence descending, position ascending) with a shared-memory bitonic sort (W <= kSortCapacity)
// or by counting (larger W), every commit is decided before any token is written, then written.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "decodekit/elem.cuh"
#include "decodekit/rng.cuh"

namespace decodekit {
namespace denoise {

// propose: 8 warps per position; B * W CTAs (2048 at B = 8, W = 256) fill every SM several times.
constexpr int kProposeThreads = 256;
constexpr int kProposeWarps = kProposeThreads / 32;
// Suppressed ids staged in shared memory (any further ones are read from global memory).
constexpr int kSharedSuppress = 64;
// Largest Gumbel noise -log(-log(u)): u <= 0.99999994 gives 16.6355 (float32 logf).
constexpr float kMaxGumbelNoise = 16.7f;

// select: one CTA per row; each thread decides for up to kMaxItemsPerThread window positions and
// keeps the decisions in a 64-bit register mask until every thread has read the canvas.
constexpr int kSelectThreads = 1024;
constexpr int kMaxItemsPerThread = 64;
constexpr int64_t kMaxSelectWidth = int64_t{kSelectThreads} * kMaxItemsPerThread;
// Window widths up to this are ranked by a bitonic sort of 64-bit keys in dynamic shared memory
// (with the ranks: 12 bytes a position, 24 KB at 2048, under the 48 KB default limit).
constexpr int kSortCapacity = 2048;

constexpr int kNoIndex = 0x7fffffff;
constexpr unsigned kFullMask = 0xffffffffu;

enum ConfMode : int { kProb = 0, kMargin = 1, kNegEntropy = 2, kRandom = 3 };
enum SelectMode : int { kTopK = 0, kThreshold = 1, kFactor = 2, kBernoulli = 3 };

// Element types: Elem<T> and lane_value<T> in decodekit/elem.cuh

// ------------------------------------------------------------------------------------------------
// propose: per-thread state

struct RowParams {
  float temperature;
  float inv_t;       // 1 / T
  bool exact_test;   // 1 / T is not a normal float: the pruning test divides too
  float floor;       // K = {x > -inf and x >= floor}
  uint64_t seed;
  uint64_t offset;
  uint32_t counter_base;  // Philox c0 of vocab id 0: (pos * V) mod 2^32
};

struct PassState {
  int bad;           // NaN seen (+inf shows as x_max == +inf)
  float x_max;       // NaN ignored
  int argmax;        // first index of x_max
  float kept_max;    // largest kept x (sampled rows)
  float m, z, s;     // softmax statistics of D
  float top2;        // second largest y, duplicates counted
  float best_score;  // Gumbel draw: best z - log(-log u)
  int best_index;    // its vocab id (kNoIndex: none yet)
  float best_x;      // its logit
};

__device__ __forceinline__ PassState empty_state() {
  return {0, -INFINITY, kNoIndex, -INFINITY, -INFINITY, 0.f, 0.f, -INFINITY, -INFINITY, kNoIndex, 0.f};
}

// Lowest z = x * (1/T) that may still reach a score of `bound`. A token below it scores strictly
// less: z <= zq (1 + 2^-23) and its noise is at most 16.64, so its score is at least 0.06 below the
// bound; the relative 4e-6 covers the float rounding of zq, of this bound and of the score itself.
// -inf while nothing is drawn (every kept token is a candidate).
__device__ __forceinline__ float min_competitive_z(float bound) {
  return bound - kMaxGumbelNoise - (fabsf(bound) + kMaxGumbelNoise) * 4e-6f;
}

// One element x (suppression applied) of vocab id v, visited in ascending v per thread; returns
// whether it is a draw candidate.
template <int kMode, bool kSampled, bool kTempered>
__device__ __forceinline__ bool visit(PassState& st, float& min_zq, const RowParams& p, float x, int v) {
  // An untempered D is the softmax of x itself: its running max is x's, and the argmax rides on its
  // rare new-max branch instead of a compare per element.
  constexpr bool kMaxFromD = kMode != kRandom && !kTempered;
  st.bad |= x != x;  // +inf shows up as x_max == +inf
  if constexpr (!kMaxFromD) {
    if (x > st.x_max) {
      st.x_max = x;
      st.argmax = v;
    }
  }
  bool kept = false;
  if constexpr (kSampled) {
    kept = (x > -INFINITY) & (x >= p.floor);
    if (kept) st.kept_max = fmaxf(st.kept_max, x);
  }
  if constexpr (kMode != kRandom) {
    float y = x;
    if constexpr (kTempered) y = kept ? __fdiv_rn(x, p.temperature) : -INFINITY;
    if (y > st.m) {
      if (st.m > -INFINITY) {  // while m is -inf every term so far is 0: nothing to rescale
        const float shift = st.m - y;
        const float scale = __expf(shift);
        if constexpr (kMode == kNegEntropy) st.s = scale * (st.s + st.z * shift);
        st.z *= scale;
      }
      if constexpr (kMode == kMargin) st.top2 = st.m;
      st.m = y;
      if constexpr (kMaxFromD) {
        st.x_max = y;
        st.argmax = v;
      }
    } else if constexpr (kMode == kMargin) {
      st.top2 = fmaxf(st.top2, y);
    }
    // y = -inf gives d = -inf, or NaN while m is -inf too; fmaxf turns both into -FLT_MAX, whose
    // __expf is 0, so such terms add exactly 0 to Z and S (one instruction instead of a select).
    const float d = fmaxf(y - st.m, -FLT_MAX);
    const float e = __expf(d);
    st.z += e;
    if constexpr (kMode == kNegEntropy) st.s += e * d;
  }
  // A kept token whose z may still reach the best score is a draw candidate; the caller scores
  // candidates warp-cooperatively (Philox is ~100 instructions: a divergent branch per element would
  // cost every lane of the warp that much whenever any lane had a candidate).
  if constexpr (kSampled) {
    if (kept) {
      const float zq = p.exact_test ? __fdiv_rn(x, p.temperature) : x * p.inv_t;
      return zq >= min_zq;
    }
  }
  return false;
}

// Scores draw candidate v (logit x): the reference's exact z = x / T, u == 0 -> -inf noise. Highest
// score wins, the lower index on ties; the first candidate is taken even at -inf (all uniforms 0).
__device__ __forceinline__ void score_candidate(PassState& st, float& min_zq, const RowParams& p, float x, int v) {
  const float z = __fdiv_rn(x, p.temperature);
  const float u = philox_uniform(p.seed, p.offset, kStreamProposalToken, p.counter_base + static_cast<uint32_t>(v));
  const float score = z - logf(-logf(u));
  if (score > st.best_score || (score == st.best_score && v < st.best_index)) {
    st.best_score = score;
    st.best_index = v;
    st.best_x = x;
    min_zq = fmaxf(min_zq, min_competitive_z(score));
  }
}

// Merge of two threads' states (any order: ties resolve by index).
__device__ __forceinline__ PassState combine(const PassState& a, const PassState& b) {
  PassState r;
  r.bad = a.bad | b.bad;
  const bool b_max = b.x_max > a.x_max || (b.x_max == a.x_max && b.argmax < a.argmax);
  r.x_max = b_max ? b.x_max : a.x_max;
  r.argmax = b_max ? b.argmax : a.argmax;
  r.kept_max = fmaxf(a.kept_max, b.kept_max);
  r.m = fmaxf(a.m, b.m);
  // A side whose max is -inf has empty sums (and m - M could be NaN): it adds nothing.
  const float fa = a.m > -INFINITY ? expf(a.m - r.m) : 0.f;
  const float fb = b.m > -INFINITY ? expf(b.m - r.m) : 0.f;
  r.z = a.z * fa + b.z * fb;
  r.s = (a.m > -INFINITY ? fa * (a.s + a.z * (a.m - r.m)) : 0.f) +
        (b.m > -INFINITY ? fb * (b.s + b.z * (b.m - r.m)) : 0.f);
  r.top2 = fmaxf(fminf(a.m, b.m), fmaxf(a.top2, b.top2));
  const bool b_draw = b.best_score > a.best_score || (b.best_score == a.best_score && b.best_index < a.best_index);
  r.best_score = b_draw ? b.best_score : a.best_score;
  r.best_index = b_draw ? b.best_index : a.best_index;
  r.best_x = b_draw ? b.best_x : a.best_x;
  return r;
}

__device__ __forceinline__ PassState shfl_xor_state(const PassState& s, int mask) {
  PassState r;
  r.bad = __shfl_xor_sync(kFullMask, s.bad, mask);
  r.x_max = __shfl_xor_sync(kFullMask, s.x_max, mask);
  r.argmax = __shfl_xor_sync(kFullMask, s.argmax, mask);
  r.kept_max = __shfl_xor_sync(kFullMask, s.kept_max, mask);
  r.m = __shfl_xor_sync(kFullMask, s.m, mask);
  r.z = __shfl_xor_sync(kFullMask, s.z, mask);
  r.s = __shfl_xor_sync(kFullMask, s.s, mask);
  r.top2 = __shfl_xor_sync(kFullMask, s.top2, mask);
  r.best_score = __shfl_xor_sync(kFullMask, s.best_score, mask);
  r.best_index = __shfl_xor_sync(kFullMask, s.best_index, mask);
  r.best_x = __shfl_xor_sync(kFullMask, s.best_x, mask);
  return r;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, mask));
  return v;
}

// The merged state of the CTA, valid in thread 0 (fixed tree: deterministic floats).
__device__ __forceinline__ PassState block_combine(PassState st) {
  __shared__ PassState partials[kProposeWarps];
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) st = combine(st, shfl_xor_state(st, mask));
  if ((threadIdx.x & 31) == 0) partials[threadIdx.x >> 5] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kProposeWarps; ++w) st = combine(st, partials[w]);
  }
  return st;
}

// Bit j set when vocab id base + j (j < count <= 32) is suppressed.
__device__ __forceinline__ uint32_t suppressed_lanes(int base, int count, const int* shared_ids,
                                                     const int64_t* ids, int num_ids) {
  uint32_t mask = 0u;
  for (int k = 0; k < num_ids; ++k) {
    const int id = k < kSharedSuppress ? shared_ids[k] : static_cast<int>(ids[k]);
    const unsigned d = static_cast<unsigned>(id - base);
    mask |= d < static_cast<unsigned>(count) ? (1u << d) : 0u;
  }
  return mask;
}

// Monotone uint32 image of a float (for atomicMax on scores) and its inverse.
__device__ __forceinline__ unsigned float_to_ordered(float x) {
  const unsigned bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float ordered_to_float(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

struct Candidate {
  int index;
  float x;
};

// The kernel's shared memory for the draw: one candidate queue of 32 * kVec entries per warp, and
// float_to_ordered of the best score any warp has published.
struct DrawSmem {
  Candidate* queues;
  unsigned* cta_best;
};

// The pass over one row: every thread visits its elements in ascending index order (head elements
// before the 16-byte aligned body, two body vectors per step for more loads in flight, then the
// tail). After each vector the warp packs its draw candidates into a shared queue and scores them
// 32 at a time; after each step the CTA shares its best score (atomicMax) so every lane prunes with it.

template <typename T, int kMode, bool kSampled, bool kTempered>
__device__ PassState row_pass(const T* row, int vocab, const RowParams& p, const int* shared_ids,
                              const int64_t* ids, int num_ids, DrawSmem smem) {
  constexpr int kVec = 16 / sizeof(T);
  const int tid = threadIdx.x, lane = tid & 31;
  Candidate* queue = smem.queues + (tid >> 5) * (32 * kVec);
  unsigned& cta_best = *smem.cta_best;
  if (tid == 0) cta_best = float_to_ordered(-INFINITY);
  __syncthreads();

  PassState st = empty_state();
  float min_zq = -INFINITY;

  // Warp-uniform: `emit(queue, offset)` writes this lane's `count` candidates from `offset` on.
  auto score_queued = [&](int count, auto&& emit) {
    if constexpr (kSampled) {
      int end = count;  // inclusive prefix sum over the warp
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int lower = __shfl_up_sync(kFullMask, end, d);
        if (lane >= d) end += lower;
      }
      const int total = __shfl_sync(kFullMask, end, 31);
      if (total == 0) return;
      emit(queue, end - count);
      __syncwarp();
      for (int e = lane; e < total; e += 32) score_candidate(st, min_zq, p, queue[e].x, queue[e].index);
      __syncwarp();  // the queue is rewritten by the next call
    }
  };
  auto visit_single = [&](int v, bool active) {
    float x = 0.f;
    bool candidate = false;
    if (active) {
      x = Elem<T>::load(row + v);
      if (num_ids > 0 && suppressed_lanes(v, 1, shared_ids, ids, num_ids) != 0u) x = -INFINITY;
      candidate = visit<kMode, kSampled, kTempered>(st, min_zq, p, x, v);
    }
    score_queued(candidate ? 1 : 0, [&](Candidate* q, int offset) {
      if (candidate) q[offset] = {v, x};
    });
  };
  auto visit_vector = [&](const uint4& packed, int base, bool active) {
    uint32_t candidates = 0u;
    if (active) {
      const uint32_t suppressed = num_ids > 0 ? suppressed_lanes(base, kVec, shared_ids, ids, num_ids) : 0u;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float x = (suppressed >> j) & 1u ? -INFINITY : lane_value<T>(packed, j);
        candidates |= visit<kMode, kSampled, kTempered>(st, min_zq, p, x, base + j) ? (1u << j) : 0u;
      }
    }
    // A candidate is kept, so never suppressed: its logit is the packed value.
    score_queued(__popc(candidates), [&](Candidate* q, int offset) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if ((candidates >> j) & 1u) q[offset++] = {base + j, lane_value<T>(packed, j)};
      }
    });
  };

  const int misaligned = static_cast<int>((reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T));
  const int head = min(vocab, misaligned == 0 ? 0 : kVec - misaligned);
  visit_single(tid, tid < head);

  const uint4* body = reinterpret_cast<const uint4*>(row + head);
  const int num_vecs = (vocab - head) / kVec;
  // Every lane runs the same number of steps, so the warp collectives inside see the whole warp.
  for (int first = 0; first < num_vecs; first += 2 * kProposeThreads) {
    const int v0 = first + tid, v1 = v0 + kProposeThreads;
    const bool has0 = v0 < num_vecs, has1 = v1 < num_vecs;
    const uint4 a = has0 ? __ldcs(body + v0) : make_uint4(0u, 0u, 0u, 0u);
    const uint4 b = has1 ? __ldcs(body + v1) : make_uint4(0u, 0u, 0u, 0u);
    visit_vector(a, head + v0 * kVec, has0);
    visit_vector(b, head + v1 * kVec, has1);
    if constexpr (kSampled) {
      // Any published score is some token's real score, so it bounds the winner from below; a stale
      // read only prunes less.
      const float warp_best = warp_max(st.best_score);
      if (lane == 0 && warp_best > -INFINITY) atomicMax(&cta_best, float_to_ordered(warp_best));
      const float bound = ordered_to_float(*static_cast<volatile unsigned*>(&cta_best));
      min_zq = fmaxf(min_zq, min_competitive_z(bound));
    }
  }

  const int tail = head + num_vecs * kVec;
  visit_single(tail + tid, tid < vocab - tail);
  return block_combine(st);
}

__device__ __forceinline__ float quiet_nan() { return __uint_as_float(0x7fc00000u); }

// Proposal and confidence of a position from the merged state (thread 0).
template <typename T, int kMode, bool kSampled, bool kTempered>
__device__ __forceinline__ void finish_position(const PassState& st, const T* row, int vocab, const RowParams& p,
                                                const int* shared_ids, const int64_t* ids, int num_ids,
                                                int64_t position, int64_t* proposal_out, float* confidence_out) {
  const bool invalid = st.bad != 0 || st.x_max == INFINITY || st.x_max == -INFINITY ||
                       (kSampled && __fdiv_rn(st.kept_max, p.temperature) == INFINITY);
  if (invalid) {
    *proposal_out = -1;
    *confidence_out = quiet_nan();
    return;
  }
  const bool drawn = st.best_index != kNoIndex;
  // An empty kept set (a floor above every logit) gives the reference's out-of-range index V.
  const int token = kSampled ? (drawn ? st.best_index : vocab) : st.argmax;
  float confidence;
  if constexpr (kMode == kRandom) {
    confidence = philox_uniform(p.seed, p.offset, kStreamConfidenceNoise, static_cast<uint32_t>(position));
  } else if constexpr (kMode == kProb) {
    float x_tok = kSampled ? st.best_x : st.x_max;
    if (kSampled && !drawn) {
      // The reference gathers D at min(token, V - 1).
      x_tok = Elem<T>::load(row + (vocab - 1));
      if (num_ids > 0 && suppressed_lanes(vocab - 1, 1, shared_ids, ids, num_ids) != 0u) x_tok = -INFINITY;
    }
    float y = x_tok;
    if (kTempered) y = (x_tok > -INFINITY && x_tok >= p.floor) ? __fdiv_rn(x_tok, p.temperature) : -INFINITY;
    confidence = (y > -INFINITY ? expf(y - st.m) : 0.f) / st.z;
  } else if constexpr (kMode == kMargin) {
    const float p1 = st.m > -INFINITY ? 1.f : 0.f;
    const float p2 = st.top2 > -INFINITY ? expf(st.top2 - st.m) : 0.f;
    confidence = (p1 - p2) / st.z;
  } else {
    confidence = st.s / st.z - logf(st.z);
  }
  *proposal_out = token;
  *confidence_out = confidence;
}

template <typename T, int kMode, bool kSampled, bool kTempered>
__device__ __forceinline__ void propose_position(const T* row, int vocab, const RowParams& p, const int* shared_ids,
                                                 const int64_t* ids, int num_ids, DrawSmem smem, int64_t position,
                                                 int64_t* proposal_out, float* confidence_out) {
  const PassState st = row_pass<T, kMode, kSampled, kTempered>(row, vocab, p, shared_ids, ids, num_ids, smem);
  if (threadIdx.x == 0) {
    finish_position<T, kMode, kSampled, kTempered>(st, row, vocab, p, shared_ids, ids, num_ids, position,
                                                   proposal_out, confidence_out);
  }
}

// grid = (B * W): one CTA per window position. keep_floor may be null (no filter); suppress_ids has
// num_suppress entries in [0, V).
template <typename T, int kMode>
__global__ void __launch_bounds__(kProposeThreads)
    denoise_propose_kernel(const T* logits, int width, int vocab, const float* temperature, const float* keep_floor,
                           const int64_t* suppress_ids, int num_suppress, const int64_t* seed, const int64_t* offset,
                           const int64_t* window_start, bool tempered, int64_t* proposal_out, float* confidence_out) {
  __shared__ int shared_ids[kSharedSuppress];
  __shared__ Candidate queues[kProposeWarps * 32 * (16 / sizeof(T))];
  __shared__ unsigned cta_best;
  const DrawSmem smem{queues, &cta_best};
  const int64_t i = blockIdx.x;  // b * W + j
  const int b = static_cast<int>(i / width);
  const int j = static_cast<int>(i - static_cast<int64_t>(b) * width);
  for (int k = threadIdx.x; k < min(num_suppress, kSharedSuppress); k += kProposeThreads) {
    shared_ids[k] = static_cast<int>(suppress_ids[k]);
  }
  __syncthreads();

  const float t = temperature[b];
  const int64_t position = window_start[b] + j;
  RowParams p;
  p.temperature = t;
  p.inv_t = 1.f / t;
  p.exact_test = !(isfinite(p.inv_t) && fabsf(p.inv_t) >= 1.17549435e-38f);
  p.floor = keep_floor != nullptr ? keep_floor[i] : -INFINITY;
  p.seed = static_cast<uint64_t>(seed[b]);
  p.offset = static_cast<uint64_t>(offset[b]);
  p.counter_base = static_cast<uint32_t>(static_cast<uint64_t>(position) * static_cast<uint64_t>(vocab));

  const T* row = logits + i * vocab;
  int64_t* prop = proposal_out + i;
  float* conf = confidence_out + i;
  // The branch is uniform over the CTA (one row's temperature).
  if (t == 0.f) {
    propose_position<T, kMode, false, false>(row, vocab, p, shared_ids, suppress_ids, num_suppress, smem, position, prop,
                                             conf);
  } else if (tempered) {
    propose_position<T, kMode, true, true>(row, vocab, p, shared_ids, suppress_ids, num_suppress, smem, position, prop,
                                           conf);
  } else {
    propose_position<T, kMode, true, false>(row, vocab, p, shared_ids, suppress_ids, num_suppress, smem, position, prop,
                                            conf);
  }
}

// ------------------------------------------------------------------------------------------------
// select

struct SelectParams {
  int64_t* tokens;          // [L] this row
  const int64_t* proposal;  // [W]
  const float* confidence;  // [W]
  const int32_t* span_ids;  // [L] or null
  const int32_t* k;         // [S]
  int num_spans;
  int64_t length;
  int width;
  int64_t window_start, block_start, block_end;
  int64_t mask_id;
  int mode;
  float tau, factor, p_transfer;
  uint64_t seed, offset;
};

// Group of window position j (>= 0) when it is eligible, else -1.
__device__ __forceinline__ int eligible_group(const SelectParams& r, int j) {
  const int64_t pos = r.window_start + j;
  if (pos < 0 || pos >= r.length) return -1;
  if (r.tokens[pos] != r.mask_id || pos < r.block_start || pos >= r.block_end) return -1;
  if (r.proposal[j] < 0) return -1;
  if (r.span_ids == nullptr) return 0;
  const int32_t g = r.span_ids[pos];
  return (g >= 0 && g < r.num_spans) ? g : -1;
}

// Monotone integer image of a float (larger float -> larger key, -0.0 == +0.0).
__device__ __forceinline__ uint32_t orderable_key(float x) {
  const uint32_t bits = __float_as_uint(x + 0.f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Ascending order of these keys is (confidence descending, position ascending).
__device__ __forceinline__ uint64_t rank_key(float confidence, int j) {
  return (static_cast<uint64_t>(~orderable_key(confidence)) << 32) | static_cast<uint32_t>(j);
}

constexpr uint64_t kNoKey = ~uint64_t{0};

__device__ void bitonic_sort(uint64_t* keys, int n) {  // n a power of two, ascending
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += kSelectThreads) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool ascending = (i & size) == 0;
          const uint64_t a = keys[i], b = keys[partner];
          if ((a > b) == ascending) {
            keys[i] = b;
            keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// ranks[j] = rank of window position j in its group (-1: ineligible), for W <= kSortCapacity. As the
// reference counts: a NaN confidence precedes nothing and nothing precedes it, so it ranks 0 and the
// others rank among the non-NaN ones only.
__device__ void sorted_ranks(const SelectParams& r, uint64_t* keys, int* ranks, int n) {
  for (int i = threadIdx.x; i < n; i += kSelectThreads) {
    uint64_t key = kNoKey;
    if (i < r.width) {
      const int g = eligible_group(r, i);
      const float c = g >= 0 ? r.confidence[i] : 0.f;
      ranks[i] = g < 0 ? -1 : 0;
      if (g >= 0 && c == c) key = rank_key(c, i);
    }
    keys[i] = key;
  }
  __syncthreads();
  bitonic_sort(keys, n);
  if (r.span_ids == nullptr) {
    for (int i = threadIdx.x; i < n; i += kSelectThreads) {
      if (keys[i] != kNoKey) ranks[static_cast<uint32_t>(keys[i])] = i;
    }
    __syncthreads();
    return;
  }
  // Spans: re-sort by (group, global order); a position's rank is its distance from its group's start.
  // Both i and j are < kSortCapacity <= 2^16.
  for (int i = threadIdx.x; i < n; i += kSelectThreads) {
    uint64_t key = kNoKey;
    if (keys[i] != kNoKey) {
      const int j = static_cast<int>(static_cast<uint32_t>(keys[i]));
      const int g = eligible_group(r, j);
      key = (static_cast<uint64_t>(g) << 32) | (static_cast<uint64_t>(i) << 16) | static_cast<uint64_t>(j);
    }
    keys[i] = key;  // only this thread touches index i here
  }
  __syncthreads();
  bitonic_sort(keys, n);
  for (int i = threadIdx.x; i < n; i += kSelectThreads) {
    const uint64_t key = keys[i];
    if (key == kNoKey) continue;
    const uint64_t group_start_key = key & 0xffffffff00000000ull;
    int lo = 0, hi = i;  // first index whose key >= group_start_key
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (keys[mid] < group_start_key) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    ranks[key & 0xffffu] = i - lo;
  }
  __syncthreads();
}

// Rank of eligible window position j in group g by counting (any W; O(W) per position).
__device__ int counted_rank(const SelectParams& r, int j, int g) {
  const float c = r.confidence[j];
  if (c != c) return 0;
  const uint64_t key = rank_key(c, j);
  int rank = 0;
  for (int i = 0; i < r.width; ++i) {
    if (eligible_group(r, i) != g) continue;
    const float ci = r.confidence[i];
    rank += (ci == ci && rank_key(ci, i) < key) ? 1 : 0;
  }
  return rank;
}

__device__ __forceinline__ int block_min(int v) {
  __shared__ int slots[kSelectThreads / 32];
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) v = min(v, __shfl_xor_sync(kFullMask, v, mask));
  if ((threadIdx.x & 31) == 0) slots[threadIdx.x >> 5] = v;
  __syncthreads();
  int result = slots[0];
  for (int w = 1; w < kSelectThreads / 32; ++w) result = min(result, slots[w]);
  __syncthreads();
  return result;
}

__device__ __forceinline__ int block_sum(int v) {
  __shared__ int slots[kSelectThreads / 32];
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) v += __shfl_xor_sync(kFullMask, v, mask);
  if ((threadIdx.x & 31) == 0) slots[threadIdx.x >> 5] = v;
  __syncthreads();
  int result = 0;
  for (int w = 0; w < kSelectThreads / 32; ++w) result += slots[w];
  __syncthreads();
  return result;
}

__device__ __forceinline__ float factor_threshold(float factor, int rank) {
  return static_cast<float>(1.0 - static_cast<double>(factor) / static_cast<double>(rank + 2));
}

// grid = (B), kSelectThreads threads, dynamic shared memory = next_pow2(W) * 12 bytes when
// W <= kSortCapacity, else 0. Requires W <= kMaxSelectWidth. k is [B, S] (S = num_spans).
__global__ void __launch_bounds__(kSelectThreads)
    denoise_select_kernel(int64_t* tokens, int64_t length, const int64_t* proposal, const float* confidence,
                          int width, const int64_t* window_start, const int64_t* block_start,
                          const int64_t* block_end, int64_t mask_id, int mode, const int32_t* k, int num_spans,
                          const float* tau, const float* factor, const float* p_transfer, const int32_t* span_ids,
                          const int64_t* seed, const int64_t* offset, bool* committed_out,
                          int32_t* num_committed_out) {
  extern __shared__ __align__(16) unsigned char select_smem[];
  const int b = blockIdx.x;
  SelectParams r;
  r.tokens = tokens + static_cast<int64_t>(b) * length;
  r.proposal = proposal + static_cast<int64_t>(b) * width;
  r.confidence = confidence + static_cast<int64_t>(b) * width;
  r.span_ids = span_ids != nullptr ? span_ids + static_cast<int64_t>(b) * length : nullptr;
  r.k = k + static_cast<int64_t>(b) * num_spans;
  r.num_spans = num_spans;
  r.length = length;
  r.width = width;
  r.window_start = window_start[b];
  r.block_start = block_start[b];
  r.block_end = block_end[b];
  r.mask_id = mask_id;
  r.mode = mode;
  r.tau = tau[b];
  r.factor = factor[b];
  r.p_transfer = p_transfer[b];
  r.seed = static_cast<uint64_t>(seed[b]);
  r.offset = static_cast<uint64_t>(offset[b]);
  bool* committed_row = committed_out + static_cast<int64_t>(b) * length;

  const bool sorted = width <= kSortCapacity;
  int* ranks = nullptr;
  if (mode != kBernoulli && sorted) {
    int n = 1;
    while (n < width) n <<= 1;
    uint64_t* keys = reinterpret_cast<uint64_t*>(select_smem);
    ranks = reinterpret_cast<int*>(keys + n);
    sorted_ranks(r, keys, ranks, n);
  }
  // Rank (or -1: ineligible) of this thread's window position j; NaN confidences rank 0.
  auto rank_of = [&](int j) -> int {
    if (sorted) return ranks[j];
    const int g = eligible_group(r, j);
    return g < 0 ? -1 : counted_rank(r, j, g);
  };

  int cut = width;  // factor: the lowest rank >= 1 below its threshold
  if (mode == kFactor) {
    int local = width;
    for (int j = threadIdx.x; j < width; j += kSelectThreads) {
      const int rank = rank_of(j);
      if (rank >= 1 && r.confidence[j] < factor_threshold(r.factor, rank)) local = min(local, rank);
    }
    cut = block_min(local);
  }

  // Decide every position before writing any token: eligibility reads the canvas.
  uint64_t decisions = 0ull;
  for (int j = threadIdx.x, item = 0; j < width; j += kSelectThreads, ++item) {
    bool commit = false;
    if (mode == kBernoulli) {
      if (eligible_group(r, j) >= 0) {
        const auto pos = static_cast<uint32_t>(r.window_start + j);
        commit = philox_uniform(r.seed, r.offset, kStreamTransferCoin, pos) < r.p_transfer;
      }
    } else {
      const int rank = rank_of(j);
      if (rank >= 0) {
        if (mode == kTopK) {
          const int g = r.span_ids != nullptr ? r.span_ids[r.window_start + j] : 0;
          commit = rank < r.k[g];
        } else if (mode == kThreshold) {
          commit = rank == 0 || r.confidence[j] >= r.tau;
        } else {
          commit = rank < cut;
        }
      }
    }
    decisions |= commit ? (1ull << item) : 0ull;
  }
  for (int64_t pos = threadIdx.x; pos < length; pos += kSelectThreads) committed_row[pos] = false;
  __syncthreads();

  int count = 0;
  for (int j = threadIdx.x, item = 0; j < width; j += kSelectThreads, ++item) {
    if (!((decisions >> item) & 1ull)) continue;
    const int64_t pos = r.window_start + j;
    r.tokens[pos] = r.proposal[j];
    committed_row[pos] = true;
    ++count;
  }
  const int total = block_sum(count);
  if (threadIdx.x == 0) num_committed_out[b] = total;
}

}  // namespace denoise
}  // namespace decodekit
