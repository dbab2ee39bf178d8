// Host launchers of the sampling kernels (csrc/include/decodekit/sampling.cuh), torch-free so that
// bindings.cpp (host compiler) and sampling.cu (nvcc) share one declaration. Every launcher is
// asynchronous on `stream`, never synchronises, and returns the launch status (cudaGetLastError).
// Tensors are raw contiguous row-major buffers on the current device; per-row parameters have B entries.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "decodekit/common.cuh"

namespace decodekit {
namespace sampling {

using decodekit::DType;  // element type of the float buffers (decodekit/common.cuh)

// Largest V (or n) the kernels accept: they index inside a row with int, and this bound leaves room
// for grid-stride increments past the end without overflow. Launchers return cudaErrorInvalidValue beyond it.
constexpr int64_t kMaxColumns = int64_t{1} << 30;

// logits [B, V]; temperature f32[B]; top_k i32[B]; top_p f32[B]; min_p f32[B]; seed, offset i64[B];
// tokens_out i64[B]; logprobs_out f32[B]; valid_out bool[B].
cudaError_t launch_sample(const void* logits, DType dtype, int64_t batch, int64_t vocab, const float* temperature,
                          const int32_t* top_k, const float* top_p, const float* min_p, const int64_t* seed,
                          const int64_t* offset, int64_t* tokens_out, float* logprobs_out, bool* valid_out,
                          cudaStream_t stream);

// logits, out [B, V] (out may equal logits); token_counts i32[B, V]; repetition, frequency, presence f32[B].
cudaError_t launch_apply_penalties(const void* logits, DType dtype, int64_t batch, int64_t vocab,
                                   const int32_t* token_counts, const float* repetition, const float* frequency,
                                   const float* presence, void* out, cudaStream_t stream);

// logits, out [B, V]; top_k i32[B]; top_p f32[B].
cudaError_t launch_mask_logits(const void* logits, DType dtype, int64_t batch, int64_t vocab, const int32_t* top_k,
                               const float* top_p, void* out, cudaStream_t stream);

// probs, out [B, V]; top_k i32[B]; top_p f32[B].
cudaError_t launch_top_k_top_p_renorm(const void* probs, DType dtype, int64_t batch, int64_t vocab,
                                      const int32_t* top_k, const float* top_p, void* out, cudaStream_t stream);

// seed, offset i64[B]; out f32[B, n] = uniform(seed[b], offset[b], rng_stream, counter i).
cudaError_t launch_philox_uniform(const int64_t* seed, const int64_t* offset, uint32_t rng_stream, int64_t batch,
                                  int64_t n, float* out, cudaStream_t stream);

}  // namespace sampling
}  // namespace decodekit
