// Helpers shared by the C++ CPU kernels of every op family: branch-free float math (exp / log
// polynomials, bit casts, blends), the Gumbel-max pruning bound, exact fp16 / bf16 -> fp32
// conversion, and the float-dtype dispatch of a tensor. Header-only; the helpers called inside
// vector loops are force-inlined (see DK_ALWAYS_INLINE).
//
// A file that changes GCC's target options for its kernels (denoise.cpp's
// `#pragma GCC target("prefer-vector-width=512")`) includes this header after the pragma, with the
// ATen / c10 headers included before it, so these helpers carry the same options as the loops they
// are inlined into.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

// The float helpers below run inside `#pragma omp simd` loops, which vectorise only if the call is
// inlined; GCC's heuristics sometimes kept fast_exp out of line (a scalar call per element, ~3x
// slower), so inlining is forced.
#define DK_ALWAYS_INLINE [[gnu::always_inline]] inline

namespace decodekit::cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Largest Gumbel noise -log(-log(u)): u <= 0.99999994 gives 16.6355 with fast_log (checked over
// the top 5M uniforms).
constexpr double kMaxGumbelNoise = 16.7;

// Smallest tempered logit that can still reach a Gumbel-max score of `bound` (-inf while nothing
// is drawn): the noise is at most kMaxGumbelNoise, and the margin covers the float rounding of
// z - log(-log(u)).
inline float min_competitive_z(float bound) {
  const double margin = (std::fabs(static_cast<double>(bound)) + kMaxGumbelNoise) * 1e-6;
  return static_cast<float>(static_cast<double>(bound) - kMaxGumbelNoise - margin);
}

// ---------------------------------------------------------------------------------------------
// Branch-free float helpers. libm's expf/logf calls do not vectorise without -ffast-math, so the
// hot loops use these Cephes polynomials (~1 ulp, the same class of error as torch's own exp/log).

DK_ALWAYS_INLINE float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

DK_ALWAYS_INLINE uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// Bitwise blend instead of `?:` where an arm is computed: with -ftrapping-math (the default) GCC
// sinks the computation into a branch and then will not if-convert it, so the loop stays scalar.
DK_ALWAYS_INLINE float select(bool condition, float if_true, float if_false) {
  const uint32_t mask = 0u - static_cast<uint32_t>(condition);
  return bits_to_float((float_to_bits(if_true) & mask) | (float_to_bits(if_false) & ~mask));
}

// The domain of exp_polynomial: below it e^x is under FLT_MIN, above it e^x overflows.
constexpr float kExpLowest = -87.0f;
constexpr float kExpHighest = 88.0f;

// e^x within 1.5 ulp for x in [kExpLowest, kExpHighest] (callers clamp x; NaN -> NaN): the
// Cephes polynomial on the reduced argument, times 2^n (n >= -126, a normal power of two).
DK_ALWAYS_INLINE float exp_polynomial(float x) {
  // Round to nearest by the 1.5 * 2^23 trick: plain arithmetic, so it vectorises everywhere.
  constexpr float kRoundMagic = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRoundMagic) - kRoundMagic;
  const float r = x - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return p * scale;
}

// exp(x) within 1.5 ulp for x in [-87, 88] (callers pass z - z_max <= 0); -inf -> 0, NaN -> NaN,
// x < -87 -> 0 (below FLT_MIN: such masses never change a decision), x > 88 -> inf.
DK_ALWAYS_INLINE float fast_exp(float x) {
  constexpr float kLowest = kExpLowest, kHighest = kExpHighest;
  const float clamped = x < kLowest ? kLowest : (x > kHighest ? kHighest : x);
  float result = exp_polynomial(clamped);
  result = select(x < kLowest, 0.0f, result);
  result = select(x > kHighest, kInf, result);
  return select(x != x, x, result);
}

// log(x) within 1.5 ulp for normal x > 0; 0 -> -inf, inf -> inf, negative / NaN -> NaN.
DK_ALWAYS_INLINE float fast_log(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t exponent = static_cast<int32_t>(bits >> 23) - 126;
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F000000u);  // x = m * 2^exponent, m in [0.5, 1)
  const bool below_sqrt_half = m < 0.707106781186547524f;
  exponent -= below_sqrt_half ? 1 : 0;
  m = select(below_sqrt_half, m + m, m);
  const float f = m - 1.0f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float e = static_cast<float>(exponent);
  float result = p * f * f2 + e * -2.12194440e-4f - 0.5f * f2;
  result = f + result + e * 0.693359375f;
  result = select(x == 0.0f, -kInf, result);
  result = select(x == kInf, kInf, result);
  return select(x >= 0.0f, result, std::numeric_limits<float>::quiet_NaN());
}

// Monotone integer image of a float (larger float -> larger key, -0.0 == +0.0) for radix select
// and sort keys.
DK_ALWAYS_INLINE uint32_t orderable_key(float x) {
  const uint32_t bits = float_to_bits(x + 0.0f);
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u;
  return bits ^ flip;
}

// ---------------------------------------------------------------------------------------------
// fp16 / bf16 -> fp32, exact.

// Exact fp16 -> fp32 without branches (the FP16 library's method), so conversion loops vectorise.
DK_ALWAYS_INLINE float half_bits_to_float(uint16_t half) {
  const uint32_t w = static_cast<uint32_t>(half) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude =
      two_w < (1u << 27) ? float_to_bits(denormalized) : float_to_bits(normalized);
  return bits_to_float(sign | magnitude);
}

// dst[j] = float(src[j]) for j < n.
DK_ALWAYS_INLINE void convert_to_float(const c10::Half* src, int64_t n, float* dst) {
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = half_bits_to_float(bits[j]);
}

DK_ALWAYS_INLINE void convert_to_float(const c10::BFloat16* src, int64_t n, float* dst) {
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = bits_to_float(static_cast<uint32_t>(bits[j]) << 16);
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

// Calls fn(T{}) with T the element type of `t` (float, c10::Half or c10::BFloat16).
template <typename Fn>
void dispatch_float_types(const at::Tensor& t, const char* op, Fn&& fn) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return fn(float{});
    case at::kHalf:
      return fn(c10::Half{});
    case at::kBFloat16:
      return fn(c10::BFloat16{});
    default:
      TORCH_CHECK(false, op, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

}  // namespace decodekit::cpu
