// C++ CPU kernels of the `denoise` op family. The spec is decodekit/reference/denoise.py.
//
// denoise_propose runs at::parallel_for over the B * W window positions. Each position's logits
// row is read once, in blocks of kBlock values converted to float32 on load; one pass keeps
//   - NaN / +inf flags and the first argmax (greedy proposal, invalid rows),
//   - the largest kept logit (the x / T overflow test of sampled rows),
//   - the softmax statistics of the confidence distribution D with online rescaling: running max
//     m, Z = sum exp(y - m), S = sum exp(y - m) (y - m) for the entropy, per-lane top-2 for the
//     margin (a new block maximum m' rescales Z' = Z e^{m - m'}, S' = e^{m - m'} (S + Z (m - m'))),
//   - the Gumbel-max draw: a Philox uniform only for kept tokens whose z = x / T can still reach
//     the best score so far (the noise -log(-log u) is at most kMaxGumbelNoise).
// No [W, V] probabilities are ever formed. denoise_select is one task per canvas row: gather the
// eligible window positions, sort them by (group, confidence descending, position), apply the rule.

#include "denoise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <decodekit/rng.cuh>

// With AVX-512 available, let GCC use 512-bit vectors here (its default for these targets is 256):
// the exp / log polynomials and the conversions are throughput-bound, measured 1.6x faster on the
// greedy path of this machine (0.92 -> 0.58 ns per logit and thread).
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

// After the pragma (and after the ATen / c10 headers it needs): the shared float helpers get the
// same target options as the loops here, which they are inlined into.
#include "cpu_math.h"
#include "philox_simd.h"

namespace decodekit::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Values per block: long enough that the per-block bookkeeping (rescale test, reductions, the
// draw's pruning test) is noise next to the vector loops, short enough to live in L1.
constexpr int64_t kBlock = 256;
// Lanes of the margin's running top-2 (one AVX-512 register of floats).
constexpr int64_t kLanes = 16;
static_assert(kBlock % kLanes == 0, "blocks are whole lane groups");

// Confidence codes of the raw contract.
enum ConfMode : int64_t { kProb = 0, kMargin = 1, kNegEntropy = 2, kRandom = 3 };
// Select codes of the raw contract.
enum SelectMode : int64_t { kTopK = 0, kThreshold = 1, kFactor = 2, kBernoulli = 3 };

// ---------------------------------------------------------------------------------------------
// Blocks of float32 values, converted exactly from fp16 / bf16 (cpu_math.h).

inline void load_block(const float* src, int64_t n, float* dst) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

inline void load_block(const c10::Half* src, int64_t n, float* dst) { convert_to_float(src, n, dst); }

inline void load_block(const c10::BFloat16* src, int64_t n, float* dst) { convert_to_float(src, n, dst); }

// ---------------------------------------------------------------------------------------------
// Suppressed token ids: sorted and deduplicated once, shared by every position.

class Suppression {
 public:
  Suppression(const int64_t* ids, int64_t count) : ids_(ids, ids + count) {
    std::sort(ids_.begin(), ids_.end());
    ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  }

  // Sets x[v - begin] = -inf for the suppressed v in [begin, begin + n); blocks must come in
  // ascending order, `cursor` (start at 0) remembers where the previous block stopped.
  void apply(int64_t begin, int64_t n, float* x, size_t& cursor) const {
    while (cursor < ids_.size() && ids_[cursor] < begin + n) {
      if (ids_[cursor] >= begin) x[ids_[cursor] - begin] = -kInf;
      ++cursor;
    }
  }

  bool contains(int64_t v) const { return std::binary_search(ids_.begin(), ids_.end(), v); }

 private:
  std::vector<int64_t> ids_;
};

// ---------------------------------------------------------------------------------------------
// denoise_propose: one window position.

struct PositionParams {
  float temperature;  // 0: greedy
  float floor;        // kept set K = {x > -inf and x >= floor}; -inf without a filter
  bool tempered;      // D = softmax of z over K (sampled rows only); else softmax of x
  ConfMode conf_mode;
  uint64_t seed;
  uint64_t offset;
  int64_t position;  // canvas position pos = window_start + j
  int64_t vocab;

  bool greedy() const { return temperature == 0.0f; }
  // The confidence distribution is tempered only for sampled rows (greedy rows use softmax of x).
  bool tempered_d() const { return tempered && !greedy(); }
  // Philox counter c0 of vocab id 0: (pos * V) mod 2^32; the ops layer keeps L * V <= 2^32.
  uint32_t counter_base() const {
    return static_cast<uint32_t>(static_cast<uint64_t>(position) * static_cast<uint64_t>(vocab));
  }
};

struct PositionResult {
  int64_t proposal;
  float confidence;
};

// Online softmax statistics of D: max m, Z = sum exp(y - m), S = sum exp(y - m) (y - m), and the
// running top-2 of y per lane (the margin's second largest entry, duplicates counted).
struct SoftmaxStats {
  float m = -kInf;
  double z = 0.0;
  double s = 0.0;
  alignas(64) float top1[kLanes];
  alignas(64) float top2[kLanes];

  SoftmaxStats() {
    std::fill(top1, top1 + kLanes, -kInf);
    std::fill(top2, top2 + kLanes, -kInf);
  }

  // y [n] with n a multiple of kLanes (the tail padded with -inf).
  void add_block(const float* y, int64_t n, ConfMode mode) {
    float block_max = -kInf;
#pragma omp simd reduction(max : block_max)
    for (int64_t j = 0; j < n; ++j) block_max = y[j] > block_max ? y[j] : block_max;
    if (block_max > m) {
      // Terms with y = -inf are 0 and the sums are empty while m is -inf: nothing to rescale.
      if (m > -kInf) {
        const double shift = static_cast<double>(m) - static_cast<double>(block_max);
        const double scale = std::exp(shift);
        s = scale * (s + z * shift);
        z *= scale;
      }
      m = block_max;
    }
    const float max = m;
    float block_z = 0.0f, block_s = 0.0f;
    if (mode == kNegEntropy) {
#pragma omp simd reduction(+ : block_z, block_s)
      for (int64_t j = 0; j < n; ++j) {
        const float d = y[j] - max;
        const float e = select(y[j] > -kInf, fast_exp(d), 0.0f);
        block_z += e;
        block_s += select(y[j] > -kInf, e * d, 0.0f);
      }
    } else {
#pragma omp simd reduction(+ : block_z)
      for (int64_t j = 0; j < n; ++j) {
        const float d = y[j] - max;
        block_z += select(y[j] > -kInf, fast_exp(d), 0.0f);
      }
    }
    z += block_z;
    s += block_s;
    if (mode == kMargin) {
      for (int64_t g = 0; g < n; g += kLanes) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          const float v = y[g + l];
          const float low = v < top1[l] ? v : top1[l];
          top2[l] = low > top2[l] ? low : top2[l];
          top1[l] = v > top1[l] ? v : top1[l];
        }
      }
    }
  }

  // Second largest y over the row, duplicates counted (-inf with fewer than two finite entries).
  float second_largest() const {
    float all[2 * kLanes];
    std::copy(top1, top1 + kLanes, all);
    std::copy(top2, top2 + kLanes, all + kLanes);
    std::nth_element(all, all + 1, all + 2 * kLanes, std::greater<float>());
    return all[1];
  }

  // exp(y - m) of one entry, 0 for y = -inf (as the reference's masked exp).
  float mass(float y) const { return y > -kInf ? std::exp(y - m) : 0.0f; }
};

// Highest score wins; scanning in index order with a strict `>` keeps the lowest index on ties.
// The first kept token is taken even at score -inf (every kept uniform was 0).
struct GumbelDraw {
  float score = -kInf;
  int64_t index = -1;
};


struct ProposalRandom {
  uint64_t seed;
  uint64_t offset;
  uint32_t counter_base;  // c0 of vocab id 0

  // u[c] = the PROPOSAL_TOKEN uniform of vocab id begin + lanes[c], for c < count.
  void uniforms(int64_t begin, const int32_t* lanes, int64_t count, float* u) const {
    philox_uniforms_at(seed, offset, kStreamProposalToken, counter_base + static_cast<uint32_t>(begin), lanes,
                       count, u);
  }
};

// Writes to `lanes` the j in [0, n) with kept[j] and z_j >= min_zq, where z_j is x[j] * inv_t (or
// x[j] / t when `exact`); returns how many. A real row has few candidates per block, so the
// AVX-512 path tests 16 lanes per compare and compress-stores only the hits.
int64_t collect_candidates(const float* x, const int32_t* kept, int64_t n, float t, float inv_t,
                           bool exact, float min_zq, int32_t* lanes) {
  int64_t count = 0, j = 0;
#if defined(__AVX512F__)
  if (!exact) {
    const __m512 scale = _mm512_set1_ps(inv_t), bound = _mm512_set1_ps(min_zq);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; j + 16 <= n; j += 16) {
      const __m512i in_k = _mm512_loadu_si512(kept + j);
      const __mmask16 hits =
          _mm512_cmp_ps_mask(_mm512_mul_ps(_mm512_loadu_ps(x + j), scale), bound, _CMP_GE_OQ) &
          _mm512_test_epi32_mask(in_k, in_k);
      if (hits == 0) continue;
      _mm512_mask_compressstoreu_epi32(lanes + count, hits,
                                       _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j))));
      count += __builtin_popcount(hits);
    }
  }
#endif
  // Branch-free append: every lane is written, only candidates advance the end.
  for (; j < n; ++j) {
    const float zq = exact ? x[j] / t : x[j] * inv_t;
    lanes[count] = static_cast<int32_t>(j);
    count += kept[j] & static_cast<int32_t>(zq >= min_zq);
  }
  return count;
}

// Gumbel-max over the kept tokens of one block x [n] (vocab ids begin..begin + n), folded into
// `draw`. Philox (~100 operations a token) dominates, so only tokens whose z can still reach the
// best score so far draw a uniform: rounding is monotone, so a skipped token scores strictly
// below. The test uses x * (1 / t), within 2^-23 relative of the true x / t, against a bound
// widened by 1e-6 relative; candidates then score with the exact z = x / t of the reference.
void draw_block(const float* x, const int32_t* kept, int64_t n, float kept_max, int64_t begin,
                float t, const ProposalRandom& random, GumbelDraw& draw) {
  const float min_z = min_competitive_z(draw.score);
  if (kept_max / t < min_z) return;
  const float min_zq = min_z - std::fabs(min_z) * 1e-6f;
  const float inv_t = 1.0f / t;
  // 1 / t is not a normal float for extreme t: fall back to the exact quotient.
  const bool exact = !std::isnormal(inv_t);
  alignas(64) int32_t lanes[kBlock];
  alignas(64) float score[kBlock];
  const int64_t count = collect_candidates(x, kept, n, t, inv_t, exact, min_zq, lanes);
  random.uniforms(begin, lanes, count, score);
  // z - log(-log(u)); u == 0 gives -inf.
#pragma omp simd
  for (int64_t c = 0; c < count; ++c) score[c] = x[lanes[c]] / t - fast_log(-fast_log(score[c]));
  if (count == 0) return;
  float block_best = -kInf;
#pragma omp simd reduction(max : block_best)
  for (int64_t c = 0; c < count; ++c) block_best = score[c] > block_best ? score[c] : block_best;
  // Blocks come in index order, so a later block must be strictly better; inside the block the
  // first candidate with the best score has the lowest index (all -inf: the first kept token).
  if (draw.index < 0 || block_best > draw.score) {
    int64_t c = 0;
    while (score[c] != block_best) ++c;
    draw = {block_best, begin + lanes[c]};
  }
}

template <typename T>
PositionResult propose_position(const T* row, const PositionParams& p,
                                const Suppression& suppression) {
  const int64_t vocab = p.vocab;
  const bool greedy = p.greedy(), tempered_d = p.tempered_d();
  const bool need_stats = p.conf_mode != kRandom;
  const float t = p.temperature;
  const ProposalRandom random{p.seed, p.offset, p.counter_base()};

  alignas(64) float x[kBlock], y[kBlock];
  alignas(64) int32_t kept[kBlock];
  size_t suppress_cursor = 0;

  float x_max = -kInf;    // NaN ignored
  int64_t argmax = -1;    // first index of x_max
  float kept_max = -kInf;  // largest kept x (sampled rows)
  bool bad = false;       // NaN or +inf seen
  SoftmaxStats stats;
  GumbelDraw draw;

  for (int64_t begin = 0; begin < vocab; begin += kBlock) {
    const int64_t n = std::min(kBlock, vocab - begin);
    load_block(row + begin, n, x);
    suppression.apply(begin, n, x, suppress_cursor);

    float block_max = -kInf, block_kept_max = -kInf;
    int32_t block_bad = 0;
#pragma omp simd reduction(max : block_max, block_kept_max) reduction(| : block_bad)
    for (int64_t j = 0; j < n; ++j) {
      block_max = x[j] > block_max ? x[j] : block_max;
      block_bad |= static_cast<int32_t>((x[j] != x[j]) | (x[j] == kInf));
      const bool in_k = (x[j] > -kInf) & (x[j] >= p.floor);
      kept[j] = in_k;
      const float kx = select(in_k, x[j], -kInf);
      block_kept_max = kx > block_kept_max ? kx : block_kept_max;
    }
    bad |= block_bad != 0;
    if (block_max > x_max) {
      int64_t j = 0;
      while (x[j] != block_max) ++j;
      x_max = block_max;
      argmax = begin + j;
    }
    if (greedy) block_kept_max = -kInf;  // greedy rows ignore the filter and draw nothing
    kept_max = std::max(kept_max, block_kept_max);

    if (need_stats) {
      const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
      if (tempered_d && block_kept_max > -kInf) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) y[j] = select(kept[j] != 0, x[j] / t, -kInf);
      } else if (tempered_d) {
        std::fill(y, y + n, -kInf);
      } else {
        std::copy(x, x + n, y);
      }
      std::fill(y + n, y + padded, -kInf);
      stats.add_block(y, padded, p.conf_mode);
    }

    if (!greedy && block_kept_max > -kInf) {
      draw_block(x, kept, n, block_kept_max, begin, t, random, draw);
    }
  }

  const bool invalid = bad || x_max == -kInf || (!greedy && kept_max / t == kInf);
  if (invalid) return {-1, kNaN};
  // An empty kept set (a floor above every logit) gives the reference's out-of-range index V.
  const int64_t token = greedy ? argmax : (draw.index >= 0 ? draw.index : vocab);

  float confidence;
  switch (p.conf_mode) {
    case kRandom:
      confidence = decodekit::philox_uniform(p.seed, p.offset, kStreamConfidenceNoise,
                                             static_cast<uint32_t>(p.position));
      break;
    case kProb: {
      // The reference gathers at min(token, V - 1): the draw of an empty kept set lands there.
      const int64_t v = std::min(token, vocab - 1);
      float xv;
      load_block(row + v, 1, &xv);
      if (suppression.contains(v)) xv = -kInf;
      float yv = xv;
      if (tempered_d) yv = (xv > -kInf && xv >= p.floor) ? xv / t : -kInf;
      confidence = stats.mass(yv) / static_cast<float>(stats.z);
      break;
    }
    case kMargin:
      confidence = (stats.mass(stats.m) - stats.mass(stats.second_largest())) /
                   static_cast<float>(stats.z);
      break;
    case kNegEntropy: {
      const float total = static_cast<float>(stats.z);
      confidence = static_cast<float>(stats.s) / total - std::log(total);
      break;
    }
    default:
      TORCH_CHECK(false, "denoise_propose: unknown conf_mode ", static_cast<int64_t>(p.conf_mode));
  }
  return {token, confidence};
}

// ---------------------------------------------------------------------------------------------
// denoise_select: one canvas row.

struct Candidate {
  int64_t group;
  uint32_t key;  // orderable_key(confidence)
  int64_t j;     // window index; window order is canvas-position order
  int64_t rank;
};

struct SelectRow {
  int64_t* tokens;  // [L]
  bool* committed;  // [L]
  const int64_t* proposal;  // [W]
  const float* confidence;  // [W]
  const int32_t* span_ids;  // [L] or nullptr
  const int32_t* k;         // [S]
  int64_t num_spans;
  int64_t length, width;
  int64_t window_start, block_start, block_end;
  int64_t mask_id;
  SelectMode mode;
  float tau, factor, p_transfer;
  uint64_t seed, offset;
};

// Rank of each candidate inside its group by (confidence descending, position ascending), as
// the reference counts it: #{i in group : c_i > c_j or (c_i == c_j and i < j)}. A NaN confidence
// is never before anything and nothing is before it, so it ranks 0 and leaves the others alone.
void rank_in_groups(std::vector<Candidate>& candidates, const float* confidence,
                    std::vector<Candidate*>& order) {
  order.clear();
  for (Candidate& c : candidates) {
    if (std::isnan(confidence[c.j])) {
      c.rank = 0;
    } else {
      order.push_back(&c);
    }
  }
  std::sort(order.begin(), order.end(), [](const Candidate* a, const Candidate* b) {
    if (a->group != b->group) return a->group < b->group;
    if (a->key != b->key) return a->key > b->key;
    return a->j < b->j;
  });
  for (size_t i = 0; i < order.size(); ++i) {
    const bool starts_group = i == 0 || order[i]->group != order[i - 1]->group;
    order[i]->rank = starts_group ? 0 : order[i - 1]->rank + 1;
  }
}

int32_t select_row(const SelectRow& r, std::vector<Candidate>& candidates,
                   std::vector<Candidate*>& order) {
  std::fill(r.committed, r.committed + r.length, false);
  candidates.clear();
  for (int64_t j = 0; j < r.width; ++j) {
    const int64_t pos = r.window_start + j;
    if (pos < 0 || pos >= r.length) continue;
    if (r.tokens[pos] != r.mask_id || pos < r.block_start || pos >= r.block_end) continue;
    if (r.proposal[j] < 0) continue;
    int64_t group = 0;
    if (r.span_ids != nullptr) {
      group = r.span_ids[pos];
      if (group < 0 || group >= r.num_spans) continue;
    }
    candidates.push_back({group, orderable_key(r.confidence[j]), j, 0});
  }

  std::vector<bool> commit(candidates.size(), false);
  if (r.mode == kBernoulli) {
    for (size_t c = 0; c < candidates.size(); ++c) {
      const auto pos = static_cast<uint32_t>(r.window_start + candidates[c].j);
      commit[c] = decodekit::philox_uniform(r.seed, r.offset, kStreamTransferCoin, pos) < r.p_transfer;
    }
  } else {
    rank_in_groups(candidates, r.confidence, order);
    int64_t cut = r.width;  // factor: the first rank >= 1 below its threshold
    if (r.mode == kFactor) {
      for (const Candidate& c : candidates) {
        const auto threshold = static_cast<float>(
            1.0 - static_cast<double>(r.factor) / static_cast<double>(c.rank + 2));
        if (c.rank >= 1 && r.confidence[c.j] < threshold) cut = std::min(cut, c.rank);
      }
    }
    for (size_t c = 0; c < candidates.size(); ++c) {
      const Candidate& cand = candidates[c];
      switch (r.mode) {
        case kTopK:
          commit[c] = cand.rank < static_cast<int64_t>(r.k[cand.group]);
          break;
        case kThreshold:
          commit[c] = cand.rank == 0 || r.confidence[cand.j] >= r.tau;
          break;
        case kFactor:
          commit[c] = cand.rank < cut;
          break;
        default:
          TORCH_CHECK(false, "denoise_select: unknown select_mode ", static_cast<int64_t>(r.mode));
      }
    }
  }

  int32_t count = 0;
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (!commit[c]) continue;
    const int64_t pos = r.window_start + candidates[c].j;
    r.tokens[pos] = r.proposal[candidates[c].j];
    r.committed[pos] = true;
    ++count;
  }
  return count;
}

}  // namespace

void denoise_propose(const at::Tensor& logits, const at::Tensor& temperature,
                     const at::Tensor& keep_floor, const at::Tensor& suppress_ids,
                     const at::Tensor& seed, const at::Tensor& offset,
                     const at::Tensor& window_start, int64_t conf_mode, int64_t tempered,
                     const at::Tensor& proposal_out, const at::Tensor& confidence_out) {
  TORCH_CHECK(conf_mode >= kProb && conf_mode <= kRandom,
              "denoise_propose: conf_mode must be 0..3, got ", conf_mode);
  const int64_t batch = logits.size(0), width = logits.size(1), vocab = logits.size(2);
  const float* temperatures = temperature.data_ptr<float>();
  const float* floors = keep_floor.numel() > 0 ? keep_floor.data_ptr<float>() : nullptr;
  const int64_t* seeds = seed.data_ptr<int64_t>();
  const int64_t* offsets = offset.data_ptr<int64_t>();
  const int64_t* starts = window_start.data_ptr<int64_t>();
  int64_t* proposals = proposal_out.data_ptr<int64_t>();
  float* confidences = confidence_out.data_ptr<float>();
  const Suppression suppression(
      suppress_ids.numel() > 0 ? suppress_ids.data_ptr<int64_t>() : nullptr, suppress_ids.numel());
  // Positions of a small vocabulary are cheap: hand out enough per task to amortise scheduling.
  const int64_t grain = std::max<int64_t>(1, 16384 / vocab);

  dispatch_float_types(logits, "denoise_propose", [&](auto tag) {
    using T = decltype(tag);
    const T* data = logits.data_ptr<T>();
    at::parallel_for(0, batch * width, grain, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const int64_t b = i / width, j = i - b * width;
        const PositionParams params{temperatures[b],
                                    floors != nullptr ? floors[i] : -kInf,
                                    tempered != 0,
                                    static_cast<ConfMode>(conf_mode),
                                    static_cast<uint64_t>(seeds[b]),
                                    static_cast<uint64_t>(offsets[b]),
                                    starts[b] + j,
                                    vocab};
        const PositionResult r = propose_position(data + i * vocab, params, suppression);
        proposals[i] = r.proposal;
        confidences[i] = r.confidence;
      }
    });
  });
}

void denoise_select(const at::Tensor& tokens, const at::Tensor& proposal,
                    const at::Tensor& confidence, const at::Tensor& window_start,
                    const at::Tensor& block_start, const at::Tensor& block_end, int64_t mask_id,
                    int64_t select_mode, const at::Tensor& k, const at::Tensor& tau,
                    const at::Tensor& factor, const at::Tensor& p_transfer,
                    const at::Tensor& span_ids, const at::Tensor& seed, const at::Tensor& offset,
                    const at::Tensor& committed_out, const at::Tensor& num_committed_out) {
  TORCH_CHECK(select_mode >= kTopK && select_mode <= kBernoulli,
              "denoise_select: select_mode must be 0..3, got ", select_mode);
  const int64_t batch = tokens.size(0), length = tokens.size(1), width = proposal.size(1);
  const int64_t num_spans = k.size(1);
  int64_t* canvas = tokens.data_ptr<int64_t>();
  const int64_t* proposals = proposal.data_ptr<int64_t>();
  const float* confidences = confidence.data_ptr<float>();
  const int64_t* starts = window_start.data_ptr<int64_t>();
  const int64_t* block_starts = block_start.data_ptr<int64_t>();
  const int64_t* block_ends = block_end.data_ptr<int64_t>();
  const int32_t* counts = k.data_ptr<int32_t>();
  const float* taus = tau.data_ptr<float>();
  const float* factors = factor.data_ptr<float>();
  const float* p_transfers = p_transfer.data_ptr<float>();
  const int32_t* spans = span_ids.numel() > 0 ? span_ids.data_ptr<int32_t>() : nullptr;
  const int64_t* seeds = seed.data_ptr<int64_t>();
  const int64_t* offsets = offset.data_ptr<int64_t>();
  bool* committed = committed_out.data_ptr<bool>();
  int32_t* num_committed = num_committed_out.data_ptr<int32_t>();

  at::parallel_for(0, batch, 1, [&](int64_t first, int64_t last) {
    std::vector<Candidate> candidates;
    std::vector<Candidate*> order;
    for (int64_t b = first; b < last; ++b) {
      const SelectRow row{canvas + b * length,
                          committed + b * length,
                          proposals + b * width,
                          confidences + b * width,
                          spans != nullptr ? spans + b * length : nullptr,
                          counts + b * num_spans,
                          num_spans,
                          length,
                          width,
                          starts[b],
                          block_starts[b],
                          block_ends[b],
                          mask_id,
                          static_cast<SelectMode>(select_mode),
                          taus[b],
                          factors[b],
                          p_transfers[b],
                          static_cast<uint64_t>(seeds[b]),
                          static_cast<uint64_t>(offsets[b])};
      num_committed[b] = select_row(row, candidates, order);
    }
  });
}

}  // namespace decodekit::cpu
