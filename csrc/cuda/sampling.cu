// Launchers for the sampling kernels: dtype dispatch and grid shapes. No torch headers here, so nvcc
// only compiles the kernels (the torch-facing wrappers live in bindings.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "decodekit/common.cuh"
#include "decodekit/sampling.cuh"
#include "sampling_launch.h"

namespace decodekit {
namespace sampling {
namespace {

// Rows live in the grid's x dimension and are indexed with int; columns are bounded by kMaxColumns.
bool fits_launch(int64_t batch, int64_t columns) {
  return batch <= std::numeric_limits<int>::max() && columns <= kMaxColumns;
}

// (B, chunks) for the elementwise kernels: enough CTAs per row to fill the GPU at small B, capped by
// the grid's y limit (each CTA strides over the rest of its row).
dim3 elementwise_grid(int64_t batch, int64_t columns) {
  const int64_t chunks = (columns + kElementwiseThreads - 1) / kElementwiseThreads;
  return dim3(static_cast<unsigned>(batch), static_cast<unsigned>(std::clamp<int64_t>(chunks, 1, 65535)));
}

}  // namespace

cudaError_t launch_sample(const void* logits, DType dtype, int64_t batch, int64_t vocab, const float* temperature,
                          const int32_t* top_k, const float* top_p, const float* min_p, const int64_t* seed,
                          const int64_t* offset, int64_t* tokens_out, float* logprobs_out, bool* valid_out,
                          cudaStream_t stream) {
  if (batch <= 0 || vocab <= 0) return cudaSuccess;
  if (!fits_launch(batch, vocab)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    sample_kernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), static_cast<int>(vocab), temperature, top_k, top_p, min_p, seed, offset,
        tokens_out, logprobs_out, valid_out);
  });
}

cudaError_t launch_apply_penalties(const void* logits, DType dtype, int64_t batch, int64_t vocab,
                                   const int32_t* token_counts, const float* repetition, const float* frequency,
                                   const float* presence, void* out, cudaStream_t stream) {
  if (batch <= 0 || vocab <= 0) return cudaSuccess;
  if (!fits_launch(batch, vocab)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    apply_penalties_kernel<T><<<elementwise_grid(batch, vocab), kElementwiseThreads, 0, stream>>>(
        static_cast<const T*>(logits), token_counts, static_cast<int>(vocab), repetition, frequency, presence,
        static_cast<T*>(out));
  });
}

cudaError_t launch_mask_logits(const void* logits, DType dtype, int64_t batch, int64_t vocab, const int32_t* top_k,
                               const float* top_p, void* out, cudaStream_t stream) {
  if (batch <= 0 || vocab <= 0) return cudaSuccess;
  if (!fits_launch(batch, vocab)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    mask_logits_kernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), static_cast<int>(vocab), top_k, top_p, static_cast<T*>(out));
  });
}

cudaError_t launch_top_k_top_p_renorm(const void* probs, DType dtype, int64_t batch, int64_t vocab,
                                      const int32_t* top_k, const float* top_p, void* out, cudaStream_t stream) {
  if (batch <= 0 || vocab <= 0) return cudaSuccess;
  if (!fits_launch(batch, vocab)) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    top_k_top_p_renorm_kernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        static_cast<const T*>(probs), static_cast<int>(vocab), top_k, top_p, static_cast<T*>(out));
  });
}

cudaError_t launch_philox_uniform(const int64_t* seed, const int64_t* offset, uint32_t rng_stream, int64_t batch,
                                  int64_t n, float* out, cudaStream_t stream) {
  if (batch <= 0 || n <= 0) return cudaSuccess;
  if (!fits_launch(batch, n)) return cudaErrorInvalidValue;
  philox_uniform_kernel<float><<<elementwise_grid(batch, n), kElementwiseThreads, 0, stream>>>(
      seed, offset, rng_stream, static_cast<int>(n), out);
  return cudaGetLastError();
}

}  // namespace sampling
}  // namespace decodekit
