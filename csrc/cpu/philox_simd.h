// Philox4x32-10 uniforms for many counters at once on CPUs: rng.cuh's philox_uniform, 16 lanes at a
// time where AVX-512 exists. Gumbel-max draws (sampling, spec_verify's final draw, denoise's
// proposals) spend most of their time here: one Philox block (~100 operations) per candidate token.
#pragma once

#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// GCC 12 reports -Wmaybe-uninitialized inside avx512fintrin.h (its _mm512_undefined_* helpers,
// GCC bug 105593) wherever AVX-512 intrinsics are inlined; silenced for every file that includes
// this header (they all use the intrinsics below).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <decodekit/rng.cuh>

namespace decodekit::cpu {

#if defined(__AVX512F__)
// High 32 bits of the 32x32-bit products of 16 lanes: the even lanes' 64-bit products shifted
// down, blended with the odd lanes' (already in the high halves).
inline __m512i mulhi_epu32(__m512i a, __m512i b) {
  const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(a, b), 32);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  return _mm512_mask_blend_epi32(0xAAAA, even, odd);
}

// rng.cuh's philox_uniform for 16 counters c0 sharing seed, c1, c2 (stream) and c3: the same
// rounds and uint32 -> float mapping, 16 lanes at a time (GCC's auto-vectorisation of the 64-bit
// products is about 4x slower).
inline __m512 philox_uniform16(uint64_t seed, uint32_t c1_word, uint32_t c2_word, uint32_t c3_word,
                               __m512i c0) {
  const __m512i round_a = _mm512_set1_epi32(static_cast<int32_t>(0xD2511F53u));
  const __m512i round_b = _mm512_set1_epi32(static_cast<int32_t>(0xCD9E8D57u));
  __m512i c1 = _mm512_set1_epi32(static_cast<int32_t>(c1_word));
  __m512i c2 = _mm512_set1_epi32(static_cast<int32_t>(c2_word));
  __m512i c3 = _mm512_set1_epi32(static_cast<int32_t>(c3_word));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i old_c0 = c0, old_c2 = c2;
    c0 = _mm512_xor_si512(_mm512_xor_si512(mulhi_epu32(round_b, old_c2), c1),
                          _mm512_set1_epi32(static_cast<int32_t>(k0)));
    c2 = _mm512_xor_si512(_mm512_xor_si512(mulhi_epu32(round_a, old_c0), c3),
                          _mm512_set1_epi32(static_cast<int32_t>(k1)));
    c1 = _mm512_mullo_epi32(round_b, old_c2);
    c3 = _mm512_mullo_epi32(round_a, old_c0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // uint_to_uniform_float: fold the sign (x < 0 -> ~x), convert, scale.
  const __m512i folded = _mm512_xor_si512(c0, _mm512_srai_epi32(c0, 31));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(folded), _mm512_set1_ps(4.6566127342e-10f));
}
#endif

// u[c] = philox_uniform(seed, offset, stream, base + lanes[c]) for c < count (uint32 counter
// arithmetic, as the contract's c0).
inline void philox_uniforms_at(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t base,
                               const int32_t* lanes, int64_t count, float* u) {
  int64_t c = 0;
#if defined(__AVX512F__)
  const auto c1 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  for (; c + 16 <= count; c += 16) {
    const __m512i c0 = _mm512_add_epi32(_mm512_loadu_si512(lanes + c),
                                        _mm512_set1_epi32(static_cast<int32_t>(base)));
    _mm512_storeu_ps(u + c, philox_uniform16(seed, c1, stream, c3, c0));
  }
#endif
  for (; c < count; ++c) {
    u[c] = decodekit::philox_uniform(seed, offset, stream, base + static_cast<uint32_t>(lanes[c]));
  }
}

}  // namespace decodekit::cpu
