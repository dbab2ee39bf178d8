// C++ CPU kernel of the `discrete_diffusion` op family: one SEDD reverse step. The spec is
// decodekit/reference/discrete_diffusion.py (formulas and names below follow its docstring).
//
// at::parallel_for over the B * L canvas positions. A fixed position, or an unmasked one on the
// absorbing graph, keeps its token and never reads its row. Every other row is read twice, in
// blocks of kBlock values converted to float32 on load, with no per-row heap memory:
//   pass 1  the NaN / +inf check and the statistics the weights need: sum_{y != x} S_y for log
//           scores; the softmax max and normaliser (online rescaling, as denoise.cpp) for clean
//           logits, from which p_x and sum S follow in closed form;
//   pass 2  the weight P_y of every y != x with a running Gumbel-max over them (a Philox uniform
//           only for the y whose weight can still reach the best score), then the stay weight
//           P_x, which needs sum S, offered last under the lowest-index tie rule.
// x is the only special entry: on the absorbing graph only positions with x == mask_id get here.
// The float32 formulas are the reference's, operation for operation (expm1 / exp where it uses
// them), so tokens agree except on float near-ties; sums are accumulated in double.

#include "discrete_diffusion.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <decodekit/rng.cuh>

// 512-bit vectors where AVX-512 exists (GCC defaults to 256): the exp polynomial and the
// conversions are throughput-bound (the same choice and reason as denoise.cpp).
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

// After the pragma, so the inlined helpers get the same target options as the loops here.
#include "cpu_math.h"
#include "philox_simd.h"

namespace decodekit::cpu {
namespace {

// Values per block: long enough to amortise the per-block bookkeeping, short enough for L1.
constexpr int64_t kBlock = 256;

// e^d rounds to 0 in float32 below this (half the smallest denormal, 2^-150 = e^-103.97).
constexpr float kExpUnderflow = -104.0f;

// Codes of the raw contract (reference Graph / Sampler / Parameterization).
enum Graph : int64_t { kAbsorbing = 0, kUniform = 1 };
enum Sampler : int64_t { kEuler = 0, kAnalytic = 1, kFinal = 2 };
enum Param : int64_t { kLogScore = 0, kCleanLogits = 1 };

inline void load_block(const float* src, int64_t n, float* dst) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

inline void load_block(const c10::Half* src, int64_t n, float* dst) { convert_to_float(src, n, dst); }

inline void load_block(const c10::BFloat16* src, int64_t n, float* dst) { convert_to_float(src, n, dst); }

// out[j] = e^(s[j] - shift). fast_exp flushes results below FLT_MIN to 0 and overflows from 88
// on, where float32 still has denormals / finite values that the reference's torch.exp keeps
// (an all-tiny row must still draw); the rare blocks reaching those ranges redo them with expf.
void exp_shifted(const float* s, int64_t n, float shift, float* out) {
  int32_t outside = 0;
#pragma omp simd reduction(| : outside)
  for (int64_t j = 0; j < n; ++j) {
    const float d = s[j] - shift;
    out[j] = fast_exp(d);
    outside |= static_cast<int32_t>((d > kExpHighest) | ((d < kExpLowest) & (d > kExpUnderflow)));
  }
  if (outside == 0) return;
  for (int64_t j = 0; j < n; ++j) {
    const float d = s[j] - shift;
    if (d > kExpHighest || d < kExpLowest) out[j] = std::exp(d);
  }
}

float block_sum(const float* v, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += v[j];
  return sum;
}

// Largest entry, NaN ignored (-inf for an all -inf / NaN block).
float block_max(const float* v, int64_t n) {
  float max = -kInf;
#pragma omp simd reduction(max : max)
  for (int64_t j = 0; j < n; ++j) max = v[j] > max ? v[j] : max;
  return max;
}

struct StepKind {
  Graph graph;
  Sampler sampler;
  Param param;
  int64_t vocab;
};

struct PositionInput {
  int64_t x;         // current token, in [0, V)
  int64_t position;  // canvas position l
  float sigma;
  float dsigma;
  uint64_t seed;
  uint64_t offset;

  // Philox counter c0 of vocab id 0: (l * V) mod 2^32 (the ops layer keeps L * V <= 2^32).
  uint32_t counter_base(int64_t vocab) const {
    return static_cast<uint32_t>(static_cast<uint64_t>(position) * static_cast<uint64_t>(vocab));
  }
};

// ---------------------------------------------------------------------------------------------
// Pass 1.

struct RowStats {
  bool bad = false;        // a NaN or +inf in the row
  float max = -kInf;       // clean_logits: the largest s_y over y != x
  double sum_other = 0.0;  // log_score: sum_{y != x} e^{s_y}; clean_logits: sum_{y != x} e^{s_y - max}
};

template <typename T>
RowStats scan_row(const T* row, const StepKind& kind, int64_t x) {
  alignas(64) float s[kBlock], e[kBlock];
  RowStats stats;
  for (int64_t begin = 0; begin < kind.vocab; begin += kBlock) {
    const int64_t n = std::min(kBlock, kind.vocab - begin);
    load_block(row + begin, n, s);
    int32_t bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t j = 0; j < n; ++j) bad |= static_cast<int32_t>((s[j] != s[j]) | (s[j] == kInf));
    if (bad != 0) {
      stats.bad = true;
      return stats;
    }
    // S_x = 1 by definition (and on the absorbing graph x is the mask, outside the softmax).
    if (x >= begin && x < begin + n) s[x - begin] = -kInf;
    if (kind.param == kLogScore) {
      exp_shifted(s, n, 0.0f, e);
      stats.sum_other += block_sum(e, n);
      continue;
    }
    const float new_max = block_max(s, n);
    if (new_max == -kInf) continue;
    if (new_max > stats.max) {
      if (stats.max > -kInf) stats.sum_other *= std::exp(static_cast<double>(stats.max) - new_max);
      stats.max = new_max;
    }
    exp_shifted(s, n, stats.max, e);
    stats.sum_other += block_sum(e, n);
  }
  return stats;
}

// ---------------------------------------------------------------------------------------------
// Row constants of pass 2, from the statistics.

struct RowWeights {
  bool valid = true;
  // Concrete score of y != x from e = e^{s_y - shift}: log_score S = e; absorbing clean_logits
  // S = (e / z) / expm1_sigma; uniform clean_logits S = max(0, 1 + p a/c - p_x a/(a + c)), p = e / z.
  float shift = 0.0f;
  float z = 1.0f;
  float expm1_sigma = 1.0f;
  float a_over_c = 0.0f;
  float a_over_a_plus_c = 0.0f;
  float p_x = 0.0f;
  // Transition weight of y != x from S: euler absorbing dsigma S, euler uniform dsigma (S / V),
  // analytic / final absorbing S E, uniform max(0, S (E + 1) - E sum S / V) jump.
  float dsigma = 0.0f;
  float e = 0.0f;  // expm1(dsigma)
  float e_total_over_v = 0.0f;
  float jump = 0.0f;
  float vocab = 1.0f;
  float stay = 0.0f;  // P_x
};

template <typename T>
RowWeights row_weights(const T* row, const StepKind& kind, const PositionInput& in, const RowStats& stats) {
  RowWeights w;
  w.vocab = static_cast<float>(kind.vocab);
  double sum_other = stats.sum_other;  // sum_{y != x} S_y
  if (kind.param == kCleanLogits) {
    if (kind.graph == kAbsorbing) {
      // Every softmax entry is -inf (the mask column excluded): invalid.
      w.valid = stats.max > -kInf;
      w.shift = stats.max;
      w.z = static_cast<float>(stats.sum_other);
      w.expm1_sigma = std::expm1(in.sigma);
      sum_other = 1.0 / static_cast<double>(w.expm1_sigma);  // the p_y sum to 1
    } else {
      float s_x;
      load_block(row + in.x, 1, &s_x);
      const float max = std::max(stats.max, s_x);
      w.valid = max > -kInf;
      const double z_other =
          stats.max > -kInf ? stats.sum_other * std::exp(static_cast<double>(stats.max) - max) : 0.0;
      const double z = z_other + static_cast<double>(std::exp(s_x - max));
      w.shift = max;
      w.z = static_cast<float>(z);
      w.p_x = std::exp(s_x - max) / w.z;
      const float a = std::exp(-in.sigma);
      const float c = -std::expm1(-in.sigma) / w.vocab;
      w.a_over_c = a / c;
      w.a_over_a_plus_c = a / (a + c);
      // sum over y != x of 1 + p_y a/c - p_x a/(a + c) (the clamp at 0 only absorbs rounding).
      sum_other = static_cast<double>(kind.vocab - 1) *
                      (1.0 - static_cast<double>(w.p_x) * w.a_over_a_plus_c) +
                  static_cast<double>(w.a_over_c) * (z_other / z);
    }
  }
  const float total = static_cast<float>(1.0 + sum_other);
  // A non-finite sum S (or NaN from a/c = inf times p = 0) makes the row invalid.
  w.valid = w.valid && std::isfinite(total);

  w.dsigma = in.dsigma;
  if (kind.sampler == kEuler) {
    const double rate_sum = kind.graph == kAbsorbing ? sum_other : sum_other / kind.vocab;
    w.stay = std::max(0.0f, static_cast<float>(1.0 - static_cast<double>(in.dsigma) * rate_sum));
    return w;
  }
  w.e = std::expm1(in.dsigma);
  if (kind.graph == kAbsorbing) {
    w.stay = kind.sampler == kFinal ? 0.0f : std::max(0.0f, (w.e + 1.0f) - w.e * total);
    return w;
  }
  w.e_total_over_v = w.e * total / w.vocab;
  w.jump = -std::expm1(-in.dsigma) / w.vocab;
  const float stag_x = std::max(0.0f, 1.0f * (w.e + 1.0f) - w.e_total_over_v);
  w.stay = stag_x * (1.0f - (w.vocab - 1.0f) * w.jump);
  return w;
}

// ---------------------------------------------------------------------------------------------
// Pass 2.

// P[j] (weights of block entries y != x; 0 at x) from s [n]; returns whether some S_y was not finite.
bool block_weights(const float* s, int64_t n, const StepKind& kind, const RowWeights& w, float* p) {
  alignas(64) float score[kBlock];
  exp_shifted(s, n, w.shift, score);
  if (kind.param == kCleanLogits && kind.graph == kAbsorbing) {
    const float z = w.z, expm1_sigma = w.expm1_sigma;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) score[j] = (score[j] / z) / expm1_sigma;
  } else if (kind.param == kCleanLogits) {
    const float z = w.z, a_c = w.a_over_c, stay_term = w.p_x * w.a_over_a_plus_c;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float value = (1.0f + (score[j] / z) * a_c) - stay_term;
      score[j] = select(value < 0.0f, 0.0f, value);  // clamp_min(0) keeps NaN, as torch
    }
  }
  int32_t nonfinite = 0;
#pragma omp simd reduction(| : nonfinite)
  for (int64_t j = 0; j < n; ++j) nonfinite |= static_cast<int32_t>(!(score[j] <= std::numeric_limits<float>::max()));

  if (kind.sampler == kEuler && kind.graph == kAbsorbing) {
    const float ds = w.dsigma;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) p[j] = ds * score[j];
  } else if (kind.sampler == kEuler) {
    const float ds = w.dsigma, v = w.vocab;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) p[j] = ds * (score[j] / v);
  } else if (kind.graph == kAbsorbing) {
    const float e = w.e;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) p[j] = score[j] * e;
  } else {
    const float e1 = w.e + 1.0f, shift = w.e_total_over_v, jump = w.jump;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float stag = score[j] * e1 - shift;
      p[j] = select(stag < 0.0f, 0.0f, stag) * jump;
    }
  }
  return nonfinite != 0;
}

// Highest Gumbel score log P_y - log(-log u_y) wins; ties go to the lowest index. The first
// positive weight is taken even at score -inf (its uniform was 0), as the reference's first_argmax.
struct GumbelDraw {
  float score = -kInf;
  int64_t index = -1;

  void offer(float key, int64_t y) {
    if (index < 0 || key > score || (key == score && y < index)) *this = {key, y};
  }
};

// Smallest weight whose Gumbel score can still reach `best`: the noise is at most kMaxGumbelNoise
// (cpu_math.h), and min_competitive_z's margin covers the rounding of the log and of this exp.
float min_competitive_weight(float best) {
  if (best == -kInf) return 0.0f;
  if (best == kInf) return kInf;
  return static_cast<float>(std::exp(static_cast<double>(min_competitive_z(best))));
}

// Folds the block's weights p [n] (vocab ids begin..begin + n) into `draw`. Philox (~100
// operations a uniform) dominates, so only weights whose score can still reach both the best so
// far and `bound` (the stay entry's score, offered after the loop) draw a uniform.
void draw_block(const float* p, int64_t n, int64_t begin, uint64_t seed, uint64_t offset,
                uint32_t base, float bound, GumbelDraw& draw) {
  const float threshold = min_competitive_weight(std::max(draw.score, bound));
  const float top = block_max(p, n);
  if (!(top > 0.0f) || !(top >= threshold)) return;
  alignas(64) int32_t lanes[kBlock];
  alignas(64) float key[kBlock];
  int64_t count = 0;
  // Branch-free append: every lane is written, only candidates advance the end.
  for (int64_t j = 0; j < n; ++j) {
    lanes[count] = static_cast<int32_t>(j);
    count += static_cast<int64_t>((p[j] > 0.0f) & (p[j] >= threshold));
  }
  if (count == 0) return;
  philox_uniforms_at(seed, offset, kStreamDiffusionToken, base + static_cast<uint32_t>(begin), lanes,
                     count, key);
#pragma omp simd
  for (int64_t c = 0; c < count; ++c) key[c] = fast_log(p[lanes[c]]) - fast_log(-fast_log(key[c]));
  const float best = block_max(key, count);
  // Blocks come in index order: a later block must be strictly better; inside the block the
  // first candidate with the best score has the lowest index (all -inf: the first candidate).
  if (draw.index < 0 || best > draw.score) {
    int64_t c = 0;
    while (c + 1 < count && key[c] != best) ++c;
    draw = {key[c], begin + lanes[c]};
  }
}

template <typename T>
int64_t step_position(const T* row, const StepKind& kind, const PositionInput& in) {
  const RowStats stats = scan_row(row, kind, in.x);
  if (stats.bad) return -1;
  const RowWeights w = row_weights(row, kind, in, stats);
  if (!w.valid) return -1;

  const uint32_t base = in.counter_base(kind.vocab);
  // The stay weight is known from pass 1: its score bounds the pruning from the first block on
  // (at a masked position of a small step it is the likely winner: on bench_discrete_diffusion's
  // absorbing cases 0.23 uniforms per entry instead of 0.70-0.74, uniform 0.21 instead of 0.30),
  // though it is offered last, for the tie rule.
  float stay_score = -kInf;
  if (w.stay > 0.0f) {
    const float u = decodekit::philox_uniform(in.seed, in.offset, kStreamDiffusionToken,
                                              base + static_cast<uint32_t>(in.x));
    stay_score = fast_log(w.stay) - fast_log(-fast_log(u));
  }
  alignas(64) float s[kBlock], p[kBlock];
  GumbelDraw draw;
  bool nonfinite = false;
  for (int64_t begin = 0; begin < kind.vocab; begin += kBlock) {
    const int64_t n = std::min(kBlock, kind.vocab - begin);
    load_block(row + begin, n, s);
    const bool has_x = in.x >= begin && in.x < begin + n;
    if (has_x) s[in.x - begin] = -kInf;  // any finite S; its weight is replaced below
    nonfinite |= block_weights(s, n, kind, w, p);
    if (has_x) p[in.x - begin] = 0.0f;
    draw_block(p, n, begin, in.seed, in.offset, base, stay_score, draw);
  }
  if (nonfinite) return -1;
  if (w.stay > 0.0f) draw.offer(stay_score, in.x);
  return draw.index;  // -1: no positive weight
}

}  // namespace

void discrete_diffusion_step(const at::Tensor& scores, const at::Tensor& tokens,
                             const at::Tensor& sigma, const at::Tensor& dsigma,
                             const at::Tensor& fixed, const at::Tensor& seed,
                             const at::Tensor& offset, int64_t graph, int64_t sampler,
                             int64_t param, int64_t mask_id, const at::Tensor& out) {
  TORCH_CHECK(graph == kAbsorbing || graph == kUniform,
              "discrete_diffusion_step: graph must be 0 or 1, got ", graph);
  TORCH_CHECK(sampler >= kEuler && sampler <= kFinal,
              "discrete_diffusion_step: sampler must be 0..2, got ", sampler);
  TORCH_CHECK(param == kLogScore || param == kCleanLogits,
              "discrete_diffusion_step: param must be 0 or 1, got ", param);
  const int64_t batch = scores.size(0), length = scores.size(1), vocab = scores.size(2);
  TORCH_CHECK(graph != kAbsorbing || (mask_id >= 0 && mask_id < vocab),
              "discrete_diffusion_step: mask_id must be in [0, ", vocab, "), got ", mask_id);
  const StepKind kind{static_cast<Graph>(graph), static_cast<Sampler>(sampler),
                      static_cast<Param>(param), vocab};
  const int64_t* token_ids = tokens.data_ptr<int64_t>();
  const bool* fixed_flags = fixed.numel() > 0 ? fixed.data_ptr<bool>() : nullptr;
  const float* sigmas = sigma.data_ptr<float>();
  const float* dsigmas = dsigma.data_ptr<float>();
  const int64_t* seeds = seed.data_ptr<int64_t>();
  const int64_t* offsets = offset.data_ptr<int64_t>();
  int64_t* next = out.data_ptr<int64_t>();
  // Positions of a small vocabulary are cheap: hand out enough per task to amortise scheduling.
  const int64_t grain = std::max<int64_t>(1, 16384 / vocab);

  dispatch_float_types(scores, "discrete_diffusion_step", [&](auto tag) {
    using T = decltype(tag);
    const T* data = scores.data_ptr<T>();
    at::parallel_for(0, batch * length, grain, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const int64_t x = token_ids[i];
        if (x < 0 || x >= vocab) {
          next[i] = -1;
          continue;
        }
        if ((fixed_flags != nullptr && fixed_flags[i]) || (kind.graph == kAbsorbing && x != mask_id)) {
          next[i] = x;
          continue;
        }
        const int64_t b = i / length;
        const PositionInput in{x, i - b * length, sigmas[b], dsigmas[b],
                               static_cast<uint64_t>(seeds[b]), static_cast<uint64_t>(offsets[b])};
        next[i] = step_position(data + i * vocab, kind, in);
      }
    });
  });
}

}  // namespace decodekit::cpu
