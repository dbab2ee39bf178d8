// CPU kernels of the `spec_verify` op family (decodekit._C); semantics: reference/spec_verify.py.
//
// The Python ops layer has validated every argument and allocated the outputs, so these functions
// assume contiguous CPU tensors, B >= 1, V >= 1, temperature >= 0, top_k >= 0, 0 < top_p <= 1,
// typical_eps >= 0, typical_delta >= 0, offset >= 0. Integer VALUES (draft / node tokens, child
// and sibling links, method codes) are not trusted: out-of-range ones are read as the contract
// says (never accepted / -1 / lossless), never used to index. They return nothing and write their
// outputs.
#pragma once

#include <ATen/core/Tensor.h>

namespace decodekit::cpu {

// target_logits [B, n+1, V] f32/f16/bf16; draft_tokens int64 [B, n]; draft_probs f32 [B, n, V]
// when has_draft_probs, else ignored (an empty tensor); method int32 [B] (0 lossless, 1 greedy,
// 2 typical); temperature, top_p, typical_eps, typical_delta f32 [B]; top_k int32 [B]; seed,
// offset int64 [B]  ->  tokens_out int64 [B, n+1] (-1 padded), num_accepted_out,
// num_emitted_out int32 [B], valid_out bool [B].
void verify_chain(const at::Tensor& target_logits, const at::Tensor& draft_tokens,
                  const at::Tensor& draft_probs, bool has_draft_probs, const at::Tensor& method,
                  const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                  const at::Tensor& typical_eps, const at::Tensor& typical_delta,
                  const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& tokens_out,
                  const at::Tensor& num_accepted_out, const at::Tensor& num_emitted_out,
                  const at::Tensor& valid_out);

// target_logits [B, N, V]; tokens int64 [B, N]; first_child, next_sibling int32 [B, N];
// draft_probs f32 [B, N, V] when has_draft_probs; per-row parameters as verify_chain  ->
// accepted_nodes_out int32 [B, W], tokens_out int64 [B, W] (W >= 1 columns, -1 padded),
// num_accepted_out, num_emitted_out int32 [B], valid_out bool [B].
void verify_tree(const at::Tensor& target_logits, const at::Tensor& tokens,
                 const at::Tensor& first_child, const at::Tensor& next_sibling,
                 const at::Tensor& draft_probs, bool has_draft_probs, const at::Tensor& method,
                 const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                 const at::Tensor& typical_eps, const at::Tensor& typical_delta,
                 const at::Tensor& seed, const at::Tensor& offset,
                 const at::Tensor& accepted_nodes_out, const at::Tensor& tokens_out,
                 const at::Tensor& num_accepted_out, const at::Tensor& num_emitted_out,
                 const at::Tensor& valid_out);

}  // namespace decodekit::cpu
