// CPU kernel of the `discrete_diffusion` op family (decodekit._C); semantics:
// reference/discrete_diffusion.py, raw contract: ops/discrete_diffusion.py.
//
// The Python ops layer has validated every argument and allocated the output, so this function
// assumes contiguous CPU tensors of the documented dtypes, B, L, V >= 1, L * V <= 2^32,
// sigma > 0, dsigma >= 0 and mask_id in [0, V) on the absorbing graph. Token ids outside [0, V)
// are still never used as an index (they give -1, as in the reference).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace decodekit::cpu {

// scores [B, L, V] f32/f16/bf16; tokens int64 [B, L]; sigma, dsigma f32 [B]; fixed bool [B, L]
// or empty (no fixed positions); seed, offset int64 [B]; graph 0 absorbing, 1 uniform; sampler
// 0 euler, 1 analytic, 2 final; param 0 log_score, 1 clean_logits; mask_id the absorbing state
// (-1 on the uniform graph)  ->  out int64 [B, L]: the next canvas, -1 at invalid positions.
void discrete_diffusion_step(const at::Tensor& scores, const at::Tensor& tokens,
                             const at::Tensor& sigma, const at::Tensor& dsigma,
                             const at::Tensor& fixed, const at::Tensor& seed,
                             const at::Tensor& offset, int64_t graph, int64_t sampler,
                             int64_t param, int64_t mask_id, const at::Tensor& out);

}  // namespace decodekit::cpu
