// Row-level building blocks shared by the C++ CPU kernels of the sampling and spec_verify
// families: blocked row views (fp16 / bf16 converted exactly to fp32), the row scan with its top-k
// candidate buffer, the top-k -> top-p floor of reference/sampling.py's kept_mask, and the
// row-parallel loops. The float helpers and the dtype dispatch they use are in cpu_math.h, shared
// with the other families. Header-only (templates and inline functions).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "cpu_math.h"

namespace decodekit::cpu::rows {

// Elements per block: small enough that per-block maxima prune the Gumbel draw finely, large
// enough that the per-block bookkeeping is noise next to the vector loops.
constexpr int64_t kBlock = 64;

// Candidate lists up to this size are sorted for the top-p walk: top-k survivors (longer lists
// go to the radix select) and the radix select's boundary bin (narrowed by digits first).
constexpr size_t kSortLimit = 2048;

// ---------------------------------------------------------------------------------------------
// Row access: blocks of float32 values, converted exactly from fp16 / bf16.

inline const float* load_block(const float* src, int64_t, float*) { return src; }

inline const float* load_block(const c10::Half* src, int64_t n, float* buffer) {
  convert_to_float(src, n, buffer);
  return buffer;
}

inline const float* load_block(const c10::BFloat16* src, int64_t n, float* buffer) {
  convert_to_float(src, n, buffer);
  return buffer;
}

template <typename T>
inline void store_block(const float* src, int64_t n, T* dst) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}

template <typename T>
struct RowView {
  const T* data;
  int64_t size;

  int64_t num_blocks() const { return (size + kBlock - 1) / kBlock; }
  int64_t block_size(int64_t block) const { return std::min(kBlock, size - block * kBlock); }
  const float* load(int64_t block, float* buffer) const {
    return load_block(data + block * kBlock, block_size(block), buffer);
  }
  float at(int64_t index) const {
    float value;
    return *load_block(data + index, 1, &value);
  }
};

// Scratch reused by every row a thread handles.
struct RowWorkspace {
  std::vector<float> block_max;  // per-block max (NaN ignored): later passes skip blocks with it
  std::vector<float> values;     // top-k survivors, then the boundary bin of the top-p radix select
  std::vector<float> block_mass;  // per-block kept mass of the Gumbel draw
  std::vector<double> bin_mass;
  std::vector<uint32_t> bin_count;
};

// ---------------------------------------------------------------------------------------------
// Pass 1: the scan, with the top-k candidate buffer.

// Collects the k largest values x > `above` (ties at the k-th kept) in one pass: values at or
// above a running floor are appended, and whenever the buffer fills, nth_element cuts it back to
// the current top k and raises the floor. Most blocks fail the floor test on their block maximum.
class TopKCollector {
 public:
  TopKCollector(int64_t k, float above, std::vector<float>& values)
      : k_(k), above_(above), capacity_(std::max<int64_t>(4 * k, 512)), values_(values) {
    values_.resize(capacity_ + kBlock);  // room for one more block past the capacity
  }

  void offer(const float* x, int64_t n, float block_max) {
    if (!can_enter(block_max)) return;
    // While the floor is still low many blocks pass; testing 16-value groups before appending
    // cuts the scalar work about fourfold on random logits.
    constexpr int64_t kGroup = 16;
    for (int64_t g = 0; g < n; g += kGroup) {
      const int64_t m = std::min(kGroup, n - g);
      float group_max = -kInf;
#pragma omp simd reduction(max : group_max)
      for (int64_t j = 0; j < m; ++j) group_max = x[g + j] > group_max ? x[g + j] : group_max;
      if (can_enter(group_max)) append_candidates(x + g, m);
    }
    if (size_ >= capacity_) keep_top_k();
  }

  // The k-th largest eligible value (duplicates counted), or -inf when fewer than k are eligible.
  // Afterwards the buffer holds exactly the eligible values >= the returned floor.
  float finish() {
    if (size_ >= k_) keep_top_k();
    values_.resize(size_);
    return size_ >= k_ ? floor_ : -kInf;
  }

 private:
  bool can_enter(float x) const { return (x >= floor_) & (x > above_); }

  // Branch-free append: every value is written, only candidates advance the end.
  void append_candidates(const float* x, int64_t n) {
    float* end = values_.data() + size_;
    int64_t appended = 0;
    for (int64_t j = 0; j < n; ++j) {
      end[appended] = x[j];
      appended += can_enter(x[j]);
    }
    size_ += appended;
  }

  void keep_top_k() {
    const auto begin = values_.begin(), kth = begin + (k_ - 1), end = begin + size_;
    std::nth_element(begin, kth, end, std::greater<float>());
    floor_ = *kth;
    size_ = std::partition(kth + 1, end, [&](float v) { return v >= floor_; }) - begin;
    // Many ties at the floor keep the buffer full; grow it so the cut stays amortised O(1).
    if (size_ * 2 > capacity_) {
      capacity_ *= 2;
      values_.resize(capacity_ + kBlock);
    }
  }

  int64_t k_;
  float above_;
  float floor_ = -kInf;
  int64_t capacity_;
  int64_t size_ = 0;
  std::vector<float>& values_;
};

struct RowScan {
  float max = -kInf;   // NaN ignored
  int64_t argmax = 0;  // first index of max (meaningful when max > -inf)
  bool has_nan = false;
};

template <typename T>
RowScan scan_row(const RowView<T>& row, RowWorkspace& ws, TopKCollector* top_k) {
  RowScan scan;
  int64_t max_block = -1;
  alignas(64) float buffer[kBlock];
  ws.block_max.resize(row.num_blocks());
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    const int64_t n = row.block_size(b);
    const float* x = row.load(b, buffer);
    float block_max = -kInf;
    int nan = 0;
#pragma omp simd reduction(max : block_max) reduction(| : nan)
    for (int64_t j = 0; j < n; ++j) {
      block_max = x[j] > block_max ? x[j] : block_max;
      nan |= x[j] != x[j];
    }
    ws.block_max[b] = block_max;
    scan.has_nan |= nan != 0;
    if (block_max > scan.max) {
      scan.max = block_max;
      max_block = b;
    }
    if (top_k != nullptr) top_k->offer(x, n, block_max);
  }
  if (max_block >= 0) {
    const float* x = row.load(max_block, buffer);
    int64_t j = 0;
    while (x[j] != scan.max) ++j;
    scan.argmax = max_block * kBlock + j;
  }
  return scan;
}

// ---------------------------------------------------------------------------------------------
// Pass 2: the top-p floor. A token is kept iff the mass of the kept tokens strictly larger than it
// is < top_p * total; so the kept set is a top prefix of whole tie groups, always holding the top
// group. Masses are summed in double like the reference's cumsum (torch accumulates float cumsum
// in double on CPU), and the final comparison repeats its float32 roundings.

// Tokens that survive top-k (and are not excluded outright: -inf logits, probabilities <= 0).
struct Eligibility {
  float above;     // exclusive lower bound
  float at_least;  // top-k floor, or -inf

  // `&` rather than `&&`: no short-circuit branch, so the loops using it vectorise.
  bool operator()(float x) const { return (x > above) & (x >= at_least); }
  bool any_in_block(float block_max) const { return block_max > above && block_max >= at_least; }
};

// exp(z - z_max) with z = x / temperature (true division, as the reference).
struct TemperedMass {
  float temperature;
  float z_max;
  float operator()(float x) const { return fast_exp(x / temperature - z_max); }
};

struct ProbabilityMass {
  float operator()(float p) const { return p; }
};

// Non-finite totals (a +inf logit or probability) make every reference comparison false, which
// keeps just the top tie group.
inline bool keeps_only_top_group(double total) { return !std::isfinite(total); }

// The reference keeps tie group g iff float32(cumsum in double through g's first token) - that
// token's mass < target, in float32; emulating those roundings keeps near-ties on its side.
// `values` is sorted descending; `above` is the mass of the eligible tokens larger than all of
// them, which are all kept, and `floor` the lowest of those (NaN when there are none: then the
// first group is the row's top group, which the reference always keeps). Returns the lowest kept
// value.
template <typename Mass>
float walk_tie_groups(const std::vector<float>& values, Mass mass, double above, float target,
                      float floor) {
  for (size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    const float m = mass(v);
    if (i == 0 || v != values[i - 1]) {
      const float exclusive = static_cast<float>(above + m) - m;
      if (!(exclusive < target) && !std::isnan(floor)) break;
      floor = v;
    }
    above += m;
  }
  return floor;
}

template <typename Mass>
float top_p_floor_sorted(std::vector<float>& values, Mass mass, float top_p) {
  std::sort(values.begin(), values.end(), std::greater<float>());
  double total = 0.0;
  for (float v : values) total += mass(v);
  if (keeps_only_top_group(total)) return values.front();
  const float target = top_p * static_cast<float>(total);
  return walk_tie_groups(values, mass, 0.0, target, std::numeric_limits<float>::quiet_NaN());
}

struct RadixLevel {
  int shift;
  uint32_t bins;
};
// 12 + 10 + 10 bits: after the last level every value left in the boundary bin is the same float.
constexpr RadixLevel kRadixLevels[] = {{20, 4096}, {10, 1024}, {0, 1024}};

inline uint32_t radix_digit(float x, const RadixLevel& level) {
  return (orderable_key(x) >> level.shift) & (level.bins - 1);
}

inline void clear_bins(RowWorkspace& ws, uint32_t bins) {
  ws.bin_mass.assign(bins, 0.0);
  ws.bin_count.assign(bins, 0);
}

// Walks bins from the largest values down and returns the first non-empty bin whose inclusive
// cumulative mass reaches `target`, adding the mass of the bins above it to `above`; -1 (and
// `above` untouched) if none does.
inline int64_t find_boundary_bin(const RowWorkspace& ws, float target, double& above) {
  double cumulative = above;
  for (int64_t d = static_cast<int64_t>(ws.bin_mass.size()) - 1; d >= 0; --d) {
    if (ws.bin_count[d] == 0) continue;
    if (cumulative + ws.bin_mass[d] >= target) {
      above = cumulative;
      return d;
    }
    cumulative += ws.bin_mass[d];
  }
  return -1;
}

// Histogram of mass over the first radix digit of the eligible tokens; returns the mass of the
// blocks left out because none of their tokens can be kept.
//
// A token of mass m < (1 - top_p) * m_top / (2 V) is never kept: every token at or below it weighs
// less than that, so together less than (1 - top_p) * total, while the reference keeps a token
// only if at least (1 - top_p) * total lies at or below it. Such blocks (most of a real LLM's
// vocabulary) only add to the total, with no scatter.
template <typename T, typename Mass>
double histogram_row(const RowView<T>& row, const Eligibility& eligible, Mass mass, float top_p,
                     float top_value, RowWorkspace& ws) {
  const RadixLevel& level = kRadixLevels[0];
  clear_bins(ws, level.bins);
  const float negligible =
      0.5f * (1.0f - top_p) * mass(top_value) / static_cast<float>(row.size);
  double left_out = 0.0;
  alignas(64) float buffer[kBlock], block_mass[kBlock];
  alignas(64) uint32_t digit[kBlock], counted[kBlock];
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    const float block_max = ws.block_max[b];
    if (!eligible.any_in_block(block_max)) continue;
    const int64_t n = row.block_size(b);
    const float* x = row.load(b, buffer);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const bool in = eligible(x[j]);
      block_mass[j] = select(in, mass(x[j]), 0.0f);
      counted[j] = in;
      digit[j] = radix_digit(x[j], level);
      sum += block_mass[j];
    }
    if (mass(block_max) < negligible) {
      left_out += sum;
      continue;
    }
    // Ineligible tokens add zero mass and zero count, which keeps this scatter branch-free.
    for (int64_t j = 0; j < n; ++j) {
      ws.bin_mass[digit[j]] += block_mass[j];
      ws.bin_count[digit[j]] += counted[j];
    }
  }
  return left_out;
}

// Collects the eligible values whose first digit is `bin` into ws.values; returns the lowest
// eligible value above that bin (NaN if none).
template <typename T>
float collect_bin(const RowView<T>& row, const Eligibility& eligible, uint32_t bin,
                  RowWorkspace& ws) {
  const RadixLevel& level = kRadixLevels[0];
  ws.values.clear();
  float lowest_above = kInf;
  alignas(64) float buffer[kBlock];
  alignas(64) int32_t in_bin[kBlock];
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    const float block_max = ws.block_max[b];
    if (!eligible.any_in_block(block_max) || radix_digit(block_max, level) < bin) continue;
    const int64_t n = row.block_size(b);
    const float* x = row.load(b, buffer);
#pragma omp simd reduction(min : lowest_above)
    for (int64_t j = 0; j < n; ++j) {
      const bool in = eligible(x[j]);
      const uint32_t digit = radix_digit(x[j], level);
      in_bin[j] = in & (digit == bin);
      const float above_bin = select(in & (digit > bin), x[j], kInf);
      lowest_above = above_bin < lowest_above ? above_bin : lowest_above;
    }
    // Branch-free append: every value is written, only members advance the end.
    const size_t size = ws.values.size();
    ws.values.resize(size + n);
    float* end = ws.values.data() + size;
    int64_t appended = 0;
    for (int64_t j = 0; j < n; ++j) {
      end[appended] = x[j];
      appended += in_bin[j];
    }
    ws.values.resize(size + appended);
  }
  return lowest_above < kInf ? lowest_above : std::numeric_limits<float>::quiet_NaN();
}

// Narrows ws.values to sub-bin `bin` of `level`; returns the lowest value of the sub-bins above it
// (all kept), or `floor` if there are none.
inline float keep_sub_bin(const RadixLevel& level, uint32_t bin, float floor, RowWorkspace& ws) {
  for (float v : ws.values) {
    if (radix_digit(v, level) > bin && !(v >= floor)) floor = v;
  }
  const auto end = std::remove_if(ws.values.begin(), ws.values.end(),
                                  [&](float v) { return radix_digit(v, level) != bin; });
  ws.values.erase(end, ws.values.end());
  return floor;
}

// Radix select over the orderable key: a mass histogram of the row's first digit finds the bin
// holding the floor; that bin's values are collected, narrowed digit by digit while too many to
// sort, then sorted and walked group by group.
template <typename T, typename Mass>
float top_p_floor_radix(const RowView<T>& row, const Eligibility& eligible, Mass mass,
                        float top_p, float top_value, RowWorkspace& ws) {
  double total = histogram_row(row, eligible, mass, top_p, top_value, ws);
  for (auto d = ws.bin_mass.size(); d-- > 0;) total += ws.bin_mass[d];
  if (keeps_only_top_group(total)) return top_value;
  const float target = top_p * static_cast<float>(total);

  double above = 0.0;
  const int64_t first_bin = find_boundary_bin(ws, target, above);
  if (first_bin < 0) return -kInf;  // the target exceeds the total by rounding: keep everything
  float floor = collect_bin(row, eligible, static_cast<uint32_t>(first_bin), ws);

  for (size_t i = 1; i < std::size(kRadixLevels) && ws.values.size() > kSortLimit; ++i) {
    const RadixLevel& level = kRadixLevels[i];
    clear_bins(ws, level.bins);
    for (float v : ws.values) {
      ws.bin_mass[radix_digit(v, level)] += mass(v);
      ws.bin_count[radix_digit(v, level)] += 1;
    }
    // Summed in another order the sub-bins can fall short of the target: walk the whole bin.
    const int64_t bin = find_boundary_bin(ws, target, above);
    if (bin < 0) break;
    floor = keep_sub_bin(level, static_cast<uint32_t>(bin), floor, ws);
  }
  // After the last digit the values are all equal, and already in order.
  if (!std::is_sorted(ws.values.begin(), ws.values.end(), std::greater<float>()))
    std::sort(ws.values.begin(), ws.values.end(), std::greater<float>());
  return walk_tie_groups(ws.values, mass, above, target, floor);
}

// The floor of top-k -> top-p: kept = {x : x > above && x >= floor}. Needs one eligible token.
template <typename T, typename Mass>
float top_k_top_p_floor(const RowView<T>& row, TopKCollector* top_k, float above, Mass mass,
                        float top_p, float top_value, RowWorkspace& ws) {
  const float k_floor = top_k != nullptr ? top_k->finish() : -kInf;
  if (!(top_p < 1.0f)) return k_floor;
  const bool survivors_are_few = top_k != nullptr && ws.values.size() <= kSortLimit;
  const float p_floor = survivors_are_few
                            ? top_p_floor_sorted(ws.values, mass, top_p)
                            : top_p_floor_radix(row, Eligibility{above, k_floor}, mass, top_p,
                                                top_value, ws);
  return std::max(k_floor, p_floor);
}

inline bool top_k_active(int64_t k, int64_t vocab) { return k > 0 && k < vocab; }

struct TemperedMax {
  float z;
  int64_t index;
};

// The largest z = x / temperature below +inf among x >= floor, and its first index: the z_max of
// a row whose top logits overflow. Rare, so a plain scalar pass.
template <typename T>
TemperedMax largest_non_overflowing(const RowView<T>& row, float floor, float temperature) {
  TemperedMax best{-kInf, -1};
  alignas(64) float buffer[kBlock];
  for (int64_t b = 0; b < row.num_blocks(); ++b) {
    const float* x = row.load(b, buffer);
    for (int64_t j = 0; j < row.block_size(b); ++j) {
      const float z = x[j] / temperature;
      const bool candidate = x[j] > -kInf && x[j] >= floor && z < kInf;
      if (candidate && (best.index < 0 || z > best.z)) best = {z, b * kBlock + j};
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Gumbel-max helpers.

struct ScoredToken {
  float score = -kInf;
  int64_t index = -1;  // -1: no token scored above -inf

  // Higher score wins, the lower index on ties: an order-free merge of per-thread winners.
  static ScoredToken better(const ScoredToken& a, const ScoredToken& b) {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    if (a.score != b.score) return a.score > b.score ? a : b;
    return a.index < b.index ? a : b;
  }
};

// ---------------------------------------------------------------------------------------------
// Row-parallel loops.

// Runs fn(row, workspace) for every row, one workspace per thread. An op that parallelises inside
// a row (sample's draw) sets `row_uses_threads`: with fewer rows than threads its rows then run
// one after another, leaving the threads to the row.
template <typename Fn>
void for_each_row(int64_t rows, bool row_uses_threads, Fn&& fn) {
  if (row_uses_threads && rows < at::get_num_threads()) {
    RowWorkspace ws;
    for (int64_t b = 0; b < rows; ++b) fn(b, ws);
    return;
  }
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    RowWorkspace ws;
    for (int64_t b = begin; b < end; ++b) fn(b, ws);
  });
}

// Runs fn(row, column_begin, column_end) over a [rows, cols] grid split into chunks of elements,
// so that elementwise ops parallelise even with one row.
}  // namespace decodekit::cpu::rows
