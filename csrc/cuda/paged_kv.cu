// Launchers for the paged KV kernels: copy-width choice, grid planning and dtype / head_dim
// dispatch. No torch headers here (the torch-facing wrappers live in bindings.cpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "decodekit/common.cuh"
#include "decodekit/paged_kv.cuh"
#include "paged_kv_launch.h"

namespace decodekit {
namespace paged_kv {
namespace {

constexpr int kAppendThreads = 128;
constexpr int kCopyThreads = 256;
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridYZ = 65535;
// Keys per split (rounded up to whole blocks) of a request with at most kSplitMaxQueries queries.
// A constant, not a share of the batch or of the SMs: a split count that followed them would
// change the last bits of a request's output with its neighbours (batch invariance). 512 keys of
// D = 128 fp16 are 256 KiB of K/V per CTA, so a split's partial (heads x (D + 2) floats) and its
// merge stay below 1% of the traffic, and decode still fills an H100 (132 SMs): B = 1 at context
// 32768 with 8 kv heads makes 512 CTAs (~4 per SM, ~64 KiB of loads in flight per SM), B = 32 at
// context 4096 makes 2048.
constexpr int64_t kSplitKeys = 512;

bool aligned(const void* pointer, int64_t bytes) { return reinterpret_cast<uintptr_t>(pointer) % bytes == 0; }

// The widest word (16, 8, 4, 2 or 1 bytes) that divides the row size and every base address.
template <typename Launch>
cudaError_t dispatch_word(int64_t row_bytes, const void* a, const void* b, const void* c, const void* d,
                         Launch&& launch) {
  auto fits = [&](int64_t w) {
    return row_bytes % w == 0 && aligned(a, w) && aligned(b, w) && aligned(c, w) && aligned(d, w);
  };
  if (fits(16)) {
    launch(uint4{}, 16);
  } else if (fits(8)) {
    launch(uint2{}, 8);
  } else if (fits(4)) {
    launch(uint32_t{}, 4);
  } else if (fits(2)) {
    launch(uint16_t{}, 2);
  } else {
    launch(uint8_t{}, 1);
  }
  return cudaGetLastError();
}

// The attention kernel for (T, D) and the CTA's row count, then the split merge if any.
template <typename T, int D>
void launch_attention_dim(const AttentionParams& params, int rows_per_cta, dim3 grid, cudaStream_t stream) {
  if (rows_per_cta == 4) {
    paged_attention_kernel<T, D, 4><<<grid, kThreads, 0, stream>>>(params);
  } else {
    paged_attention_kernel<T, D, 8><<<grid, kThreads, 0, stream>>>(params);
  }
  if (params.splits > 1) {
    paged_attention_merge_kernel<T, D><<<dim3(grid.x, grid.y), kThreads, 0, stream>>>(params);
  }
}

template <typename T>
void launch_attention(const AttentionParams& params, int64_t head_dim, int rows_per_cta, dim3 grid,
                      cudaStream_t stream) {
  switch (head_dim) {
    case 64:
      launch_attention_dim<T, 64>(params, rows_per_cta, grid, stream);
      break;
    case 128:
      launch_attention_dim<T, 128>(params, rows_per_cta, grid, stream);
      break;
    case 256:
      launch_attention_dim<T, 256>(params, rows_per_cta, grid, stream);
      break;
    default:
      break;  // excluded by attention_supports_head_dim
  }
}

}  // namespace

cudaError_t launch_kv_append(const void* k, const void* v, void* k_cache, void* v_cache,
                             const int64_t* slot_mapping, int64_t tokens, int64_t capacity, int64_t row_bytes,
                             cudaStream_t stream) {
  if (tokens <= 0 || row_bytes <= 0) return cudaSuccess;
  if (tokens > kMaxGridX) return cudaErrorInvalidValue;
  return dispatch_word(row_bytes, k, v, k_cache, v_cache, [&](auto word, int64_t width) {
    using Word = decltype(word);
    kv_append_kernel<Word><<<static_cast<unsigned>(tokens), kAppendThreads, 0, stream>>>(
        static_cast<const Word*>(k), static_cast<const Word*>(v), static_cast<Word*>(k_cache),
        static_cast<Word*>(v_cache), slot_mapping, capacity, row_bytes / width);
  });
}

cudaError_t launch_kv_copy_blocks(void* k_cache, void* v_cache, const int32_t* src, const int32_t* dst,
                                  int64_t pairs, int64_t layers, int64_t num_blocks, int64_t block_bytes,
                                  cudaStream_t stream) {
  if (pairs <= 0 || layers <= 0 || block_bytes <= 0) return cudaSuccess;
  if (pairs > kMaxGridX || layers > kMaxGridYZ) return cudaErrorInvalidValue;
  return dispatch_word(block_bytes, k_cache, v_cache, k_cache, v_cache, [&](auto word, int64_t width) {
    using Word = decltype(word);
    const dim3 grid(static_cast<unsigned>(pairs), static_cast<unsigned>(layers));
    kv_copy_blocks_kernel<Word><<<grid, kCopyThreads, 0, stream>>>(
        static_cast<Word*>(k_cache), static_cast<Word*>(v_cache), src, dst, num_blocks, block_bytes / width);
  });
}

bool attention_supports_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

bool plan_paged_attention(int64_t batch, int64_t rows, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                          int64_t block_size, int64_t max_blocks, AttentionPlan* plan) {
  *plan = AttentionPlan{};
  if (kv_heads <= 0 || q_heads % kv_heads != 0 || block_size <= 0 || !attention_supports_head_dim(head_dim)) {
    return false;
  }
  const int64_t group = q_heads / kv_heads;
  plan->rows_per_cta = group <= 4 ? 4 : 8;
  plan->heads_per_cta = static_cast<int>(std::min<int64_t>(group, plan->rows_per_cta));
  plan->head_chunks = static_cast<int>((group + plan->heads_per_cta - 1) / plan->heads_per_cta);
  plan->queries_per_tile = plan->rows_per_cta / plan->heads_per_cta;
  // Tiles: sum_b ceil(q_len_b / Tq) <= min(T, T / Tq + B) for q_lens summing to at most T.
  const int64_t q = plan->queries_per_tile;
  plan->tiles = batch <= 0 || rows <= 0 ? 0 : std::min(rows, (rows + q - 1) / q + batch);
  const int64_t grid_y = kv_heads * plan->head_chunks;
  if (plan->tiles > kMaxGridX || grid_y > kMaxGridYZ) return false;
  // grid.z covers the splits of the longest context the block table holds; CTAs past a request's
  // keys return at once. Only the split requests' rows get partial-result slots.
  const int64_t keys = (kSplitKeys + block_size - 1) / block_size * block_size;  // whole blocks
  const int64_t max_keys = max_blocks * block_size;
  const int64_t splits = plan->tiles > 0 && max_keys > 0 ? (max_keys + keys - 1) / keys : 1;
  if (splits > kMaxGridYZ) return false;
  plan->keys_per_split = keys;
  plan->compact_slots = batch * kSplitMaxQueries < rows;
  plan->slots = plan->compact_slots ? batch * kSplitMaxQueries : rows;
  plan->splits = static_cast<int>(splits);
  plan->workspace_floats = splits > 1 ? splits * plan->slots * q_heads * (head_dim + 2) : 0;
  return true;
}

cudaError_t launch_paged_attention(const AttentionArgs& args, const AttentionPlan& plan, float* workspace,
                                   cudaStream_t stream) {
  if (plan.tiles <= 0 || args.kv_heads <= 0) return cudaSuccess;
  if (!attention_supports_head_dim(args.head_dim)) return cudaErrorInvalidValue;
  if (plan.splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  // 16-byte vector loads and stores of q / cache / out rows.
  if (!aligned(args.q, 16) || !aligned(args.k_cache, 16) || !aligned(args.v_cache, 16) || !aligned(args.out, 16)) {
    return cudaErrorMisalignedAddress;
  }
  AttentionParams p{};
  p.q = args.q;
  p.k_cache = args.k_cache;
  p.v_cache = args.v_cache;
  p.out = args.out;
  p.block_table = args.block_table;
  p.seq_lens = args.seq_lens;
  p.cu_seqlens_q = args.cu_seqlens_q;
  p.custom_mask = args.mask_mode == kCustom ? args.custom_mask : nullptr;
  p.mask_numel = args.mask_mode == kCustom && args.custom_mask != nullptr ? args.custom_mask_numel : 0;
  p.mask_indptr = args.mask_mode == kCustom ? args.mask_indptr : nullptr;
  p.rows = args.rows;
  p.batch = args.batch;
  p.num_blocks = args.num_blocks;
  p.block_size = args.block_size;
  p.kv_heads = args.kv_heads;
  p.q_heads = args.q_heads;
  p.group = args.q_heads / args.kv_heads;
  p.max_blocks = args.max_blocks;
  p.mask_mode = args.mask_mode;
  p.scale = args.scale;
  p.heads_per_cta = plan.heads_per_cta;
  p.head_chunks = plan.head_chunks;
  p.queries_per_tile = plan.queries_per_tile;
  p.splits = plan.splits;
  p.keys_per_split = plan.keys_per_split;
  p.slots = plan.slots;
  p.compact_slots = plan.compact_slots;
  if (plan.splits > 1) {
    p.partial_acc = workspace;
    p.partial_stats = workspace + static_cast<int64_t>(plan.splits) * plan.slots * args.q_heads * args.head_dim;
  }
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(args.kv_heads * plan.head_chunks),
                  static_cast<unsigned>(plan.splits));
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_attention<T>(p, args.head_dim, plan.rows_per_cta, grid, stream);
  });
}

}  // namespace paged_kv
}  // namespace decodekit
