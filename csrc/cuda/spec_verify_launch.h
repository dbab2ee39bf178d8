// Host launchers of the speculative verification kernels (csrc/include/decodekit/spec_verify.cuh),
// torch-free so that bindings.cpp (host compiler) and spec_verify.cu (nvcc) share one declaration.
// Every launcher is asynchronous on `stream`, never synchronises, and returns the launch status.
// Tensors are raw contiguous row-major buffers on the current device; per-row parameters have B entries.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sampling_launch.h"

namespace decodekit {
namespace spec_verify {

using sampling::DType;

// method i32[B] (0 lossless, 1 greedy, 2 typical); temperature, top_p, typical_eps, typical_delta
// f32[B]; top_k i32[B]; seed, offset i64[B].
struct ParamPointers {
  const int32_t* method;
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* typical_eps;
  const float* typical_delta;
  const int64_t* seed;
  const int64_t* offset;
};

// Bytes of device scratch verify_tree needs for B rows of N nodes (0: none, pass nullptr). It holds
// the residual's rejection steps of nodes with more children than fit in shared memory.
int64_t verify_tree_workspace_bytes(int64_t batch, int64_t nodes);

// target_logits [B, n+1, V]; draft_tokens i64[B, n]; draft_probs f32[B, n, V] or nullptr;
// tokens_out i64[B, n+1]; num_accepted_out, num_emitted_out i32[B]; valid_out bool[B].
cudaError_t launch_verify_chain(const void* target_logits, DType dtype, int64_t batch, int64_t n, int64_t vocab,
                                const int64_t* draft_tokens, const float* draft_probs, ParamPointers params,
                                int64_t* tokens_out, int32_t* num_accepted_out, int32_t* num_emitted_out,
                                bool* valid_out, cudaStream_t stream);

// target_logits [B, N, V]; tokens i64[B, N]; first_child, next_sibling i32[B, N]; draft_probs
// f32[B, N, V] or nullptr; accepted_nodes_out i32[B, W]; tokens_out i64[B, W];
// num_accepted_out, num_emitted_out i32[B]; valid_out bool[B]; workspace of
// verify_tree_workspace_bytes(B, N) bytes (may be nullptr when that is 0).
cudaError_t launch_verify_tree(const void* target_logits, DType dtype, int64_t batch, int64_t nodes, int64_t vocab,
                               const int64_t* tokens, const int32_t* first_child, const int32_t* next_sibling,
                               const float* draft_probs, ParamPointers params, int32_t* accepted_nodes_out,
                               int64_t* tokens_out, int64_t width, int32_t* num_accepted_out,
                               int32_t* num_emitted_out, bool* valid_out, void* workspace, cudaStream_t stream);

}  // namespace spec_verify
}  // namespace decodekit
