// Philox4x32-10 exactly as triton.language.random.philox, shared by the C++ CPU kernels and the
// CUDA kernels (torch-free). The spec is decodekit/reference/rng.py; the counter layout is
//   c0 = element index in the row, c1 = offset low 32 bits, c2 = stream id, c3 = offset high 32 bits,
//   key = (seed & 0xffffffff, seed >> 32).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DK_HOST_DEVICE inline
#endif

namespace decodekit {

// Stream ids (counter word c2); must match decodekit.reference.rng.Stream.
enum RngStream : uint32_t {
  kStreamSampleToken = 0,
  kStreamAcceptCoin = 1,
  kStreamResidualToken = 2,
  kStreamProposalToken = 3,
  kStreamConfidenceNoise = 4,
  kStreamTransferCoin = 5,
  kStreamSelectionNoise = 6,
  kStreamDiffusionToken = 7,
};

struct Philox4 {
  uint32_t x, y, z, w;
};

DK_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

DK_HOST_DEVICE Philox4 philox4x32_10(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t old_c0 = c0, old_c2 = c2;
    c0 = mulhi32(kRoundB, old_c2) ^ c1 ^ k0;
    c2 = mulhi32(kRoundA, old_c0) ^ c3 ^ k1;
    c1 = kRoundB * old_c2;
    c3 = kRoundA * old_c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float: fold the sign bit, scale by ~2^-31 in float32. Range [0, 0.99999994].
DK_HOST_DEVICE float uint_to_uniform_float(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// The contract's uniform for (seed, offset, stream, element index).
DK_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t index) {
  const Philox4 r = philox4x32_10(seed, index, static_cast<uint32_t>(offset), stream,
                                  static_cast<uint32_t>(offset >> 32));
  return uint_to_uniform_float(r.x);
}

}  // namespace decodekit
