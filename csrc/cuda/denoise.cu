// Launchers for the denoise kernels: dtype / mode dispatch and grid shapes. No torch headers here, so
// nvcc only compiles the kernels (the torch-facing wrappers live in bindings.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "decodekit/common.cuh"
#include "decodekit/denoise.cuh"
#include "denoise_launch.h"

namespace decodekit {
namespace denoise {
namespace {

template <typename T, int kMode>
void launch_propose_typed(const void* logits, int64_t batch, int64_t width, int64_t vocab, const float* temperature,
                          const float* keep_floor, const int64_t* suppress_ids, int64_t num_suppress,
                          const int64_t* seed, const int64_t* offset, const int64_t* window_start, bool tempered,
                          int64_t* proposal_out, float* confidence_out, cudaStream_t stream) {
  denoise_propose_kernel<T, kMode><<<static_cast<unsigned>(batch * width), kProposeThreads, 0, stream>>>(
      static_cast<const T*>(logits), static_cast<int>(width), static_cast<int>(vocab), temperature, keep_floor,
      suppress_ids, static_cast<int>(num_suppress), seed, offset, window_start, tempered, proposal_out,
      confidence_out);
}

template <typename T>
cudaError_t launch_propose_mode(int64_t conf_mode, const void* logits, int64_t batch, int64_t width, int64_t vocab,
                                const float* temperature, const float* keep_floor, const int64_t* suppress_ids,
                                int64_t num_suppress, const int64_t* seed, const int64_t* offset,
                                const int64_t* window_start, bool tempered, int64_t* proposal_out,
                                float* confidence_out, cudaStream_t stream) {
  switch (conf_mode) {
    case kProb:
      launch_propose_typed<T, kProb>(logits, batch, width, vocab, temperature, keep_floor, suppress_ids, num_suppress,
                                     seed, offset, window_start, tempered, proposal_out, confidence_out, stream);
      break;
    case kMargin:
      launch_propose_typed<T, kMargin>(logits, batch, width, vocab, temperature, keep_floor, suppress_ids,
                                       num_suppress, seed, offset, window_start, tempered, proposal_out,
                                       confidence_out, stream);
      break;
    case kNegEntropy:
      launch_propose_typed<T, kNegEntropy>(logits, batch, width, vocab, temperature, keep_floor, suppress_ids,
                                           num_suppress, seed, offset, window_start, tempered, proposal_out,
                                           confidence_out, stream);
      break;
    case kRandom:
      launch_propose_typed<T, kRandom>(logits, batch, width, vocab, temperature, keep_floor, suppress_ids,
                                       num_suppress, seed, offset, window_start, tempered, proposal_out,
                                       confidence_out, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_denoise_propose(const void* logits, DType dtype, int64_t batch, int64_t width, int64_t vocab,
                                   const float* temperature, const float* keep_floor, const int64_t* suppress_ids,
                                   int64_t num_suppress, const int64_t* seed, const int64_t* offset,
                                   const int64_t* window_start, int64_t conf_mode, bool tempered,
                                   int64_t* proposal_out, float* confidence_out, cudaStream_t stream) {
  if (batch <= 0 || width <= 0 || vocab <= 0) return cudaSuccess;
  // One CTA per position in the grid's x dimension; int indexing inside a row and of the ids.
  if (batch * width > std::numeric_limits<int32_t>::max() || vocab > kMaxVocab ||
      num_suppress > std::numeric_limits<int32_t>::max()) {
    return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case DType::kFloat32:
      return launch_propose_mode<float>(conf_mode, logits, batch, width, vocab, temperature, keep_floor, suppress_ids,
                                        num_suppress, seed, offset, window_start, tempered, proposal_out,
                                        confidence_out, stream);
    case DType::kFloat16:
      return launch_propose_mode<__half>(conf_mode, logits, batch, width, vocab, temperature, keep_floor,
                                         suppress_ids, num_suppress, seed, offset, window_start, tempered,
                                         proposal_out, confidence_out, stream);
    case DType::kBFloat16:
      return launch_propose_mode<__nv_bfloat16>(conf_mode, logits, batch, width, vocab, temperature, keep_floor,
                                                suppress_ids, num_suppress, seed, offset, window_start, tempered,
                                                proposal_out, confidence_out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_denoise_select(int64_t* tokens, int64_t batch, int64_t length, const int64_t* proposal,
                                  const float* confidence, int64_t width, const int64_t* window_start,
                                  const int64_t* block_start, const int64_t* block_end, int64_t mask_id,
                                  int64_t select_mode, const int32_t* k, int64_t num_spans, const float* tau,
                                  const float* factor, const float* p_transfer, const int32_t* span_ids,
                                  const int64_t* seed, const int64_t* offset, bool* committed_out,
                                  int32_t* num_committed_out, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (select_mode < kTopK || select_mode > kBernoulli || width > kMaxWidth || width > kMaxSelectWidth ||
      batch > std::numeric_limits<int32_t>::max() || num_spans > std::numeric_limits<int32_t>::max() ||
      num_spans <= 0) {
    return cudaErrorInvalidValue;
  }
  size_t shared_bytes = 0;
  if (select_mode != kBernoulli && width <= kSortCapacity) {
    int64_t n = 1;
    while (n < width) n <<= 1;
    shared_bytes = static_cast<size_t>(n) * (sizeof(uint64_t) + sizeof(int));
  }
  denoise_select_kernel<<<static_cast<unsigned>(batch), kSelectThreads, shared_bytes, stream>>>(
      tokens, length, proposal, confidence, static_cast<int>(width), window_start, block_start, block_end, mask_id,
      static_cast<int>(select_mode), k, static_cast<int>(num_spans), tau, factor, p_transfer, span_ids, seed, offset,
      committed_out, num_committed_out);
  return cudaGetLastError();
}

}  // namespace denoise
}  // namespace decodekit
