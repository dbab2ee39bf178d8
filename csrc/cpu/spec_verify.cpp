// C++ CPU kernels of the `spec_verify` op family. The spec is decodekit/reference/spec_verify.py
// (its prose form: the walk of one row, sections 3.1-3.5 of the raw backend contract).
//
// One task per batch row (at::parallel_for) walks the tree from the root, and only the nodes on
// the walk are read: a row that stops early touches one [V] row of logits, not N.
//   1. node      scan (max, first argmax, NaN, block maxima, top-k buffer) and, for sampled rows,
//                the top-k -> top-p floor (both from sampling_row.h, shared with `sample`) and one
//                pass for S = sum exp(z - m) (plus the entropy sum of typical rows). After that
//                p_u(tok) costs O(1) for any token.
//   2. children  greedy / typical / lossless acceptance of each child in index order. A lossless
//                rejection updates the residual: for a deterministic drafter in O(1) (the
//                residual is p with the rejected tokens zeroed and a list of divisors), with
//                draft probabilities in one pass that stores max(r - q, 0).
//   3. final     Gumbel-max over the residual with Philox, skipping blocks whose largest residual
//                cannot beat the best score so far (most of a peaked distribution's vocabulary).
// Every elementwise formula is the contract's, in float32 and in its order of operations;
// reductions (S, the entropy sum, the residual sums D) are accumulated in double.
#include "spec_verify.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>

#include <decodekit/rng.cuh>

#include "cpu_math.h"
#include "philox_simd.h"
#include "sampling_row.h"

namespace decodekit::cpu {
namespace {

using namespace rows;  // the shared row building blocks (sampling_row.h)

enum class Method { kLossless, kGreedy, kTypical };

// Greedy if method == 1 or temperature == 0; typical if method == 2; any other code is lossless.
Method effective_method(int32_t code, float temperature) {
  if (code == 1 || temperature == 0.0f) return Method::kGreedy;
  return code == 2 ? Method::kTypical : Method::kLossless;
}

struct RowParams {
  Method method;
  float temperature;
  int64_t top_k;
  float top_p;
  float typical_eps;
  float typical_delta;
  uint64_t seed;
  uint64_t offset;

  float coin(int64_t node) const {
    return decodekit::philox_uniform(seed, offset, kStreamAcceptCoin, static_cast<uint32_t>(node));
  }
  // u[c] = the final-draw uniform of vocab id begin + lanes[c], for c < count.
  void residual_uniforms(int64_t begin, const int32_t* lanes, int64_t count, float* u) const {
    philox_uniforms_at(seed, offset, kStreamResidualToken, static_cast<uint32_t>(begin), lanes, count, u);
  }
};

// ---------------------------------------------------------------------------------------------
// The target distribution p_u at one node (contract 3.1): K = kept set of top-k -> top-p,
// e_i = exp(z_i - m) on K, p_i = e_i / S.

template <typename T>
struct NodeTarget {
  RowView<T> row;
  const float* block_max = nullptr;  // per-block maxima of x (the scan's; valid while this node is)
  bool valid = false;
  int64_t argmax = 0;  // first index of the maximum of the raw logits
  float temperature = 1.0f;
  float floor = -kInf;  // K = {x > -inf, x >= floor, x / t < inf}
  float m = 0.0f;       // max of z over K
  float sum = 1.0f;     // S in float32, the divisor of p
  double exact_sum = 1.0;  // S in double: sum_i p_i == exact_sum / sum up to per-element rounding
  float typical_threshold = 0.0f;

  // `&` rather than `&&` and select(): no branches, so the block loops vectorise.
  bool kept(float x, float z) const { return (x > -kInf) & (x >= floor) & (z < kInf); }
  bool block_has_kept(int64_t b) const { return (block_max[b] > -kInf) & (block_max[b] >= floor); }

  void mass_block(const float* x, int64_t n, float* e) const {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float z = x[j] / temperature;
      e[j] = select(kept(x[j], z), fast_exp(z - m), 0.0f);
    }
  }
  float mass_at(int64_t i) const {
    const float x = row.at(i);
    const float z = x / temperature;
    return kept(x, z) ? fast_exp(z - m) : 0.0f;
  }
  float prob_at(int64_t i) const { return mass_at(i) / sum; }
  // Largest e in block b up to fast_exp's rounding (callers add slack): exp is monotone.
  float mass_bound(int64_t b) const {
    return block_has_kept(b) ? fast_exp(block_max[b] / temperature - m) : 0.0f;
  }
};

// Validity, argmax and (sampled rows) K, m, S and the typical threshold of one node: a scan, the
// top-k -> top-p floor when a filter is on, and one pass for S (and T = sum over K with e > 0 of
// e * (z - m), the entropy's numerator, for typical rows).
template <typename T>
NodeTarget<T> analyse_node(const RowView<T>& row, const RowParams& p, RowWorkspace& ws) {
  NodeTarget<T> target{row};
  const bool greedy = p.method == Method::kGreedy;
  std::optional<TopKCollector> top_k;
  if (!greedy && top_k_active(p.top_k, row.size)) top_k.emplace(p.top_k, -kInf, ws.values);
  TopKCollector* const collector = top_k ? &*top_k : nullptr;
  const RowScan scan = scan_row(row, ws, collector);
  target.block_max = ws.block_max.data();
  // NaN or +inf anywhere, or nothing above -inf (sampling.invalid_rows).
  if (scan.has_nan || scan.max == kInf || scan.max == -kInf) return target;
  target.argmax = scan.argmax;
  if (greedy) {
    target.valid = true;
    return target;
  }

  target.temperature = p.temperature;
  float m = scan.max / p.temperature;
  if (std::isfinite(m)) {
    target.floor = top_k_top_p_floor(row, collector, -kInf, TemperedMass{p.temperature, m},
                                     p.top_p, scan.max, ws);
  } else {
    // x / t overflowed (kept_mask's masses are exp(inf - inf) = NaN there): top-p then keeps
    // only the overflowing top group, which min-p's test (NaN >= 0) drops, so K is empty; without
    // top-p, K is the top-k set minus the overflowing tokens. m == -inf makes S NaN.
    if (m == -kInf || p.top_p < 1.0f) return target;
    target.floor = collector != nullptr ? collector->finish() : -kInf;
    const TemperedMax top = largest_non_overflowing(row, target.floor, p.temperature);
    if (top.index < 0 || top.z == -kInf) return target;
    m = top.z;
  }
  target.m = m;
  const bool typical = p.method == Method::kTypical;
  double sum = 0.0, weighted = 0.0;
  alignas(64) float buffer[kBlock], e[kBlock];
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    if (!target.block_has_kept(b)) continue;
    const int64_t n = row.block_size(b);
    const float* x = row.load(b, buffer);
    target.mass_block(x, n, e);
    float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
    for (int64_t j = 0; j < n; ++j) block_sum += e[j];
    sum += block_sum;
    if (typical) {
      float block_weighted = 0.0f;
      const float t = p.temperature;
#pragma omp simd reduction(+ : block_weighted)
      for (int64_t j = 0; j < n; ++j) {
        // e == 0 where z == -inf, and 0 * -inf is NaN: the term is selected away instead.
        block_weighted += select(e[j] > 0.0f, e[j] * (x[j] / t - m), 0.0f);
      }
      weighted += block_weighted;
    }
  }
  target.exact_sum = sum;
  target.sum = static_cast<float>(sum);
  if (!std::isfinite(target.sum) || !(target.sum > 0.0f)) return target;
  if (typical) {
    const float s = target.sum;
    const float entropy = std::log(s) - static_cast<float>(weighted) / s;
    target.typical_threshold = std::min(p.typical_eps, p.typical_delta * std::exp(-entropy));
  }
  target.valid = true;
  return target;
}

// ---------------------------------------------------------------------------------------------
// The lossless residual r at one node (contract 3.3), from p through the rejections so far.

// One rejection of a deterministic drafter: q = one_hot(token) (token -1: out of range, q = 0).
struct Rejection {
  int64_t token;
  float divisor;  // D of this update
};

// r -> max(r - q_i, 0) / D, in the contract's order of operations.
inline float residual_step(float r, float q, float divisor) {
  const float diff = r - q;
  return select(diff > 0.0f, diff, 0.0f) / divisor;
}

// Blocks the final draw scores first, largest residual bound first.
constexpr int64_t kSeedBlocks = 32;

// Blocks per task when one row's final draw is split over threads (fewer rows than threads).
constexpr int64_t kDrawBlocksPerTask = 256;

struct ResidualWorkspace {
  std::vector<float> numerators, spare;  // stored d = max(r - q, 0) (draft probabilities only)
  std::vector<float> block_max, spare_block_max;
  std::vector<float> bounds;
  std::vector<int64_t> order;
  std::vector<Rejection> rejections;
};

template <typename T>
class Residual {
 public:
  // q: the draft distribution q_u [V] of this node's children, or nullptr (deterministic drafter).
  Residual(const NodeTarget<T>& target, const float* q, ResidualWorkspace& ws)
      : target_(target), q_(q), ws_(ws), sum_(target.exact_sum / target.sum) {
    ws_.rejections.clear();
  }

  float at(int64_t i) const {
    if (stored_) return ws_.numerators[i] / scale_;
    float r = target_.prob_at(i);
    for (const Rejection& s : ws_.rejections) r = residual_step(r, i == s.token ? 1.0f : 0.0f, s.divisor);
    return r;
  }

  // r over block b.
  void block(int64_t b, float* r) const {
    const int64_t n = target_.row.block_size(b);
    if (stored_) {
      const float* numerators = ws_.numerators.data() + b * kBlock;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) r[j] = numerators[j] / scale_;
      return;
    }
    alignas(64) float buffer[kBlock];
    target_.mass_block(target_.row.load(b, buffer), n, r);
    const float sum = target_.sum;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) r[j] = r[j] / sum;
    for (const Rejection& s : ws_.rejections) {
      const int64_t hit = s.token - b * kBlock;  // outside [0, n) when the token is elsewhere
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) r[j] = residual_step(r[j], j == hit ? 1.0f : 0.0f, s.divisor);
    }
  }

  // An upper bound of r over block b, up to fast_exp's rounding: every step is monotone.
  float bound(int64_t b) const {
    if (stored_) return ws_.block_max[b] / scale_;
    float r = target_.mass_bound(b) / target_.sum;
    for (const Rejection& s : ws_.rejections) r = r / s.divisor;
    return r;
  }

  // The update after rejecting a child with token `token` (in_range: 0 <= token < V).
  void reject(int64_t token, bool in_range) {
    if (q_ == nullptr) return reject_deterministic(token, in_range);
    const RowView<T>& row = target_.row;
    const int64_t blocks = row.num_blocks();
    ws_.spare.resize(row.size);
    ws_.spare_block_max.resize(blocks);
    double total = 0.0;
    alignas(64) float r[kBlock];
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = row.block_size(b);
      block(b, r);
      const float* q = q_ + b * kBlock;
      float* d = ws_.spare.data() + b * kBlock;
      float block_sum = 0.0f, block_max = 0.0f;
#pragma omp simd reduction(+ : block_sum) reduction(max : block_max)
      for (int64_t j = 0; j < n; ++j) {
        const float diff = r[j] - q[j];
        d[j] = select(diff > 0.0f, diff, 0.0f);  // NaN compares false: 0
        block_sum += d[j];
        block_max = d[j] > block_max ? d[j] : block_max;
      }
      total += block_sum;
      ws_.spare_block_max[b] = block_max;
    }
    const float divisor = static_cast<float>(total);
    if (!(divisor > 0.0f) || !std::isfinite(divisor)) return;  // degenerate: r unchanged
    std::swap(ws_.numerators, ws_.spare);
    std::swap(ws_.block_max, ws_.spare_block_max);
    scale_ = divisor;
    stored_ = true;
  }

  // Gumbel-max over r (contract 3.4): the first index of the maximum of
  // log(r_i) - log(-log(u_i)) over r_i > 0.
  int64_t draw(const RowParams& p) const {
    const int64_t blocks = target_.row.num_blocks();
    ws_.bounds.resize(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      // Slack for fast_exp's rounding (<= 1.5 ulp) and the divisions after it.
      ws_.bounds[b] = bound(b) * 1.00001f;
    }
    // The blocks holding the largest r first: their winner raises the best score close to its
    // final value, so the rest of the row is pruned as early as possible.
    const int64_t seeds = std::min(blocks, kSeedBlocks);
    ws_.order.resize(blocks);
    std::iota(ws_.order.begin(), ws_.order.end(), int64_t{0});
    std::partial_sort(ws_.order.begin(), ws_.order.begin() + seeds, ws_.order.end(),
                      [&](int64_t a, int64_t b) { return ws_.bounds[a] > ws_.bounds[b]; });
    ScoredToken best;
    for (int64_t s = 0; s < seeds; ++s) {
      const int64_t b = ws_.order[s];
      if (ws_.bounds[b] > 0.0f && !(fast_log(ws_.bounds[b]) < min_competitive_z(best.score))) {
        best = score_block(b, p, best);
      }
      ws_.bounds[b] = 0.0f;  // done: skipped below
    }
    // The rest, split over threads when the row is alone (inside a row-parallel region this runs
    // serially). The merge is order-free (score, then index), so the split never changes the token.
    const ScoredToken seeded = best;
    best = at::parallel_reduce(
        0, blocks, kDrawBlocksPerTask, seeded,
        [&](int64_t first, int64_t last, ScoredToken chunk_best) {
          for (int64_t b = first; b < last; ++b) {
            if (!(ws_.bounds[b] > 0.0f)) continue;
            if (fast_log(ws_.bounds[b]) < min_competitive_z(chunk_best.score)) continue;
            chunk_best = score_block(b, p, chunk_best);
          }
          return chunk_best;
        },
        ScoredToken::better);
    return best.index >= 0 ? best.index : first_eligible();
  }

 private:
  void reject_deterministic(int64_t token, bool in_range) {
    // sum_i d_i = sum_i r_i - r_tok + max(r_tok - 1, 0): O(1) with the running sum of r.
    double total = sum_;
    if (in_range) {
      const float r_tok = at(token);
      const float diff = r_tok - 1.0f;
      total += static_cast<double>(diff > 0.0f ? diff : 0.0f) - r_tok;
    }
    const float divisor = static_cast<float>(total);
    if (!(divisor > 0.0f) || !std::isfinite(divisor)) return;  // degenerate: r unchanged
    ws_.rejections.push_back({in_range ? token : -1, divisor});
    sum_ = total / divisor;
  }

  ScoredToken score_block(int64_t b, const RowParams& p, ScoredToken best) const {
    const int64_t n = target_.row.block_size(b);
    alignas(64) float r[kBlock], log_r[kBlock], score[kBlock];
    alignas(64) int32_t lanes[kBlock];
    block(b, r);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) log_r[j] = fast_log(r[j]);
    // Only eligible tokens that can still win get a Philox draw: their score is at most
    // log r + kMaxGumbelNoise, and an exact tie with `best` is never skipped.
    const float min_log_r = min_competitive_z(best.score);
    int64_t count = 0;
    for (int64_t j = 0; j < n; ++j) {
      lanes[count] = static_cast<int32_t>(j);
      count += static_cast<int64_t>((r[j] > 0.0f) & (log_r[j] >= min_log_r));
    }
    const int64_t begin = b * kBlock;
    alignas(64) float u[kBlock];
    p.residual_uniforms(begin, lanes, count, u);
    float block_best = -kInf;
#pragma omp simd reduction(max : block_best)
    for (int64_t c = 0; c < count; ++c) {
      score[c] = log_r[lanes[c]] - fast_log(-fast_log(u[c]));
      block_best = score[c] > block_best ? score[c] : block_best;
    }
    // -inf scores (u == 0) never win here; if every eligible token has one, first_eligible decides.
    if (!(block_best > -kInf)) return best;
    int64_t c = 0;
    while (score[c] != block_best) ++c;
    return ScoredToken::better(best, ScoredToken{block_best, begin + lanes[c]});
  }

  // The reference's tie rule when every eligible score is -inf; V when nothing is eligible.
  int64_t first_eligible() const {
    alignas(64) float r[kBlock];
    for (int64_t b = 0; b < target_.row.num_blocks(); ++b) {
      block(b, r);
      for (int64_t j = 0; j < target_.row.block_size(b); ++j) {
        if (r[j] > 0.0f) return b * kBlock + j;
      }
    }
    return target_.row.size;
  }

  const NodeTarget<T>& target_;
  const float* q_;
  ResidualWorkspace& ws_;
  double sum_;  // sum_i r_i (deterministic drafter)
  bool stored_ = false;  // r_i = numerators[i] / scale_ (draft probabilities after a rejection)
  float scale_ = 1.0f;
};

// ---------------------------------------------------------------------------------------------
// The walk of one row (contract 3, 3.5).

// Node links of a tree, read as the contract says: a child link is used only if it points
// forward inside the row, a sibling link only if it points past its node; otherwise -1.
struct TreeLinks {
  const int64_t* tokens;
  const int32_t* first_child;
  const int32_t* next_sibling;
  int64_t nodes;

  int64_t child(int64_t u) const {
    const int64_t c = first_child[u];
    return c > u && c < nodes ? c : -1;
  }
  int64_t sibling(int64_t c) const {
    const int64_t s = next_sibling[c];
    return s > c && s < nodes ? s : -1;
  }
  int64_t token(int64_t c) const { return tokens[c]; }
};

// A chain is the path tree: node j + 1 is draft token j, child of node j.
struct ChainLinks {
  const int64_t* draft_tokens;
  int64_t n;

  int64_t child(int64_t u) const { return u < n ? u + 1 : -1; }
  int64_t sibling(int64_t) const { return -1; }
  int64_t token(int64_t c) const { return draft_tokens[c - 1]; }
};

struct Workspace {
  RowWorkspace row;
  ResidualWorkspace residual;
};

struct RowOutputs {
  int32_t* path;    // [W] accepted node ids, or nullptr (chains)
  int64_t* tokens;  // [W]
  int64_t width;
  int32_t* num_accepted;
  int32_t* num_emitted;
  bool* valid;
};

// logits: the row's [nodes, V] target logits; draft: its [nodes, V] draft distributions (row u =
// q_u) or nullptr.
template <typename T, typename Links>
void verify_row(const T* logits, const float* draft, int64_t vocab, const Links& links,
                const RowParams& p, const RowOutputs& out, Workspace& ws) {
  std::fill(out.tokens, out.tokens + out.width, int64_t{-1});
  if (out.path != nullptr) std::fill(out.path, out.path + out.width, -1);
  int64_t node = 0, accepted = 0;
  while (true) {
    const NodeTarget<T> target = analyse_node(RowView<T>{logits + node * vocab, vocab}, p, ws.row);
    if (!target.valid) {
      std::fill(out.tokens, out.tokens + out.width, int64_t{-1});
      if (out.path != nullptr) std::fill(out.path, out.path + out.width, -1);
      *out.num_accepted = 0;
      *out.num_emitted = 0;
      *out.valid = false;
      return;
    }
    if (out.path != nullptr) out.path[accepted] = static_cast<int32_t>(node);
    // Only lossless rows read q; a chain's last node (a leaf, no q row) never tests a child.
    const float* q =
        p.method == Method::kLossless && draft != nullptr ? draft + node * vocab : nullptr;
    std::optional<Residual<T>> residual;
    if (p.method != Method::kGreedy) residual.emplace(target, q, ws.residual);

    int64_t next = -1, next_token = -1;
    for (int64_t c = accepted < out.width - 1 ? links.child(node) : -1; c >= 0; c = links.sibling(c)) {
      const int64_t token = links.token(c);
      const bool in_range = token >= 0 && token < vocab;
      bool accept;
      if (p.method == Method::kGreedy) {
        accept = token == target.argmax;
      } else if (p.method == Method::kTypical) {
        accept = in_range && target.prob_at(token) > target.typical_threshold;
      } else {
        const float q_token = !in_range ? 0.0f : q != nullptr ? q[token] : 1.0f;
        const float product = p.coin(c) * q_token;
        accept = in_range && product < residual->at(token);
        if (!accept) residual->reject(token, in_range);
      }
      if (accept) {
        next = c;
        next_token = token;
        break;
      }
    }
    if (next >= 0) {
      out.tokens[accepted] = next_token;
      ++accepted;
      node = next;
      continue;
    }
    out.tokens[accepted] = p.method == Method::kGreedy ? target.argmax : residual->draw(p);
    *out.num_accepted = static_cast<int32_t>(accepted);
    *out.num_emitted = static_cast<int32_t>(accepted + 1);
    *out.valid = true;
    return;
  }
}

struct RowParamTensors {
  const int32_t* method;
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* typical_eps;
  const float* typical_delta;
  const int64_t* seed;
  const int64_t* offset;

  RowParams row(int64_t b) const {
    return {effective_method(method[b], temperature[b]), temperature[b], top_k[b], top_p[b],
            typical_eps[b], typical_delta[b], static_cast<uint64_t>(seed[b]),
            static_cast<uint64_t>(offset[b])};
  }
};

RowParamTensors row_params(const at::Tensor& method, const at::Tensor& temperature,
                           const at::Tensor& top_k, const at::Tensor& top_p,
                           const at::Tensor& typical_eps, const at::Tensor& typical_delta,
                           const at::Tensor& seed, const at::Tensor& offset) {
  return {method.data_ptr<int32_t>(),      temperature.data_ptr<float>(),
          top_k.data_ptr<int32_t>(),       top_p.data_ptr<float>(),
          typical_eps.data_ptr<float>(),   typical_delta.data_ptr<float>(),
          seed.data_ptr<int64_t>(),        offset.data_ptr<int64_t>()};
}

// One thread per row with its own workspace; with fewer rows than threads the rows run one after
// another and each final draw (most of a row's work) is split over the threads instead.
template <typename Fn>
void for_each_batch_row(int64_t rows, Fn&& fn) {
  if (rows < at::get_num_threads()) {
    Workspace ws;
    for (int64_t b = 0; b < rows; ++b) fn(b, ws);
    return;
  }
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    Workspace ws;
    for (int64_t b = begin; b < end; ++b) fn(b, ws);
  });
}

}  // namespace

void verify_chain(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                  const at::Tensor& draft_probs, bool has_draft_probs, const at::Tensor& method,
                  const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                  const at::Tensor& typical_eps, const at::Tensor& typical_delta,
                  const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& tokens_out,
                  const at::Tensor& num_accepted_out, const at::Tensor& num_emitted_out,
                  const at::Tensor& valid_out) {
  const int64_t batch = target_logits.size(0), positions = target_logits.size(1);
  const int64_t vocab = target_logits.size(2), n = positions - 1;
  const RowParamTensors params =
      row_params(method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset);
  const int64_t* drafts = draft_tokens.data_ptr<int64_t>();
  const float* q = has_draft_probs ? draft_probs.data_ptr<float>() : nullptr;
  int64_t* tokens = tokens_out.data_ptr<int64_t>();
  int32_t* num_accepted = num_accepted_out.data_ptr<int32_t>();
  int32_t* num_emitted = num_emitted_out.data_ptr<int32_t>();
  bool* valid = valid_out.data_ptr<bool>();
  dispatch_float_types(target_logits, "verify_chain", [&](auto tag) {
    using T = decltype(tag);
    const T* logits = target_logits.data_ptr<T>();
    for_each_batch_row(batch, [&](int64_t b, Workspace& ws) {
      // draft_probs has n rows per batch row: row j is q of node j (node n, the leaf, has none).
      const float* row_q = q != nullptr ? q + b * n * vocab : nullptr;
      const RowOutputs out{nullptr,          tokens + b * positions, positions,
                           num_accepted + b, num_emitted + b,        valid + b};
      verify_row(logits + b * positions * vocab, row_q, vocab, ChainLinks{drafts + b * n, n},
                 params.row(b), out, ws);
    });
  });
}

void verify_tree(const at::Tensor& target_logits, const at::Tensor& tokens,
                 const at::Tensor& first_child, const at::Tensor& next_sibling,
                 const at::Tensor& draft_probs, bool has_draft_probs, const at::Tensor& method,
                 const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                 const at::Tensor& typical_eps, const at::Tensor& typical_delta,
                 const at::Tensor& seed, const at::Tensor& offset,
                 const at::Tensor& accepted_nodes_out, const at::Tensor& tokens_out,
                 const at::Tensor& num_accepted_out, const at::Tensor& num_emitted_out,
                 const at::Tensor& valid_out) {
  const int64_t batch = target_logits.size(0), nodes = target_logits.size(1);
  const int64_t vocab = target_logits.size(2), width = tokens_out.size(1);
  const RowParamTensors params =
      row_params(method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset);
  const int64_t* node_tokens = tokens.data_ptr<int64_t>();
  const int32_t* children = first_child.data_ptr<int32_t>();
  const int32_t* siblings = next_sibling.data_ptr<int32_t>();
  const float* q = has_draft_probs ? draft_probs.data_ptr<float>() : nullptr;
  int32_t* path = accepted_nodes_out.data_ptr<int32_t>();
  int64_t* emitted = tokens_out.data_ptr<int64_t>();
  int32_t* num_accepted = num_accepted_out.data_ptr<int32_t>();
  int32_t* num_emitted = num_emitted_out.data_ptr<int32_t>();
  bool* valid = valid_out.data_ptr<bool>();
  dispatch_float_types(target_logits, "verify_tree", [&](auto tag) {
    using T = decltype(tag);
    const T* logits = target_logits.data_ptr<T>();
    for_each_batch_row(batch, [&](int64_t b, Workspace& ws) {
      const float* row_q = q != nullptr ? q + b * nodes * vocab : nullptr;
      const TreeLinks links{node_tokens + b * nodes, children + b * nodes, siblings + b * nodes,
                            nodes};
      const RowOutputs out{path + b * width,  emitted + b * width, width,
                           num_accepted + b, num_emitted + b,     valid + b};
      verify_row(logits + b * nodes * vocab, row_q, vocab, links, params.row(b), out, ws);
    });
  });
}

}  // namespace decodekit::cpu
