// Speculative verification kernels, torch-free: verify_chain and verify_tree. The spec is
// decodekit/reference/spec_verify.py (prose: the raw backend contract, sections 3.1-3.5); the RNG
// is decodekit/rng.cuh; the target's filters are sampling.cuh's, exactly as `sample` applies them.
//
// One CTA of sampling::kThreads threads per batch row walks the tree from the root, the algorithm
// of the CPU kernel (csrc/cpu/spec_verify.cpp); only the nodes on the walk are read:
//   node      scan_row (max, first argmax, NaN / +inf, top-k digit histogram), the top-k radix
//             select and top-p key when a filter is on, then one pass for S = sum exp(z - m) over
//             the kept set K (plus the entropy sum of typical rows).
//   children  every thread evaluates the same acceptance test on the same values (p(tok), the
//             coin, q(tok)), so control flow stays uniform without broadcasts. A lossless
//             rejection appends a step (token, D) to the row's step list: D is O(1) from the
//             running sum of r for a deterministic drafter, one block pass sum max(r - q, 0)
//             with draft probabilities.
//   final     Gumbel-max over the residual; each thread skips Philox for tokens whose log r plus
//             the largest possible noise is below its best score so far.
// The residual is never stored: r_i is recomputed from x_i, q_i and the step list, which is the
// contract's chain of elementwise float32 operations in its order, so no [V] workspace is needed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "decodekit/rng.cuh"
#include "decodekit/sampling.cuh"

namespace decodekit {
namespace spec_verify {

using sampling::CandidateSmem;
using sampling::DtypeTraits;
using sampling::Element;
using sampling::kNoIndex;
using sampling::kThreads;
using sampling::RadixSmem;
using sampling::SpecialKeys;

// Rejection steps of one node kept in shared memory; rows whose nodes can have more children use
// a global workspace (the launcher's caller allocates it).
constexpr int kSharedSteps = 64;

// Elements per thread the final draw scores before the CTA shares its best score (see draw_final).
constexpr int kDrawSliceWidth = 16;

enum Method : int { kLossless = 0, kGreedy = 1, kTypical = 2 };

// Greedy if method == 1 or temperature == 0; typical if method == 2; any other code is lossless.
__device__ __forceinline__ int effective_method(int32_t code, float temperature) {
  if (code == kGreedy || temperature == 0.f) return kGreedy;
  return code == kTypical ? kTypical : kLossless;
}

struct RowParams {
  int method;
  float temperature;
  int top_k;
  float top_p;
  float typical_eps;
  float typical_delta;
  uint64_t seed;
  uint64_t offset;
};

// Per-row parameter arrays, [B] each.
struct ParamArrays {
  const int32_t* method;
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* typical_eps;
  const float* typical_delta;
  const int64_t* seed;
  const int64_t* offset;

  __device__ __forceinline__ RowParams row(int b) const {
    return {effective_method(method[b], temperature[b]), temperature[b], top_k[b], top_p[b], typical_eps[b],
            typical_delta[b], static_cast<uint64_t>(seed[b]), static_cast<uint64_t>(offset[b])};
  }
};

// One lossless rejection: r -> max(r - q, 0) / divisor, where q is the draft row (token == -1)
// or, for a deterministic drafter, one_hot(token) (token == -1 too when it was out of range).
struct Step {
  int32_t token;
  float divisor;
};

// ------------------------------------------------------------------------------------------------
// Block collectives over this file's types (found by sampling::block_all_reduce through ADL)

struct DoubleSum {
  double value;
};
struct CombineDoubleSums {
  __device__ __forceinline__ DoubleSum operator()(DoubleSum a, DoubleSum b) const { return {a.value + b.value}; }
};
__device__ __forceinline__ DoubleSum shfl_xor(DoubleSum v, int mask) {
  return {__shfl_xor_sync(sampling::kFullMask, v.value, mask)};
}

__device__ __forceinline__ double block_sum(double value) {
  return sampling::block_all_reduce(DoubleSum{value}, CombineDoubleSums{}, DoubleSum{0.0}).value;
}

struct FloatMax {
  float value;
};
struct CombineFloatMax {
  __device__ __forceinline__ FloatMax operator()(FloatMax a, FloatMax b) const {
    return {a.value > b.value ? a.value : b.value};
  }
};
__device__ __forceinline__ FloatMax shfl_xor(FloatMax v, int mask) {
  return {__shfl_xor_sync(sampling::kFullMask, v.value, mask)};
}

struct IndexMin {
  int value;
};
struct CombineIndexMin {
  __device__ __forceinline__ IndexMin operator()(IndexMin a, IndexMin b) const {
    return {a.value < b.value ? a.value : b.value};
  }
};
__device__ __forceinline__ IndexMin shfl_xor(IndexMin v, int mask) {
  return {__shfl_xor_sync(sampling::kFullMask, v.value, mask)};
}

// A scored token of the final draw: the higher score wins, the lower index among equal scores.
struct Scored {
  float score;
  int index;  // kNoIndex: none
};
struct CombineScored {
  __device__ __forceinline__ Scored operator()(Scored a, Scored b) const {
    const bool a_wins = a.score > b.score || (a.score == b.score && a.index < b.index);
    return a_wins ? a : b;
  }
};
__device__ __forceinline__ Scored shfl_xor(Scored v, int mask) {
  return {__shfl_xor_sync(sampling::kFullMask, v.score, mask), __shfl_xor_sync(sampling::kFullMask, v.index, mask)};
}

// ------------------------------------------------------------------------------------------------
// The target distribution p_u at one node (contract 3.1)

struct NodeTarget {
  bool valid;
  int argmax;          // first index of the maximum of the raw logits
  float temperature;
  uint32_t tau;        // K = {key >= tau, x / t < inf}: tau > key(-inf), so -inf is never kept
  float m;             // max of z over K
  float sum;           // S, the divisor of p
  double exact_sum;    // S before rounding to float: sum_i p_i == exact_sum / sum up to rounding
  float typical_threshold;
};

// e_i = exp(z_i - m) on K, else 0.
__device__ __forceinline__ float kept_mass(const NodeTarget& nt, const Element& e) {
  const float z = e.value / nt.temperature;
  return e.key >= nt.tau && z < INFINITY ? expf(z - nt.m) : 0.f;
}

template <typename T>
__device__ __forceinline__ Element element_at(const T* row, int i) {
  return sampling::decode_bits<T>(DtypeTraits<T>::to_bits(row[i]));
}

// Validity, argmax and, for sampled rows, K, m, S and the typical threshold. Collective: every
// thread of the CTA calls it and gets the same result.
template <typename T>
__device__ NodeTarget analyse_node(const T* row, int vocab, const RowParams& p, RadixSmem& radix,
                                   CandidateSmem& cands) {
  using Keys = SpecialKeys<T>;
  const bool greedy = p.method == kGreedy;
  const bool top_k_on = !greedy && p.top_k > 0 && p.top_k < vocab;
  const sampling::RowStats stats = sampling::scan_row(row, vocab, Keys::kNegInf, top_k_on ? radix.counts : nullptr);
  const uint32_t max_key = stats.max_key();
  NodeTarget nt{false, stats.argmax(), p.temperature, Keys::kPosInf, 0.f, 1.f, 1.0, 0.f};
  // NaN or +inf anywhere, or nothing above -inf (sampling.invalid_rows).
  if (sampling::has_nan<T>(stats) || max_key == Keys::kPosInf || max_key == Keys::kNegInf) return nt;
  if (greedy) {
    nt.valid = true;
    return nt;
  }

  const float t = p.temperature;
  float m = sampling::key_to_float<T>(max_key) / t;
  const sampling::KeptRange range =
      sampling::top_k_range(row, vocab, p.top_k, top_k_on, Keys::kNegInf, stats, radix);
  nt.tau = range.lo_key;
  if (isfinite(m)) {
    if (p.top_p < 1.f) {
      nt.tau = sampling::top_p_key(row, vocab, range, p.top_p, sampling::TemperedMass{t, m}, max_key, radix, cands);
    }
  } else {
    // x / t overflowed (kept_mask's masses are exp(inf - inf) = NaN there): top-p then keeps only
    // the overflowing top group, which min-p's test (NaN >= 0) drops, so K is empty; without
    // top-p, K is the top-k set minus the overflowing tokens. m == -inf makes S NaN.
    if (m == -INFINITY || p.top_p < 1.f) return nt;
    float local = -INFINITY;
    sampling::for_each_element(row, vocab, [&](const Element& e, int, bool active) {
      const float z = e.value / t;
      if (active && e.key >= nt.tau && z < INFINITY && z > local) local = z;
    });
    m = sampling::block_all_reduce(FloatMax{local}, CombineFloatMax{}, FloatMax{-INFINITY}).value;
    if (!(m > -INFINITY)) return nt;
  }
  nt.m = m;

  const bool typical = p.method == kTypical;
  double sum = 0.0, weighted = 0.0;
  sampling::for_each_element(row, vocab, [&](const Element& e, int, bool active) {
    if (!active) return;
    const float mass = kept_mass(nt, e);
    sum += mass;
    // e == 0 where z == -inf, and 0 * -inf is NaN: such terms are skipped, not multiplied.
    if (typical && mass > 0.f) weighted += static_cast<double>(mass) * (e.value / t - m);
  });
  sum = block_sum(sum);
  if (typical) weighted = block_sum(weighted);
  nt.exact_sum = sum;
  nt.sum = static_cast<float>(sum);
  if (!isfinite(nt.sum) || !(nt.sum > 0.f)) return nt;
  if (typical) {
    const float entropy = logf(nt.sum) - static_cast<float>(weighted) / nt.sum;
    nt.typical_threshold = fminf(p.typical_eps, p.typical_delta * expf(-entropy));
  }
  nt.valid = true;
  return nt;
}

// ------------------------------------------------------------------------------------------------
// The lossless residual (contract 3.3), recomputed elementwise from the step list

__device__ __forceinline__ float residual_step(float r, float q, float divisor) {
  const float diff = r - q;
  return (diff > 0.f ? diff : 0.f) / divisor;  // NaN compares false: 0
}

struct Residual {
  const float* q;     // draft row q_u [V], or nullptr for a deterministic drafter
  const Step* steps;  // the rejections so far at this node
  int count;
  double sum;         // sum_i r_i (deterministic drafter)

  // r_i given p_i and (draft probabilities) q_i.
  __device__ __forceinline__ float value(float p_i, float q_i, int i) const {
    float r = p_i;
    for (int s = 0; s < count; ++s) {
      const Step step = steps[s];
      r = residual_step(r, q != nullptr ? q_i : (i == step.token ? 1.f : 0.f), step.divisor);
    }
    return r;
  }

  template <typename T>
  __device__ __forceinline__ float at(const T* row, const NodeTarget& nt, int i) const {
    const float p_i = kept_mass(nt, element_at(row, i)) / nt.sum;
    return value(p_i, q != nullptr ? q[i] : 0.f, i);
  }
};

// Appends the update after rejecting a child with `token` (in_range: 0 <= token < V). Collective.
template <typename T>
__device__ void reject(const T* row, int vocab, const NodeTarget& nt, Residual& res, Step* steps, int64_t token,
                       bool in_range) {
  double total;
  if (res.q == nullptr) {
    // sum_i d_i = sum_i r_i - r_tok + max(r_tok - 1, 0): O(1) with the running sum of r.
    total = res.sum;
    if (in_range) {
      const float r_tok = res.at(row, nt, static_cast<int>(token));
      const float diff = r_tok - 1.f;
      total += static_cast<double>(diff > 0.f ? diff : 0.f) - r_tok;
    }
  } else {
    double local = 0.0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float q_i = res.q[i];
      const float r = res.value(kept_mass(nt, element_at(row, i)) / nt.sum, q_i, i);
      const float diff = r - q_i;
      local += diff > 0.f ? diff : 0.f;
    }
    total = block_sum(local);
  }
  const float divisor = static_cast<float>(total);
  if (!(divisor > 0.f) || !isfinite(divisor)) return;  // degenerate: r unchanged (uniform branch)
  if (threadIdx.x == 0) steps[res.count] = {res.q == nullptr && in_range ? static_cast<int32_t>(token) : -1, divisor};
  __syncthreads();
  res.count += 1;
  res.sum = total / divisor;
}

// Gumbel-max over r (contract 3.4): the first index of the maximum of log(r_i) - log(-log(u_i))
// over r_i > 0; if every such score is -inf, the first i with r_i > 0; V if there is none.
// `hint` (the node's argmax) seeds every thread's best score. Collective.
template <typename T>
__device__ int draw_final(const T* row, int vocab, const NodeTarget& nt, const Residual& res, const RowParams& p,
                          int hint) {
  auto score_of = [&](float log_r, int i) {
    const float u = philox_uniform(p.seed, p.offset, kStreamResidualToken, static_cast<uint32_t>(i));
    return log_r - logf(-logf(u));
  };
  Scored best{-INFINITY, kNoIndex};
  const float r_hint = res.at(row, nt, hint);
  if (r_hint > 0.f) {
    const float score = score_of(logf(r_hint), hint);
    if (score > -INFINITY) best = {score, hint};
  }
  int first_eligible = kNoIndex;
  auto visit = [&](int i) {
    const float p_i = kept_mass(nt, element_at(row, i)) / nt.sum;
    // q only matters once a rejection step exists: a bonus draw never reads the draft row.
    const float r = res.value(p_i, res.q != nullptr && res.count > 0 ? res.q[i] : 0.f, i);
    if (!(r > 0.f)) return;
    first_eligible = min(first_eligible, i);
    const float log_r = logf(r);
    // The noise is at most kMaxGumbelNoise and rounding is monotone, so such a score is strictly
    // below best and can neither win nor tie.
    if (log_r + sampling::kMaxGumbelNoise < best.score) return;
    const float score = score_of(log_r, i);
    if (score > -INFINITY && CombineScored{}(Scored{score, i}, best).index == i) best = {score, i};
  };
  // A first slice of the row, then every thread continues from the block's best so far: pruning
  // against the block's best skips far more Philox draws than each thread's own best would.
  const int slice = min(vocab, kThreads * kDrawSliceWidth);
  for (int i = threadIdx.x; i < slice; i += kThreads) visit(i);
  best = sampling::block_all_reduce(best, CombineScored{}, Scored{-INFINITY, kNoIndex});
  for (int i = slice + threadIdx.x; i < vocab; i += kThreads) visit(i);
  best = sampling::block_all_reduce(best, CombineScored{}, Scored{-INFINITY, kNoIndex});
  if (best.index != kNoIndex) return best.index;
  first_eligible = sampling::block_all_reduce(IndexMin{first_eligible}, CombineIndexMin{}, IndexMin{kNoIndex}).value;
  return first_eligible != kNoIndex ? first_eligible : vocab;
}

// ------------------------------------------------------------------------------------------------
// Node links, read as the contract says: a link is used only if it points forward inside the row

struct ChainLinks {
  const int64_t* draft_tokens;  // [B, n]
  int n;

  __device__ __forceinline__ ChainLinks row(int b) const { return {draft_tokens + static_cast<int64_t>(b) * n, n}; }
  __device__ __forceinline__ int child(int u) const { return u < n ? u + 1 : -1; }
  __device__ __forceinline__ int sibling(int) const { return -1; }
  __device__ __forceinline__ int64_t token(int c) const { return draft_tokens[c - 1]; }
};

struct TreeLinks {
  const int64_t* tokens;        // [B, N]
  const int32_t* first_child;   // [B, N]
  const int32_t* next_sibling;  // [B, N]
  int nodes;

  __device__ __forceinline__ TreeLinks row(int b) const {
    const int64_t start = static_cast<int64_t>(b) * nodes;
    return {tokens + start, first_child + start, next_sibling + start, nodes};
  }
  __device__ __forceinline__ int child(int u) const {
    const int c = first_child[u];
    return c > u && c < nodes ? c : -1;
  }
  __device__ __forceinline__ int sibling(int c) const {
    const int s = next_sibling[c];
    return s > c && s < nodes ? s : -1;
  }
  __device__ __forceinline__ int64_t token(int c) const { return tokens[c]; }
};

struct Outputs {
  int32_t* accepted_nodes;  // [B, W] or nullptr (chains)
  int64_t* tokens;          // [B, W]
  int width;
  int32_t* num_accepted;
  int32_t* num_emitted;
  bool* valid;
};

// ------------------------------------------------------------------------------------------------
// The walk (contract 3, 3.5). grid = (B): one CTA per batch row.
//   logits      [B, nodes, V] (chains: nodes = n + 1)
//   draft_probs [B, q_rows, V] float32 or nullptr (q_rows = n for chains, N for trees)
//   step_workspace [B, step_capacity] when step_capacity > kSharedSteps, else unused

template <typename T, typename Links>
__global__ void __launch_bounds__(kThreads, 1)
    verify_kernel(const T* logits, int nodes, int vocab, Links all_links, const float* draft_probs, int q_rows,
                  ParamArrays params, Step* step_workspace, int step_capacity, Outputs out) {
  __shared__ RadixSmem radix;
  __shared__ CandidateSmem cands;
  __shared__ Step shared_steps[kSharedSteps];
  const int b = blockIdx.x;
  const RowParams p = params.row(b);
  const Links links = all_links.row(b);
  const T* row_logits = logits + static_cast<int64_t>(b) * nodes * vocab;
  const float* row_q = draft_probs != nullptr ? draft_probs + static_cast<int64_t>(b) * q_rows * vocab : nullptr;
  Step* steps = step_capacity <= kSharedSteps ? shared_steps : step_workspace + static_cast<int64_t>(b) * step_capacity;
  int64_t* tokens = out.tokens + static_cast<int64_t>(b) * out.width;
  int32_t* path = out.accepted_nodes != nullptr ? out.accepted_nodes + static_cast<int64_t>(b) * out.width : nullptr;
  for (int i = threadIdx.x; i < out.width; i += kThreads) {
    tokens[i] = -1;
    if (path != nullptr) path[i] = -1;
  }

  int node = 0, accepted = 0;
  while (true) {
    const T* x = row_logits + static_cast<int64_t>(node) * vocab;
    const NodeTarget nt = analyse_node(x, vocab, p, radix, cands);
    if (!nt.valid) {
      __syncthreads();  // the earlier writes of this row's outputs are all done
      if (threadIdx.x == 0) {
        for (int i = 0; i < out.width; ++i) {
          tokens[i] = -1;
          if (path != nullptr) path[i] = -1;
        }
        out.num_accepted[b] = 0;
        out.num_emitted[b] = 0;
        out.valid[b] = false;
      }
      return;
    }
    if (threadIdx.x == 0 && path != nullptr) path[accepted] = node;
    // Only lossless rows read q (typical rows never do), and a chain's last node (a leaf) has none.
    const float* q = p.method == kLossless && row_q != nullptr && node < q_rows
                         ? row_q + static_cast<int64_t>(node) * vocab
                         : nullptr;
    Residual res{q, steps, 0, nt.exact_sum / nt.sum};

    int next = -1;
    int64_t next_token = -1;
    for (int c = accepted < out.width - 1 ? links.child(node) : -1; c >= 0; c = links.sibling(c)) {
      const int64_t token = links.token(c);
      const bool in_range = token >= 0 && token < vocab;
      bool accept;
      if (p.method == kGreedy) {
        accept = token == nt.argmax;
      } else if (p.method == kTypical) {
        accept = in_range && kept_mass(nt, element_at(x, static_cast<int>(token))) / nt.sum > nt.typical_threshold;
      } else {
        const float q_token = !in_range ? 0.f : q != nullptr ? q[token] : 1.f;
        const float product = philox_uniform(p.seed, p.offset, kStreamAcceptCoin, static_cast<uint32_t>(c)) * q_token;
        accept = in_range && product < res.at(x, nt, static_cast<int>(token));
        // Rejections beyond the step capacity cannot happen: a node has fewer than `nodes` children.
        if (!accept) reject(x, vocab, nt, res, steps, token, in_range);
      }
      if (accept) {
        next = c;
        next_token = token;
        break;
      }
    }
    if (next >= 0) {
      if (threadIdx.x == 0) tokens[accepted] = next_token;
      ++accepted;
      node = next;
      continue;
    }
    const int final_token = p.method == kGreedy ? nt.argmax : draw_final(x, vocab, nt, res, p, nt.argmax);
    if (threadIdx.x == 0) {
      tokens[accepted] = final_token;
      out.num_accepted[b] = accepted;
      out.num_emitted[b] = accepted + 1;
      out.valid[b] = true;
    }
    return;
  }
}

}  // namespace spec_verify
}  // namespace decodekit
