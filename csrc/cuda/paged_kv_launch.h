// Host launchers of the paged KV kernels (csrc/include/decodekit/paged_kv.cuh), torch-free so that
// bindings.cpp (host compiler) and paged_kv.cu (nvcc) share one declaration. Every launcher is
// asynchronous on `stream`, never synchronises, and returns the launch status (cudaGetLastError).
// Buffers are raw contiguous row-major device memory of the current device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "decodekit/common.cuh"

namespace decodekit {
namespace paged_kv {

using decodekit::DType;  // element type of the float buffers (decodekit/common.cuh)

// k, v [T, Hkv, D] rows of row_bytes; k_cache, v_cache [NB * BS] slots of row_bytes;
// slot_mapping int64 [T]. Slots outside [0, capacity) are skipped.
cudaError_t launch_kv_append(const void* k, const void* v, void* k_cache, void* v_cache,
                             const int64_t* slot_mapping, int64_t tokens, int64_t capacity, int64_t row_bytes,
                             cudaStream_t stream);

// k_cache, v_cache [layers, num_blocks] blocks of block_bytes; src, dst int32 [pairs].
cudaError_t launch_kv_copy_blocks(void* k_cache, void* v_cache, const int32_t* src, const int32_t* dst,
                                  int64_t pairs, int64_t layers, int64_t num_blocks, int64_t block_bytes,
                                  cudaStream_t stream);

// Head sizes paged_attention is compiled for (the ops layer rejects others up front).
bool attention_supports_head_dim(int64_t head_dim);

// Grid decisions that depend only on host-known sizes: computed first so that the binding can
// allocate the split workspace (workspace_floats fp32 elements; 0 when the keys are not split).
struct AttentionPlan {
  int rows_per_cta = 0;  // kernel instantiation: 4 or 8 (queries x heads) rows per CTA
  int heads_per_cta = 0;
  int head_chunks = 0;
  int queries_per_tile = 0;
  int64_t tiles = 0;  // grid.x: an upper bound on the number of (request, query tile) pairs
  int splits = 1;  // grid.z: key splits of the longest context MB * BS (1: no request splits)
  int64_t keys_per_split = 0;  // a constant (whole blocks): never derived from the batch
  int64_t slots = 0;  // partial-result rows per split: T, or B * kSplitMaxQueries when compact
  bool compact_slots = false;
  int64_t workspace_floats = 0;
};

// batch B, rows T, heads, head_dim D, block_size BS, max_blocks MB (block-table columns). Returns
// false when the sizes do not fit a launch (grid limits). The device does not enter the plan: the
// split policy is the same on every GPU (batch invariance).
bool plan_paged_attention(int64_t batch, int64_t rows, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                          int64_t block_size, int64_t max_blocks, AttentionPlan* plan);

struct AttentionArgs {
  const void* q;  // [T, Hq, D]
  const void* k_cache;  // [NB, BS, Hkv, D]
  const void* v_cache;
  void* out;  // [T, Hq, D]
  DType dtype;
  const int32_t* block_table;  // [B, MB]
  const int32_t* seq_lens;  // [B]
  const int32_t* cu_seqlens_q;  // [B + 1]
  const uint8_t* custom_mask;  // custom_mask_numel 0/1 bytes, or null
  int64_t custom_mask_numel;
  const int64_t* mask_indptr;  // [B + 1] or null (custom mode only)
  int mask_mode;  // 0 causal, 1 full, 2 custom
  float scale;
  int64_t batch, rows, q_heads, kv_heads, head_dim, num_blocks, block_size, max_blocks;
};

// Launches the attention kernel (and the split merge when plan.splits > 1); workspace holds
// plan.workspace_floats floats.
cudaError_t launch_paged_attention(const AttentionArgs& args, const AttentionPlan& plan, float* workspace,
                                   cudaStream_t stream);

}  // namespace paged_kv
}  // namespace decodekit
