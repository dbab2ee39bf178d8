// Host launcher of the discrete diffusion kernel (csrc/include/decodekit/discrete_diffusion.cuh),
// torch-free so that bindings.cpp (host compiler) and discrete_diffusion.cu (nvcc) share one
// declaration. Asynchronous on `stream`, never synchronises, returns the launch status.
// Tensors are raw contiguous row-major buffers on the current device; per-row parameters have B entries.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "decodekit/common.cuh"

namespace decodekit {
namespace discrete_diffusion {

using decodekit::DType;  // element type of scores (decodekit/common.cuh)

// Largest V the kernel indexes with int (room left for the vector loop's last step).
constexpr int64_t kMaxVocab = int64_t{1} << 30;

// scores [B, L, V]; tokens i64[B, L]; sigma, dsigma f32[B]; fixed bool[B, L] or null; seed, offset
// i64[B]; graph 0 absorbing / 1 uniform; sampler 0 euler / 1 analytic / 2 final; param 0 log_score /
// 1 clean_logits; mask_id in [0, V) on the absorbing graph (ignored on the uniform one); out i64[B, L].
cudaError_t launch_discrete_diffusion_step(const void* scores, DType dtype, int64_t batch, int64_t length,
                                           int64_t vocab, const int64_t* tokens, const float* sigma,
                                           const float* dsigma, const bool* fixed, const int64_t* seed,
                                           const int64_t* offset, int64_t graph, int64_t sampler, int64_t param,
                                           int64_t mask_id, int64_t* out, cudaStream_t stream);

}  // namespace discrete_diffusion
}  // namespace decodekit
