// Paged KV cache kernels, torch-free: kv_append, kv_copy_blocks and paged_attention (+ the merge of
// its key splits). The spec is decodekit/reference/paged_kv.py; the CPU twin is csrc/cpu/paged_kv.cpp
// and follows the same algorithm.
//
// paged_attention (flash-decoding):
//   * A CTA owns one tile (up to kQueriesPerTile queries of one request), a slice of the query heads
//     of ONE kv head (its GQA group, so every key/value row fetched serves all of them), and one
//     split of the tile's keys. Tiles are found on the device by a warp scan over cu_seqlens_q, so
//     the grid depends only on host-known sizes (no host sync, CUDA-graph capturable).
//   * A key row is read by a lane group of kLanesPerKey lanes, 16 bytes per lane per load; each
//     lane group is an independent online-softmax worker over every (kWorkers)-th key, with kUnroll
//     keys' K and V loads in flight before any math. Scores are reduced inside the lane group by
//     xor shuffles. Accumulators are fp32.
//   * At the end the CTA's workers are merged in shared memory (log-sum-exp), worker after worker
//     in a fixed order; a request that is not split writes out, else each split's (max, sum,
//     unnormalised acc) go to a workspace that paged_attention_merge_kernel combines in split order.
//   * Batch invariance (DESIGN.md): the CTA tiling depends on the group size only, and a request
//     with at most kSplitMaxQueries queries has its keys split at multiples of keys_per_split, a
//     constant of the launcher (never derived from the batch or the SM count). So a row's
//     arithmetic depends only on its own request; a request whose keys fit one split gets the same
//     bits through the split path (one partial, weight exactly 1) as without it.
// Every index read from memory is range-checked (block ids, rows, mask elements): bad metadata
// makes keys invisible or rows skipped, never an out-of-bounds access.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace decodekit {
namespace paged_kv {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// Keys per lane group whose loads are issued before the math: enough bytes in flight per SM to
// cover DRAM latency with the few CTAs per SM that the register budget allows.
constexpr int kUnroll = 2;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kNegInf = -__builtin_huge_valf();
// Requests with at most this many queries (decode, speculative verification) split their keys;
// longer ones fill the GPU with their own query tiles. Their partials live in slots
// request * kSplitMaxQueries + query when that is fewer than the rows (compact_slots).
constexpr int64_t kSplitMaxQueries = 16;

enum MaskMode : int { kCausal = 0, kFull = 1, kCustom = 2 };

// Everything a launch needs; plain values so that it travels as one kernel parameter.
struct AttentionParams {
  const void* q;  // [T, Hq, D]
  const void* k_cache;  // [NB, BS, Hkv, D]
  const void* v_cache;
  void* out;  // [T, Hq, D]
  const int32_t* block_table;  // [B, MB]
  const int32_t* seq_lens;  // [B]
  const int32_t* cu_seqlens_q;  // [B + 1]
  const uint8_t* custom_mask;  // flat 0/1, mask_numel elements (custom mode only)
  const int64_t* mask_indptr;  // [B + 1] (custom mode only; null otherwise)
  float* partial_acc;  // [splits, slots, Hq, D] unnormalised split outputs (splits > 1)
  float* partial_stats;  // [splits, slots, Hq, 2]: (max, sum) of each split
  int64_t mask_numel;
  int64_t rows;  // T
  int64_t batch;  // B
  int64_t num_blocks, block_size, kv_heads, q_heads, group, max_blocks;
  int mask_mode;
  float scale;
  int heads_per_cta;  // query heads of one kv head handled by a CTA (<= its ROWS)
  int head_chunks;  // ceil(group / heads_per_cta): grid.y = Hkv * head_chunks
  int queries_per_tile;
  int splits;  // grid.z: splits of the longest context the block table holds
  int64_t keys_per_split;  // multiple of block_size (only used when splits > 1)
  int64_t slots;  // partial-result rows: T, or B * kSplitMaxQueries when compact_slots
  bool compact_slots;
};

// ------------------------------------------------------------------------------------------------
// 16-byte vectors <-> fp32

template <typename T>
struct Vec16;

template <>
struct Vec16<float> {
  static constexpr int kElems = 4;
  static __device__ __forceinline__ void to_float(const uint4& w, float* f) {
    f[0] = __uint_as_float(w.x);
    f[1] = __uint_as_float(w.y);
    f[2] = __uint_as_float(w.z);
    f[3] = __uint_as_float(w.w);
  }
  static __device__ __forceinline__ uint4 from_float(const float* f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
  static __device__ __forceinline__ float scalar(float x) { return x; }
};

template <>
struct Vec16<__half> {
  static constexpr int kElems = 8;
  static __device__ __forceinline__ void to_float(const uint4& w, float* f) {
    const __half2* h = reinterpret_cast<const __half2*>(&w);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __half22float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
  static __device__ __forceinline__ uint4 from_float(const float* f) {
    uint4 w;
    __half2* h = reinterpret_cast<__half2*>(&w);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    return w;
  }
  static __device__ __forceinline__ __half scalar(float x) { return __float2half_rn(x); }
};

template <>
struct Vec16<__nv_bfloat16> {
  static constexpr int kElems = 8;
  static __device__ __forceinline__ void to_float(const uint4& w, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __bfloat1622float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
  static __device__ __forceinline__ uint4 from_float(const float* f) {
    uint4 w;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&w);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return w;
  }
  static __device__ __forceinline__ __nv_bfloat16 scalar(float x) { return __float2bfloat16_rn(x); }
};

// ------------------------------------------------------------------------------------------------
// Cache writes: one CTA per token (append) or per (pair, layer) (copy), `Word`-sized copies, where
// Word is the widest of 16/8/4/2/1 bytes that divides the row and every base address.

template <typename Word>
__global__ void kv_append_kernel(const Word* __restrict__ k, const Word* __restrict__ v, Word* __restrict__ k_cache,
                                 Word* __restrict__ v_cache, const int64_t* __restrict__ slot_mapping,
                                 int64_t capacity, int64_t row_words) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0 || slot >= capacity) return;  // padding, or a guard against bad slots
  const Word* k_row = k + token * row_words;
  const Word* v_row = v + token * row_words;
  Word* k_dst = k_cache + slot * row_words;
  Word* v_dst = v_cache + slot * row_words;
  for (int64_t i = threadIdx.x; i < row_words; i += blockDim.x) {
    k_dst[i] = k_row[i];
    v_dst[i] = v_row[i];
  }
}

template <typename Word>
__global__ void kv_copy_blocks_kernel(Word* __restrict__ k_cache, Word* __restrict__ v_cache,
                                      const int32_t* __restrict__ src, const int32_t* __restrict__ dst,
                                      int64_t num_blocks, int64_t block_words) {
  const int64_t pair = blockIdx.x, layer = blockIdx.y;
  const int64_t from = src[pair], to = dst[pair];
  if (from < 0 || from >= num_blocks || to < 0 || to >= num_blocks || from == to) return;
  const int64_t layer_base = layer * num_blocks;
  const Word* k_src = k_cache + (layer_base + from) * block_words;
  const Word* v_src = v_cache + (layer_base + from) * block_words;
  Word* k_dst = k_cache + (layer_base + to) * block_words;
  Word* v_dst = v_cache + (layer_base + to) * block_words;
  for (int64_t i = threadIdx.x; i < block_words; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

// ------------------------------------------------------------------------------------------------
// Tiles: which queries of which request a CTA owns, with every index made safe.

struct Tile {
  int64_t request;
  int64_t row0;  // global q row of query 0 of the request
  int64_t q_len;
  int64_t q_begin, q_end;  // the tile's queries; their rows lie in [0, T)
  int64_t prefix;  // kv_len - q_len
  int64_t num_keys;  // keys [0, num_keys) hold every key visible to the tile
  int64_t mask_start;  // custom mask: element index of the request's [q_len, q_len] mask
  bool valid;
};

// Queries of request b whose rows lie in [0, T) (rows outside are skipped): [first, last).
__device__ __forceinline__ void query_range(const AttentionParams& p, int64_t b, int64_t& row0, int64_t& q_len,
                                            int64_t& first, int64_t& last) {
  row0 = p.cu_seqlens_q[b];
  q_len = static_cast<int64_t>(p.cu_seqlens_q[b + 1]) - row0;
  first = row0 < 0 ? -row0 : 0;
  last = q_len < p.rows - row0 ? q_len : p.rows - row0;
}

// Warp 0 finds tile number `index` (tiles numbered request by request) and writes it to `tile`.
__device__ void find_tile(const AttentionParams& p, int64_t index, Tile& tile) {
  const int lane = threadIdx.x % 32;
  if (lane == 0) tile.valid = false;
  __syncwarp();
  const int64_t per_tile = p.queries_per_tile;
  int64_t before = 0;
  for (int64_t base = 0; base < p.batch; base += 32) {
    const int64_t b = base + lane;
    int64_t row0 = 0, q_len = 0, first = 0, last = 0, count = 0;
    if (b < p.batch) {
      query_range(p, b, row0, q_len, first, last);
      count = last > first ? (last - first + per_tile - 1) / per_tile : 0;
    }
    int64_t inclusive = count;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int64_t other = __shfl_up_sync(kFullMask, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    const int64_t total = __shfl_sync(kFullMask, inclusive, 31);
    if (index < before + total) {
      const unsigned hit = __ballot_sync(kFullMask, before + inclusive > index);
      if (lane == __ffs(hit) - 1) {  // count > 0 here: the first lane whose prefix passes index
        const int64_t kv_len = p.seq_lens[b];
        const int64_t key_limit = p.max_blocks * p.block_size;
        const int64_t num_keys = kv_len < 0 ? 0 : (kv_len < key_limit ? kv_len : key_limit);
        tile.request = b;
        tile.row0 = row0;
        tile.q_len = q_len;
        tile.q_begin = first + (index - (before + inclusive - count)) * per_tile;
        tile.q_end = tile.q_begin + per_tile < last ? tile.q_begin + per_tile : last;
        tile.prefix = kv_len - q_len;
        int64_t keys = num_keys;
        if (p.mask_mode == kCausal) {  // the tile's last query sees keys up to prefix + q_end - 1
          const int64_t reach = tile.prefix + tile.q_end;
          keys = reach < 0 ? 0 : (reach < num_keys ? reach : num_keys);
        }
        tile.num_keys = keys;
        // A start beyond the mask (or absurdly negative) leaves no element in range; clamping also
        // keeps start + i * q_len + col from overflowing.
        int64_t start = p.mask_indptr != nullptr ? p.mask_indptr[b] : p.mask_numel;
        const int64_t lowest = -(int64_t{1} << 62);
        start = start < lowest ? lowest : (start > p.mask_numel ? p.mask_numel : start);
        tile.mask_start = start;
        tile.valid = true;
      }
      break;
    }
    before += total;
  }
  __syncwarp();
}

// Whether query i of the tile's request sees key j (0 <= j < num_keys, block already valid).
__device__ __forceinline__ bool sees(const AttentionParams& p, const Tile& t, int64_t i, int64_t j) {
  if (p.mask_mode == kFull) return true;
  if (p.mask_mode == kCausal) return j <= t.prefix + i;
  if (j < t.prefix) return true;
  const int64_t col = j - t.prefix;
  if (col < 0 || col >= t.q_len) return false;
  const int64_t index = t.mask_start + i * t.q_len + col;
  return index >= 0 && index < p.mask_numel && p.custom_mask[index] != 0;
}

// Whether the tile's request splits its keys (a property of the request alone, given the launch).
__device__ __forceinline__ bool split_request(const AttentionParams& p, const Tile& t) {
  return p.splits > 1 && t.q_len <= kSplitMaxQueries;
}

// Keys [begin, end) of the CTA's split: split s of a split request owns keys
// [s * keys_per_split, (s + 1) * keys_per_split); split 0 of any other request owns them all.
__device__ __forceinline__ bool split_keys(const AttentionParams& p, const Tile& t, int64_t& begin, int64_t& end) {
  if (!split_request(p, t)) {
    begin = 0;
    end = t.num_keys;
    return blockIdx.z == 0;
  }
  begin = blockIdx.z * p.keys_per_split;
  end = begin + p.keys_per_split < t.num_keys ? begin + p.keys_per_split : t.num_keys;
  return begin < end;  // an empty split writes nothing; the merge only reads the used splits
}

// Element offset / D of (split, query i of the tile's request, query head) in the partials.
__device__ __forceinline__ int64_t partial_index(const AttentionParams& p, const Tile& t, int64_t split, int64_t i,
                                                 int64_t head) {
  const int64_t slot = p.compact_slots ? t.request * kSplitMaxQueries + i : t.row0 + i;
  return (split * p.slots + slot) * p.q_heads + head;
}

// ------------------------------------------------------------------------------------------------
// Attention. ROWS = (queries x heads) rows per CTA, D = head_dim.

template <typename T, int D, int ROWS>
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(const AttentionParams p) {
  using V = Vec16<T>;
  constexpr int kVecsPerRow = D / V::kElems;
  constexpr int kLanesPerKey = kVecsPerRow < 32 ? kVecsPerRow : 32;
  constexpr int kVecsPerLane = kVecsPerRow / kLanesPerKey;
  constexpr int kElems = kVecsPerLane * V::kElems;  // elements of a row each lane holds
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  constexpr int kWorkers = kWarps * kKeysPerWarp;
  static_assert(D % V::kElems == 0 && kVecsPerRow % kLanesPerKey == 0, "head_dim must fill 16-byte lanes");
  static_assert((kLanesPerKey & (kLanesPerKey - 1)) == 0, "xor shuffles stay inside a lane group");

  __shared__ Tile tile;
  __shared__ float worker_max[kWorkers][ROWS];
  __shared__ float worker_sum[kWorkers][ROWS];
  __shared__ float merged[ROWS][D];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 0) find_tile(p, blockIdx.x, tile);
  for (int i = threadIdx.x; i < ROWS * D; i += kThreads) (&merged[0][0])[i] = 0.0f;
  __syncthreads();
  if (!tile.valid) return;
  const Tile t = tile;  // registers: the key loop reads it per key
  int64_t key_begin, key_end;
  if (!split_keys(p, t, key_begin, key_end)) return;

  const int kv_head = blockIdx.y / p.head_chunks;
  const int first_head = kv_head * p.group + (blockIdx.y % p.head_chunks) * p.heads_per_cta;
  const int heads = min(p.heads_per_cta, static_cast<int>(p.group - (blockIdx.y % p.head_chunks) * p.heads_per_cta));
  const int64_t queries = t.q_end - t.q_begin;
  const int64_t query_row0 = t.row0 + t.q_begin;
  // Row r of the CTA: query r / heads, query head first_head + r % heads.
  const int valid_rows = static_cast<int>(queries) * heads;
  auto row_valid = [&](int r) { return r < valid_rows; };
  auto out_offset = [&](int r) {  // element offset of row r in q / out ([T, Hq, D])
    return ((query_row0 + r / heads) * p.q_heads + first_head + r % heads) * D;
  };

  const int group_lane = lane % kLanesPerKey;
  const int worker = warp * kKeysPerWarp + lane / kLanesPerKey;

  float q[ROWS][kElems];
  const T* q_data = static_cast<const T*>(p.q);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int v = 0; v < kVecsPerLane; ++v) {
      float* dst = &q[r][v * V::kElems];
      if (row_valid(r)) {
        const int64_t element = out_offset(r) + (group_lane + v * kLanesPerKey) * V::kElems;
        const uint4 w = *reinterpret_cast<const uint4*>(q_data + element);
        V::to_float(w, dst);
#pragma unroll
        for (int e = 0; e < V::kElems; ++e) dst[e] *= p.scale;
      } else {
#pragma unroll
        for (int e = 0; e < V::kElems; ++e) dst[e] = 0.0f;
      }
    }
  }

  float running_max[ROWS], running_sum[ROWS], acc[ROWS][kElems];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    running_max[r] = kNegInf;
    running_sum[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < kElems; ++e) acc[r][e] = 0.0f;
  }

  const T* k_data = static_cast<const T*>(p.k_cache);
  const T* v_data = static_cast<const T*>(p.v_cache);
  const int32_t* blocks = p.block_table + t.request * p.max_blocks;
  const int64_t token_stride = p.kv_heads * D;
  // Keys are < 2^31 (kv_len is int32), so the block arithmetic runs in 32 bits.
  const int block_size = static_cast<int>(p.block_size);
  for (int64_t base = key_begin; base < key_end; base += kWorkers * kUnroll) {
    uint4 k_words[kUnroll][kVecsPerLane], v_words[kUnroll][kVecsPerLane];
    bool present[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * kWorkers + worker;
      const int key = static_cast<int>(j);
      int64_t block = -1;
      if (j < key_end) block = blocks[key / block_size];
      present[u] = block >= 0 && block < p.num_blocks;  // guard: keys of a bad block are invisible
      const int64_t offset = present[u] ? (block * block_size + key % block_size) * token_stride + kv_head * D : 0;
#pragma unroll
      for (int v = 0; v < kVecsPerLane; ++v) {
        const int64_t element = offset + (group_lane + v * kLanesPerKey) * V::kElems;
        k_words[u][v] = present[u] ? __ldg(reinterpret_cast<const uint4*>(k_data + element)) : make_uint4(0, 0, 0, 0);
        v_words[u][v] = present[u] ? __ldg(reinterpret_cast<const uint4*>(v_data + element)) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * kWorkers + worker;
      float key[kElems];
#pragma unroll
      for (int v = 0; v < kVecsPerLane; ++v) V::to_float(k_words[u][v], &key[v * V::kElems]);
      float score[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < kElems; ++e) s = fmaf(q[r][e], key[e], s);
        score[r] = s;
      }
      // Every lane shuffles (absent keys too), so the full-mask shuffles never diverge.
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int offset = kLanesPerKey / 2; offset > 0; offset /= 2) {
          score[r] += __shfl_xor_sync(kFullMask, score[r], offset);
        }
      }
      if (!present[u]) continue;
      float value[kElems];
#pragma unroll
      for (int v = 0; v < kVecsPerLane; ++v) V::to_float(v_words[u][v], &value[v * V::kElems]);
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        if (!row_valid(r) || !sees(p, t, t.q_begin + r / heads, j) || !(score[r] > kNegInf)) continue;
        const float new_max = fmaxf(running_max[r], score[r]);
        const float alpha = __expf(running_max[r] - new_max);  // 0 for the first visible key
        const float weight = __expf(score[r] - new_max);
        running_sum[r] = running_sum[r] * alpha + weight;
        running_max[r] = new_max;
#pragma unroll
        for (int e = 0; e < kElems; ++e) acc[r][e] = fmaf(weight, value[e], acc[r][e] * alpha);
      }
    }
  }

  // Merge the CTA's workers: rescale each to the row's overall max and add it to shared memory,
  // one worker after the other (worker 0 first), so the sum has a fixed order (no atomics, whose
  // order would vary from run to run).
  if (group_lane == 0) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      worker_max[worker][r] = running_max[r];
      worker_sum[worker][r] = running_sum[r];
    }
  }
  __syncthreads();
  for (int turn = 0; turn < kWorkers; ++turn) {
    if (worker == turn) {  // the lanes of one worker own disjoint columns
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        if (!row_valid(r) || running_max[r] == kNegInf) continue;
        float row_max = kNegInf;
        for (int w = 0; w < kWorkers; ++w) row_max = fmaxf(row_max, worker_max[w][r]);
        const float rescale = __expf(running_max[r] - row_max);
#pragma unroll
        for (int v = 0; v < kVecsPerLane; ++v) {
#pragma unroll
          for (int e = 0; e < V::kElems; ++e) {
            merged[r][(group_lane + v * kLanesPerKey) * V::kElems + e] += acc[r][v * V::kElems + e] * rescale;
          }
        }
      }
    }
    __syncthreads();
  }

  constexpr int kVecsPerCta = ROWS * kVecsPerRow;
  for (int i = threadIdx.x; i < kVecsPerCta; i += kThreads) {
    const int r = i / kVecsPerRow, column = (i % kVecsPerRow) * V::kElems;
    if (!row_valid(r)) continue;
    float row_max = kNegInf;
    for (int w = 0; w < kWorkers; ++w) row_max = fmaxf(row_max, worker_max[w][r]);
    float row_sum = 0.0f;
    if (row_max != kNegInf) {
      for (int w = 0; w < kWorkers; ++w) {
        if (worker_max[w][r] != kNegInf) row_sum += worker_sum[w][r] * __expf(worker_max[w][r] - row_max);
      }
    }
    const int64_t offset = out_offset(r) + column;
    if (split_request(p, t)) {  // the merge kernel normalises
      const int64_t index = partial_index(p, t, blockIdx.z, t.q_begin + r / heads, first_head + r % heads);
      float* dst = p.partial_acc + index * D + column;
#pragma unroll
      for (int e = 0; e < V::kElems; ++e) dst[e] = merged[r][column + e];
      if (column == 0) {
        float* stats = p.partial_stats + index * 2;
        stats[0] = row_max;
        stats[1] = row_sum;
      }
      continue;
    }
    // row_sum > 0 exactly when some key was visible (the max key's weight is 1).
    const float inverse = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
    float values[V::kElems];
#pragma unroll
    for (int e = 0; e < V::kElems; ++e) values[e] = merged[r][column + e] * inverse;
    *reinterpret_cast<uint4*>(static_cast<T*>(p.out) + offset) = V::from_float(values);
  }
}

// Combines the used splits of every row of a split request's tile, in split order:
// out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
// One warp per row: lanes share the split loop's stats loads (broadcast) and own D / 32 columns,
// so a long context's ~100 splits cost a few microseconds, not a serial loop per element.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) paged_attention_merge_kernel(const AttentionParams p) {
  static_assert(D % 32 == 0, "each lane owns D / 32 columns");
  constexpr int kPerLane = D / 32;
  __shared__ Tile tile;
  if (threadIdx.x < 32) find_tile(p, blockIdx.x, tile);
  __syncthreads();
  if (!tile.valid || !split_request(p, tile)) return;  // an unsplit request's CTA wrote out itself
  const Tile t = tile;
  const int64_t used = min(static_cast<int64_t>(p.splits), (t.num_keys + p.keys_per_split - 1) / p.keys_per_split);
  const int chunk = blockIdx.y % p.head_chunks;
  const int first_head = (blockIdx.y / p.head_chunks) * p.group + chunk * p.heads_per_cta;
  const int heads = min(p.heads_per_cta, static_cast<int>(p.group - chunk * p.heads_per_cta));
  const int rows = static_cast<int>(t.q_end - t.q_begin) * heads;
  const int64_t split_stride = p.slots * p.q_heads;  // slots x heads of one split
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += kWarps) {
    const int64_t row_head = (t.row0 + t.q_begin + r / heads) * p.q_heads + first_head + r % heads;
    const int64_t slot_head = partial_index(p, t, 0, t.q_begin + r / heads, first_head + r % heads);
    float row_max = kNegInf;
    for (int64_t s = lane; s < used; s += 32) {
      row_max = fmaxf(row_max, p.partial_stats[(s * split_stride + slot_head) * 2]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      row_max = fmaxf(row_max, __shfl_xor_sync(kFullMask, row_max, offset));
    }
    float total = 0.0f, value[kPerLane];
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) value[e] = 0.0f;
    if (row_max != kNegInf) {  // warp-uniform: every lane reduced the same maxima
      for (int64_t s = 0; s < used; ++s) {
        const float* stats = p.partial_stats + (s * split_stride + slot_head) * 2;
        if (stats[0] == kNegInf) continue;  // this split saw no key of the row
        const float weight = __expf(stats[0] - row_max);
        total += stats[1] * weight;
        const float* acc = p.partial_acc + (s * split_stride + slot_head) * D;
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) value[e] = fmaf(acc[lane + 32 * e], weight, value[e]);
      }
    }
    const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
    T* o = static_cast<T*>(p.out) + row_head * D;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) o[lane + 32 * e] = Vec16<T>::scalar(value[e] * inverse);
  }
}

}  // namespace paged_kv
}  // namespace decodekit
