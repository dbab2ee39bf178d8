// Launcher of the discrete diffusion kernel: dtype dispatch, group size and grid shape. No torch
// headers here, so nvcc only compiles the kernel (the torch-facing wrapper lives in bindings.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "decodekit/common.cuh"
#include "decodekit/discrete_diffusion.cuh"
#include "discrete_diffusion_launch.h"

namespace decodekit {
namespace discrete_diffusion {
namespace {

template <typename T, int kGroup>
void launch_typed(const void* scores, int64_t positions, int64_t length, int64_t vocab, const int64_t* tokens,
                  const float* sigma, const float* dsigma, const bool* fixed, const int64_t* seed,
                  const int64_t* offset, int64_t graph, int64_t sampler, int64_t param, int64_t mask_id, int64_t* out,
                  cudaStream_t stream) {
  constexpr int64_t kGroupsPerBlock = kBlockThreads / kGroup;
  const auto blocks = static_cast<unsigned>((positions + kGroupsPerBlock - 1) / kGroupsPerBlock);
  discrete_diffusion_step_kernel<T, kGroup><<<blocks, kBlockThreads, 0, stream>>>(
      static_cast<const T*>(scores), tokens, sigma, dsigma, fixed, seed, offset, positions, static_cast<int>(length),
      static_cast<int>(vocab), static_cast<int>(graph), static_cast<int>(sampler), static_cast<int>(param), mask_id,
      out);
}

}  // namespace

cudaError_t launch_discrete_diffusion_step(const void* scores, DType dtype, int64_t batch, int64_t length,
                                           int64_t vocab, const int64_t* tokens, const float* sigma,
                                           const float* dsigma, const bool* fixed, const int64_t* seed,
                                           const int64_t* offset, int64_t graph, int64_t sampler, int64_t param,
                                           int64_t mask_id, int64_t* out, cudaStream_t stream) {
  if (batch <= 0 || length <= 0) return cudaSuccess;
  const bool bad_mode = graph < kAbsorbing || graph > kUniform || sampler < kEuler || sampler > kFinal ||
                        param < kLogScore || param > kCleanLogits;
  // One position per CTA (grid.x < 2^31) at most; int indexing inside a row.
  if (bad_mode || vocab <= 0 || vocab > kMaxVocab || batch * length > std::numeric_limits<int32_t>::max() ||
      (graph == kAbsorbing && (mask_id < 0 || mask_id >= vocab))) {
    return cudaErrorInvalidValue;
  }
  const int64_t positions = batch * length;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (vocab <= kWarpMaxVocab) {
      launch_typed<T, 32>(scores, positions, length, vocab, tokens, sigma, dsigma, fixed, seed, offset, graph,
                          sampler, param, mask_id, out, stream);
    } else {
      launch_typed<T, kBlockThreads>(scores, positions, length, vocab, tokens, sigma, dsigma, fixed, seed, offset,
                                     graph, sampler, param, mask_id, out, stream);
    }
  });
}

}  // namespace discrete_diffusion
}  // namespace decodekit
