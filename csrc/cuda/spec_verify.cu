// Launchers for the speculative verification kernels: dtype dispatch, grid shapes and the step
// workspace layout. No torch headers here (the torch-facing wrappers live in bindings.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "decodekit/common.cuh"
#include "decodekit/spec_verify.cuh"
#include "spec_verify_launch.h"

namespace decodekit {
namespace spec_verify {
namespace {

// Rows, nodes and output columns are indexed with int inside the kernel, vocab ids too.
bool fits_launch(int64_t batch, int64_t nodes, int64_t vocab, int64_t width) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  return batch <= kIntMax && nodes <= kIntMax && width <= kIntMax && vocab <= sampling::kMaxColumns;
}

ParamArrays arrays(const ParamPointers& p) {
  return {p.method, p.temperature, p.top_k, p.top_p, p.typical_eps, p.typical_delta, p.seed, p.offset};
}

// A node has fewer children than the row has nodes, and each rejection adds at most one step.
int64_t tree_step_capacity(int64_t nodes) { return nodes > 1 ? nodes - 1 : 1; }

}  // namespace

int64_t verify_tree_workspace_bytes(int64_t batch, int64_t nodes) {
  const int64_t capacity = tree_step_capacity(nodes);
  return capacity <= kSharedSteps ? 0 : batch * capacity * static_cast<int64_t>(sizeof(Step));
}

cudaError_t launch_verify_chain(const void* target_logits, DType dtype, int64_t batch, int64_t n, int64_t vocab,
                                const int64_t* draft_tokens, const float* draft_probs, ParamPointers params,
                                int64_t* tokens_out, int32_t* num_accepted_out, int32_t* num_emitted_out,
                                bool* valid_out, cudaStream_t stream) {
  if (batch <= 0 || vocab <= 0 || n < 0) return cudaSuccess;
  if (!fits_launch(batch, n + 1, vocab, n + 1)) return cudaErrorInvalidValue;
  const Outputs out{nullptr, tokens_out, static_cast<int>(n + 1), num_accepted_out, num_emitted_out, valid_out};
  // A chain node has one child, so one rejection step at most: shared memory suffices.
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    verify_kernel<T, ChainLinks><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        static_cast<const T*>(target_logits), static_cast<int>(n + 1), static_cast<int>(vocab),
        ChainLinks{draft_tokens, static_cast<int>(n)}, draft_probs, static_cast<int>(n), arrays(params), nullptr, 1,
        out);
  });
}

cudaError_t launch_verify_tree(const void* target_logits, DType dtype, int64_t batch, int64_t nodes, int64_t vocab,
                               const int64_t* tokens, const int32_t* first_child, const int32_t* next_sibling,
                               const float* draft_probs, ParamPointers params, int32_t* accepted_nodes_out,
                               int64_t* tokens_out, int64_t width, int32_t* num_accepted_out,
                               int32_t* num_emitted_out, bool* valid_out, void* workspace, cudaStream_t stream) {
  if (batch <= 0 || vocab <= 0 || nodes <= 0 || width <= 0) return cudaSuccess;
  if (!fits_launch(batch, nodes, vocab, width)) return cudaErrorInvalidValue;
  const int64_t capacity = tree_step_capacity(nodes);
  if (capacity > kSharedSteps && workspace == nullptr) return cudaErrorInvalidValue;
  const Outputs out{accepted_nodes_out, tokens_out, static_cast<int>(width), num_accepted_out, num_emitted_out,
                    valid_out};
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    verify_kernel<T, TreeLinks><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        static_cast<const T*>(target_logits), static_cast<int>(nodes), static_cast<int>(vocab),
        TreeLinks{tokens, first_child, next_sibling, static_cast<int>(nodes)}, draft_probs, static_cast<int>(nodes),
        arrays(params), static_cast<Step*>(workspace), static_cast<int>(capacity), out);
  });
}

}  // namespace spec_verify
}  // namespace decodekit
