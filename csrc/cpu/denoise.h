// CPU kernels of the `denoise` op family (decodekit._C); semantics: reference/denoise.py.
//
// The Python ops layer (decodekit/ops/denoise.py) has validated every argument and allocated the
// outputs, so these functions assume contiguous CPU tensors of the documented dtypes, B, W, V >= 1,
// temperature >= 0, suppress ids in [0, V), conf_mode in 0..3, select_mode in 0..3. They return
// nothing and write their outputs.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace decodekit::cpu {

// logits [B, W, V] f32/f16/bf16; temperature f32 [B]; keep_floor f32 [B, W] or empty (no filter);
// suppress_ids int64 [S] (may be empty); seed, offset, window_start int64 [B]; conf_mode 0 prob,
// 1 margin, 2 neg_entropy, 3 random; tempered 0/1  ->  proposal_out int64 [B, W] (-1 where the
// logits row is invalid), confidence_out f32 [B, W] (NaN where invalid).
void denoise_propose(const at::Tensor& logits, const at::Tensor& temperature,
                     const at::Tensor& keep_floor, const at::Tensor& suppress_ids,
                     const at::Tensor& seed, const at::Tensor& offset,
                     const at::Tensor& window_start, int64_t conf_mode, int64_t tempered,
                     const at::Tensor& proposal_out, const at::Tensor& confidence_out);

// tokens int64 [B, L] (read and updated in place); proposal int64 [B, W]; confidence f32 [B, W];
// window_start, block_start, block_end int64 [B]; select_mode 0 topk, 1 threshold, 2 factor,
// 3 bernoulli; k int32 [B, S] (S = 1 without spans); tau, factor, p_transfer f32 [B]; span_ids
// int32 [B, L] or empty; seed, offset int64 [B]  ->  committed_out bool [B, L] (every entry
// written), num_committed_out int32 [B].
void denoise_select(const at::Tensor& tokens, const at::Tensor& proposal,
                    const at::Tensor& confidence, const at::Tensor& window_start,
                    const at::Tensor& block_start, const at::Tensor& block_end, int64_t mask_id,
                    int64_t select_mode, const at::Tensor& k, const at::Tensor& tau,
                    const at::Tensor& factor, const at::Tensor& p_transfer,
                    const at::Tensor& span_ids, const at::Tensor& seed, const at::Tensor& offset,
                    const at::Tensor& committed_out, const at::Tensor& num_committed_out);

}  // namespace decodekit::cpu
