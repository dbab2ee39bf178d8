// CPU kernels of the `sampling` op family (decodekit._C); semantics: reference/sampling.py.
//
// The Python ops layer has validated every argument and allocated the outputs, so these functions
// assume contiguous CPU tensors, B >= 1, V >= 1, temperature >= 0, top_k >= 0, 0 < top_p <= 1,
// 0 <= min_p <= 1. They return nothing and write their outputs.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace decodekit::cpu {

// logits [B, V] f32/f16/bf16; temperature, top_p, min_p f32 [B]; top_k int32 [B]; seed, offset
// int64 [B]  ->  tokens_out int64 [B], logprobs_out f32 [B], valid_out bool [B].
void sample(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
            const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seed,
            const at::Tensor& offset, const at::Tensor& tokens_out, const at::Tensor& logprobs_out,
            const at::Tensor& valid_out);

// logits [B, V]; token_counts int32 [B, V]; repetition, frequency, presence f32 [B]; out [B, V] of
// the logits dtype (may alias logits).
void apply_penalties(const at::Tensor& logits, const at::Tensor& token_counts,
                     const at::Tensor& repetition, const at::Tensor& frequency,
                     const at::Tensor& presence, const at::Tensor& out);

// logits [B, V]; top_k int32 [B]; top_p f32 [B]; out [B, V] of the logits dtype.
void mask_logits(const at::Tensor& logits, const at::Tensor& top_k, const at::Tensor& top_p,
                 const at::Tensor& out);

// probs [B, V]; top_k int32 [B]; top_p f32 [B]; out [B, V] of the probs dtype.
void top_k_top_p_renorm(const at::Tensor& probs, const at::Tensor& top_k, const at::Tensor& top_p,
                        const at::Tensor& out);

// seed, offset int64 [B]; out f32 [B, n]: out[b, i] = uniform(seed[b], offset[b], stream, i).
void philox_uniform(const at::Tensor& seed, const at::Tensor& offset, int64_t stream,
                    const at::Tensor& out);

}  // namespace decodekit::cpu
