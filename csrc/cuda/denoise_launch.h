// Host launchers of the denoise kernels (csrc/include/decodekit/denoise.cuh), torch-free so that
// bindings.cpp (host compiler) and denoise.cu (nvcc) share one declaration. Every launcher is
// asynchronous on `stream`, never synchronises, and returns the launch status (cudaGetLastError).
// Tensors are raw contiguous row-major buffers on the current device; per-row parameters have B entries.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "decodekit/common.cuh"

namespace decodekit {
namespace denoise {

using decodekit::DType;  // element type of the float buffers (decodekit/common.cuh)

// Largest V the propose kernel indexes with int (room left for the vector loop's overshoot).
constexpr int64_t kMaxVocab = int64_t{1} << 30;
// Largest W the select kernel accepts: 1024 threads, at most 64 window positions each.
constexpr int64_t kMaxWidth = int64_t{1} << 16;

// logits [B, W, V]; temperature f32[B]; keep_floor f32[B, W] or null; suppress_ids i64[num_suppress];
// seed, offset, window_start i64[B]; conf_mode 0 prob, 1 margin, 2 neg_entropy, 3 random; tempered;
// proposal_out i64[B, W]; confidence_out f32[B, W].
cudaError_t launch_denoise_propose(const void* logits, DType dtype, int64_t batch, int64_t width, int64_t vocab,
                                   const float* temperature, const float* keep_floor, const int64_t* suppress_ids,
                                   int64_t num_suppress, const int64_t* seed, const int64_t* offset,
                                   const int64_t* window_start, int64_t conf_mode, bool tempered,
                                   int64_t* proposal_out, float* confidence_out, cudaStream_t stream);

// tokens i64[B, L] (in place); proposal i64[B, W]; confidence f32[B, W]; window_start, block_start,
// block_end i64[B]; select_mode 0 topk, 1 threshold, 2 factor, 3 bernoulli; k i32[B, num_spans];
// tau, factor, p_transfer f32[B]; span_ids i32[B, L] or null; seed, offset i64[B];
// committed_out bool[B, L]; num_committed_out i32[B].
cudaError_t launch_denoise_select(int64_t* tokens, int64_t batch, int64_t length, const int64_t* proposal,
                                  const float* confidence, int64_t width, const int64_t* window_start,
                                  const int64_t* block_start, const int64_t* block_end, int64_t mask_id,
                                  int64_t select_mode, const int32_t* k, int64_t num_spans, const float* tau,
                                  const float* factor, const float* p_transfer, const int32_t* span_ids,
                                  const int64_t* seed, const int64_t* offset, bool* committed_out,
                                  int32_t* num_committed_out, cudaStream_t stream);

}  // namespace denoise
}  // namespace decodekit
