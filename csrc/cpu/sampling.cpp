// C++ CPU kernels of the `sampling` op family. The spec is decodekit/reference/sampling.py.
//
// Every row op follows one plan, parallel over rows (at::parallel_for):
//   1. scan    one pass over the row in blocks of kBlock: max, first argmax, NaN, per-block maxima,
//              and (top-k on) a candidate buffer that ends holding exactly the top-k survivors;
//   2. floor   the kept set of top-k -> top-p is {x : eligible(x) && x >= floor}: top-p sorts the
//              small survivor list, or (top-k off / many survivors) runs a radix select on the
//              orderable key with mass histograms; nothing ever sorts a whole row;
//   3. finish  sample: Gumbel-max with Philox over the kept set, skipping blocks that hold no kept
//              token or cannot win; mask_logits / renorm: one write pass.
// The row stays in L2 between passes (128256 fp32 = 0.5 MB), so only the scan streams from DRAM.
// Steps 1 and 2 live in sampling_row.h, shared with the spec_verify kernels.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <decodekit/rng.cuh>

#include "cpu_math.h"
#include "sampling_row.h"

namespace decodekit::cpu {
namespace {

using namespace rows;  // the shared row building blocks (sampling_row.h)

// Blocks per task when the draw of one row is split over threads (fewer rows than threads).
constexpr int64_t kDrawBlocksPerTask = 256;

// ---------------------------------------------------------------------------------------------
// Pass 3 of sample: Gumbel-max over the kept set.

struct KeptSet {
  float floor;
  float min_p;
  TemperedMass mass;

  // Tempered logits, masses and kept flags of one block; returns the block's kept mass.
  float classify(const float* x, int64_t n, float* z, int32_t* kept) const {
    float kept_mass = 0.0f;
#pragma omp simd reduction(+ : kept_mass)
    for (int64_t j = 0; j < n; ++j) {
      z[j] = x[j] / mass.temperature;
      const float m = fast_exp(z[j] - mass.z_max);
      // z == +inf only when x / temperature overflows: its mass exp(inf - z_max) is NaN in the
      // reference, which fails every min-p test.
      const bool keep = (x[j] > -kInf) & (x[j] >= floor) & (z[j] < kInf) & (m >= min_p);
      kept[j] = keep;
      kept_mass += keep ? m : 0.0f;
    }
    return kept_mass;
  }
  // A block whose largest logit fails min-p holds no kept token: exp is monotone, and the slack
  // covers fast_exp's rounding.
  bool any_in_block(float block_max) const {
    return (block_max > -kInf) & (block_max >= floor) & (mass(block_max) >= min_p * (1.0f - 1e-6f));
  }
};

struct RowRandom {
  uint64_t seed;
  uint64_t offset;

  float gumbel_score(float z, int64_t index) const {
    const float u = decodekit::philox_uniform(seed, offset, kStreamSampleToken,
                                              static_cast<uint32_t>(index));
    return z - fast_log(-fast_log(u));
  }
};

struct Draw {
  int64_t token;
  double kept_mass;
};
template <typename T>
int64_t first_kept_index(const RowView<T>& row, const KeptSet& kept_set, const RowWorkspace& ws) {
  alignas(64) float buffer[kBlock], z[kBlock];
  alignas(64) int32_t kept[kBlock];
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    if (!kept_set.any_in_block(ws.block_max[b])) continue;
    const int64_t n = row.block_size(b);
    kept_set.classify(row.load(b, buffer), n, z, kept);
    for (int64_t j = 0; j < n; ++j) {
      if (kept[j]) return b * kBlock + j;
    }
  }
  return -1;
}

// Gumbel-max over blocks [first, last); writes each block's kept mass to block_mass[b].
template <typename T>
ScoredToken gumbel_max_in_blocks(const RowView<T>& row, const KeptSet& kept_set,
                                 const RowRandom& random, float seed_bound, int64_t first,
                                 int64_t last, const float* block_max, float* block_mass) {
  ScoredToken best;
  alignas(64) float buffer[kBlock], z[kBlock], score[kBlock];
  alignas(64) int32_t kept[kBlock], lanes[kBlock];
  for (int64_t b = first; b < last; ++b) {
    block_mass[b] = 0.0f;
    if (!kept_set.any_in_block(block_max[b])) continue;
    const int64_t n = row.block_size(b);
    block_mass[b] = kept_set.classify(row.load(b, buffer), n, z, kept);
    const float min_z = min_competitive_z(std::max(best.score, seed_bound));
    if (block_max[b] / kept_set.mass.temperature < min_z) continue;
    // Only kept tokens that can still win get a Philox draw: compact their lanes first.
    int64_t count = 0;
    for (int64_t j = 0; j < n; ++j) {
      lanes[count] = static_cast<int32_t>(j);
      count += kept[j] & static_cast<int32_t>(z[j] >= min_z);
    }
    const int64_t begin = b * kBlock;
    float block_best = -kInf;
#pragma omp simd reduction(max : block_best)
    for (int64_t c = 0; c < count; ++c) {
      score[c] = random.gumbel_score(z[lanes[c]], begin + lanes[c]);
      block_best = score[c] > block_best ? score[c] : block_best;
    }
    // Blocks run in index order, so a later block must be strictly better to win a tie.
    if (block_best > best.score) {
      int64_t c = 0;
      while (score[c] != block_best) ++c;
      best = {block_best, begin + lanes[c]};
    }
  }
  return best;
}

// argmax over kept i of z_i - log(-log(u_i)), lowest index on ties, plus the kept mass. The token
// `top` (a kept one of largest z) scores before the pass, bounding the winner from below.
// Inside a parallel region (rows spread over threads) the reduction runs serially.
template <typename T>
Draw gumbel_max_draw(const RowView<T>& row, const KeptSet& kept_set, const RowRandom& random,
                     int64_t top, RowWorkspace& ws) {
  const float seed_bound = random.gumbel_score(row.at(top) / kept_set.mass.temperature, top);
  ws.block_mass.resize(row.num_blocks());
  const ScoredToken best = at::parallel_reduce(
      0, row.num_blocks(), kDrawBlocksPerTask, ScoredToken{},
      [&](int64_t first, int64_t last, ScoredToken) {
        return gumbel_max_in_blocks(row, kept_set, random, seed_bound, first, last,
                                    ws.block_max.data(), ws.block_mass.data());
      },
      ScoredToken::better);
  // Summed in block order whatever the split, so the logprob does not depend on the thread count.
  double kept_mass = 0.0;
  for (float m : ws.block_mass) kept_mass += m;
  // Every kept token drew u == 0 (noise -inf): the reference picks the first kept index.
  const int64_t token = best.index >= 0 ? best.index : first_kept_index(row, kept_set, ws);
  return {token, kept_mass};
}

// ---------------------------------------------------------------------------------------------
// Row ops.

struct SampleRow {
  float temperature;
  int64_t top_k;
  float top_p;
  float min_p;
  RowRandom random;
};

struct SampleResult {
  int64_t token;
  float logprob;
  bool valid;
};

template <typename T>
SampleResult sample_row(const RowView<T>& row, const SampleRow& p, RowWorkspace& ws) {
  constexpr SampleResult kInvalid{-1, std::numeric_limits<float>::quiet_NaN(), false};
  const bool greedy = p.temperature == 0.0f;
  std::optional<TopKCollector> top_k;
  if (!greedy && top_k_active(p.top_k, row.size)) top_k.emplace(p.top_k, -kInf, ws.values);
  TopKCollector* const collector = top_k ? &*top_k : nullptr;
  const RowScan scan = scan_row(row, ws, collector);

  if (scan.has_nan || scan.max == kInf || scan.max == -kInf) return kInvalid;
  if (greedy) return {scan.argmax, 0.0f, true};

  TemperedMax top{scan.max / p.temperature, scan.argmax};
  float floor;
  if (std::isfinite(top.z)) {
    floor = top_k_top_p_floor(row, collector, -kInf, TemperedMass{p.temperature, top.z}, p.top_p,
                              scan.max, ws);
  } else {
    // x / temperature overflowed: the reference's masses are NaN (inf - inf) or 0, so top-p and
    // min-p keep nothing and otherwise the tokens that did not overflow remain.
    if (top.z == -kInf || p.top_p < 1.0f || p.min_p > 0.0f) return kInvalid;
    floor = collector != nullptr ? collector->finish() : -kInf;
    top = largest_non_overflowing(row, floor, p.temperature);
    if (top.index < 0) return kInvalid;
    // The rest underflowed to -inf: every score is -inf and the kept mass exp(-inf + inf) is NaN.
    if (top.z == -kInf) return {top.index, std::numeric_limits<float>::quiet_NaN(), true};
  }
  const KeptSet kept_set{floor, p.min_p, TemperedMass{p.temperature, top.z}};
  const Draw draw = gumbel_max_draw(row, kept_set, p.random, top.index, ws);
  // (z_tok - z_max) first, as the reference: keeps logprobs near 0 accurate for large |z_max|.
  const float z_tok = row.at(draw.token) / p.temperature;
  const float logprob = (z_tok - top.z) - std::log(static_cast<float>(draw.kept_mass));
  return {draw.token, logprob, true};
}

template <typename T>
void fill_row(T* out, int64_t size, float value) {
  std::fill(out, out + size, static_cast<T>(value));
}

template <typename T>
void mask_logits_row(const RowView<T>& row, int64_t k, float top_p, T* out, RowWorkspace& ws) {
  std::optional<TopKCollector> top_k;
  if (top_k_active(k, row.size)) top_k.emplace(k, -kInf, ws.values);
  const RowScan scan = scan_row(row, ws, top_k ? &*top_k : nullptr);
  if (scan.has_nan) return fill_row(out, row.size, std::numeric_limits<float>::quiet_NaN());

  float floor = kInf;  // a row of -inf keeps nothing
  if (scan.max > -kInf) {
    const TemperedMass mass{1.0f, scan.max};
    floor = top_k_top_p_floor(row, top_k ? &*top_k : nullptr, -kInf, mass, top_p, scan.max, ws);
  }
  alignas(64) float buffer[kBlock], masked[kBlock];
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    const int64_t n = row.block_size(b);
    const float* x = row.load(b, buffer);
    // +inf never survives: with z_max = +inf its mass exp(inf - inf) is NaN, and the reference's
    // (min-p >= 0) test drops NaN masses.
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const bool keep = (x[j] > -kInf) & (x[j] < kInf) & (x[j] >= floor);
      masked[j] = keep ? x[j] : -kInf;
    }
    store_block(masked, n, out + b * kBlock);
  }
}

template <typename T>
void renorm_row(const RowView<T>& row, int64_t k, float top_p, T* out, RowWorkspace& ws) {
  constexpr float kPositive = 0.0f;  // only p > 0 can be kept
  std::optional<TopKCollector> top_k;
  if (top_k_active(k, row.size)) top_k.emplace(k, kPositive, ws.values);
  const RowScan scan = scan_row(row, ws, top_k ? &*top_k : nullptr);
  if (scan.has_nan) return fill_row(out, row.size, std::numeric_limits<float>::quiet_NaN());

  float floor = kInf;  // no positive probability: the kept sum is 0 and the row becomes 0/0 = NaN
  if (scan.max > kPositive) {
    floor = top_k_top_p_floor(row, top_k ? &*top_k : nullptr, kPositive, ProbabilityMass{},
                              top_p, scan.max, ws);
  }
  const Eligibility kept{kPositive, floor};
  alignas(64) float buffer[kBlock], scaled[kBlock];
  double kept_sum = 0.0;
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    if (!kept.any_in_block(ws.block_max[b])) continue;
    const int64_t n = row.block_size(b);
    const float* p = row.load(b, buffer);
    float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
    for (int64_t j = 0; j < n; ++j) block_sum += kept(p[j]) ? p[j] : 0.0f;
    kept_sum += block_sum;
  }
  const float norm = static_cast<float>(kept_sum);
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    const int64_t n = row.block_size(b);
    const float* p = row.load(b, buffer);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) scaled[j] = (kept(p[j]) ? p[j] : 0.0f) / norm;
    store_block(scaled, n, out + b * kBlock);
  }
}

template <typename Fn>
void for_each_row_segment(int64_t rows, int64_t cols, Fn&& fn) {
  constexpr int64_t kGrain = 1 << 15;
  at::parallel_for(0, rows * cols, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t row = i / cols;
      const int64_t col = i - row * cols;
      const int64_t stop = std::min(cols, col + (end - i));
      fn(row, col, stop);
      i += stop - col;
    }
  });
}

}  // namespace

void sample(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
            const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seed,
            const at::Tensor& offset, const at::Tensor& tokens_out, const at::Tensor& logprobs_out,
            const at::Tensor& valid_out) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const float* temperatures = temperature.data_ptr<float>();
  const int32_t* top_ks = top_k.data_ptr<int32_t>();
  const float* top_ps = top_p.data_ptr<float>();
  const float* min_ps = min_p.data_ptr<float>();
  const int64_t* seeds = seed.data_ptr<int64_t>();
  const int64_t* offsets = offset.data_ptr<int64_t>();
  int64_t* tokens = tokens_out.data_ptr<int64_t>();
  float* logprobs = logprobs_out.data_ptr<float>();
  bool* valid = valid_out.data_ptr<bool>();
  dispatch_float_types(logits, "sample", [&](auto tag) {
    using T = decltype(tag);
    const T* data = logits.data_ptr<T>();
    for_each_row(rows, /*row_uses_threads=*/true, [&](int64_t b, RowWorkspace& ws) {
      const SampleRow params{temperatures[b], top_ks[b], top_ps[b], min_ps[b],
                             RowRandom{static_cast<uint64_t>(seeds[b]),
                                       static_cast<uint64_t>(offsets[b])}};
      const SampleResult r = sample_row(RowView<T>{data + b * vocab, vocab}, params, ws);
      tokens[b] = r.token;
      logprobs[b] = r.logprob;
      valid[b] = r.valid;
    });
  });
}

void apply_penalties(const at::Tensor& logits, const at::Tensor& token_counts,
                     const at::Tensor& repetition, const at::Tensor& frequency,
                     const at::Tensor& presence, const at::Tensor& out) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int32_t* counts = token_counts.data_ptr<int32_t>();
  const float* repetitions = repetition.data_ptr<float>();
  const float* frequencies = frequency.data_ptr<float>();
  const float* presences = presence.data_ptr<float>();
  dispatch_float_types(logits, "apply_penalties", [&](auto tag) {
    using T = decltype(tag);
    const T* data = logits.data_ptr<T>();
    T* result = out.data_ptr<T>();
    for_each_row_segment(rows, vocab, [&](int64_t b, int64_t begin, int64_t end) {
      const float r = repetitions[b], f = frequencies[b], p = presences[b];
      const int64_t base = b * vocab;
      alignas(64) float buffer[kBlock], frequency_penalty[kBlock], penalised[kBlock];
      for (int64_t start = begin; start < end; start += kBlock) {
        const int64_t n = std::min(kBlock, end - start);
        const float* x = load_block(data + base + start, n, buffer);
        const int32_t* c = counts + base + start;
        // The product goes through memory so the compiler cannot fuse it into an FMA: the
        // reference rounds f * count before subtracting, and this op is bit-exact with it.
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) frequency_penalty[j] = f * static_cast<float>(c[j]);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const float scaled = x[j] > 0.0f ? x[j] / r : x[j] * r;
          penalised[j] = c[j] > 0 ? scaled - frequency_penalty[j] - p : x[j];
        }
        // Written after the block is read, so `out` may alias `logits`.
        store_block(penalised, n, result + base + start);
      }
    });
  });
}

void mask_logits(const at::Tensor& logits, const at::Tensor& top_k, const at::Tensor& top_p,
                 const at::Tensor& out) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int32_t* top_ks = top_k.data_ptr<int32_t>();
  const float* top_ps = top_p.data_ptr<float>();
  dispatch_float_types(logits, "mask_logits", [&](auto tag) {
    using T = decltype(tag);
    const T* data = logits.data_ptr<T>();
    T* result = out.data_ptr<T>();
    for_each_row(rows, /*row_uses_threads=*/false, [&](int64_t b, RowWorkspace& ws) {
      mask_logits_row(RowView<T>{data + b * vocab, vocab}, top_ks[b], top_ps[b],
                      result + b * vocab, ws);
    });
  });
}

void top_k_top_p_renorm(const at::Tensor& probs, const at::Tensor& top_k, const at::Tensor& top_p,
                        const at::Tensor& out) {
  const int64_t rows = probs.size(0), vocab = probs.size(1);
  const int32_t* top_ks = top_k.data_ptr<int32_t>();
  const float* top_ps = top_p.data_ptr<float>();
  dispatch_float_types(probs, "top_k_top_p_renorm", [&](auto tag) {
    using T = decltype(tag);
    const T* data = probs.data_ptr<T>();
    T* result = out.data_ptr<T>();
    for_each_row(rows, /*row_uses_threads=*/false, [&](int64_t b, RowWorkspace& ws) {
      renorm_row(RowView<T>{data + b * vocab, vocab}, top_ks[b], top_ps[b], result + b * vocab,
                 ws);
    });
  });
}

void philox_uniform(const at::Tensor& seed, const at::Tensor& offset, int64_t stream,
                    const at::Tensor& out) {
  const int64_t rows = out.size(0), cols = out.size(1);
  const int64_t* seeds = seed.data_ptr<int64_t>();
  const int64_t* offsets = offset.data_ptr<int64_t>();
  float* result = out.data_ptr<float>();
  const auto stream_id = static_cast<uint32_t>(stream);
  for_each_row_segment(rows, cols, [&](int64_t b, int64_t begin, int64_t end) {
    const auto row_seed = static_cast<uint64_t>(seeds[b]);
    const auto row_offset = static_cast<uint64_t>(offsets[b]);
    float* row = result + b * cols;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      row[i] = decodekit::philox_uniform(row_seed, row_offset, stream_id, static_cast<uint32_t>(i));
    }
  });
}

}  // namespace decodekit::cpu
