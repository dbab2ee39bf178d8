// C++ CPU kernels of the `paged_kv` op family. The spec is decodekit/reference/paged_kv.py.
//
// paged_attention is a flash-decoding style online softmax over the paged cache:
//   * A tile is up to kMaxTileRows query-head rows of one request (a few queries x all Hq heads).
//     Keys are visited token by token in cache order (all Hkv heads of a slot are contiguous in
//     NHD), so the cache streams sequentially and every key/value row is read from memory once per
//     tile and reused, from L1, by the group of query heads (GQA) of every query in the tile.
//   * Keys go in chunks of at most kChunk inside one block: scores for the chunk, one max/rescale
//     per row, then the value accumulation. Accumulators are fp32.
//   * Work items are (tile, key split). A tile's keys are split at fixed multiples of
//     kSplitKeys (rounded up to whole blocks), whatever the batch or the thread count, and the
//     splits' (max, sum, acc) are merged by log-sum-exp in split order afterwards: a row's
//     arithmetic depends only on its own request (batch invariance, DESIGN.md). Items are claimed
//     from an atomic counter, longest first, so uneven requests balance over the threads.
// Measured on 2 shared Sapphire Rapids cores (decode, Hq=32, Hkv=8, D=128, fp32): with the cache
// in L2 one (key, kv head) costs ~100 cycles, mostly FMAs; B=32 x 4096 keys (1 GiB of K/V) runs
// within ~15% of a plain torch.sum over the same bytes and uses ~2x less CPU time than SDPA over
// contiguous K/V (bench/bench_paged_kv.py has the benchmark).
#include "paged_kv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "cpu_math.h"

// The hot loops have an AVX2+FMA form (any x86 built with -march=native since Haswell) and a plain
// form that GCC vectorises elsewhere. The plain dot product ends in a 16-lane horizontal sum per
// (row, key) that GCC spills to the stack: ~40% of the decode time on Sapphire Rapids.
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DECODEKIT_PAGED_KV_AVX2 1
#else
#define DECODEKIT_PAGED_KV_AVX2 0
#endif

namespace decodekit::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Keys per online-softmax step: one rescale of the accumulators per 32 keys, and the tile's
// scores (kMaxTileRows x kChunk floats = 32 KB) stay in L1/L2.
constexpr int64_t kChunk = 32;
// Query-head rows per tile: each key/value row fetched from memory serves every row of its kv head
// in the tile, so speculative verification (q_len ~ 8) reads the cache once, not once per query.
// 256 rows of D = 128 keep the queries and accumulators (256 KB) in L2.
constexpr int64_t kMaxTileRows = 256;
// Keys per split (rounded up to whole blocks). A constant, not a share of the batch's work: a split
// count that followed the batch size or the thread count would change the last bits of a
// request's output with its neighbours. 512 keys still give one decode request at context 32768
// 64 items (every core of a large server) and B = 32 at context 4096 256 items, while a split's
// partial result (Hq x (D + 2) floats) and its merge stay ~0.2% of the split's K/V work.
constexpr int64_t kSplitKeys = 512;
// Independent accumulators of the dot product: one AVX-512 register (two AVX2 ones); without
// them the fp32 sum would be a serial chain GCC may not reorder.
constexpr int kLanes = 16;
// Copies of at least this many bytes per task amortise the parallel_for dispatch.
constexpr int64_t kCopyGrainBytes = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Row helpers. Plain loops over float arrays: GCC vectorises them at -O3 (std::fma keeps the
// fused multiply-add, which ISO C++ mode would otherwise not contract).

// A float view of a row of n elements: the row itself for float, else `buffer` holding it.
template <typename T>
inline const float* as_float(const T* row, int64_t n, float* buffer) {
  if constexpr (std::is_same_v<T, float>) {
    return row;
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<float>(row[i]);
    return buffer;
  }
}

// kD > 0 fixes the head dimension at compile time (fully unrolled loops); kD == 0 uses d.
template <int kD>
inline float dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  const int64_t n = kD > 0 ? kD : d;
  const int64_t whole = n / kLanes * kLanes;
  float lanes[kLanes] = {};
  for (int64_t i = 0; i < whole; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::fma(a[i + l], b[i + l], lanes[l]);
  }
  float tail = 0.0f;
  for (int64_t i = whole; i < n; ++i) tail = std::fma(a[i], b[i], tail);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0] + tail;
}

template <int kD>
inline void axpy(float* __restrict y, float a, const float* __restrict x, int64_t d) {
  const int64_t n = kD > 0 ? kD : d;
  for (int64_t i = 0; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

#if DECODEKIT_PAGED_KV_AVX2
// {sum(a), sum(b), sum(c), sum(d)} of four 8-lane accumulators in three horizontal adds.
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
#endif

// Keys per pass of the score and value loops: every row's accumulator is loaded and stored once
// per kValueKeys keys (not per key), and each loaded query row meets kScoreKeys keys.
constexpr int kScoreKeys = 2;
constexpr int kValueKeys = 4;

// scores[x * kChunk + k] = q[x] . keys[k] for every row x in rows[0, count) and k < m <= kScoreKeys.
template <int kD>
inline void dot_rows(const float* q, const int64_t* rows, int64_t count, const float* const* keys, int m,
                     int64_t d, float* scores) {
  const int64_t n = kD > 0 ? kD : d;
  int64_t r = 0;
#if DECODEKIT_PAGED_KV_AVX2
  if (n % 8 == 0 && m == 2) {
    const float* k0 = keys[0];
    const float* k1 = keys[1];
    for (; r + 4 <= count; r += 4) {  // 4 rows x 2 keys: 8 accumulators, 6 loads per 8 FMAs
      const float* q0 = q + rows[r] * n;
      const float* q1 = q + rows[r + 1] * n;
      const float* q2 = q + rows[r + 2] * n;
      const float* q3 = q + rows[r + 3] * n;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t i = 0; i < n; i += 8) {
        const __m256 x0 = _mm256_loadu_ps(k0 + i), x1 = _mm256_loadu_ps(k1 + i);
        __m256 y = _mm256_loadu_ps(q0 + i);
        a0 = _mm256_fmadd_ps(y, x0, a0);
        b0 = _mm256_fmadd_ps(y, x1, b0);
        y = _mm256_loadu_ps(q1 + i);
        a1 = _mm256_fmadd_ps(y, x0, a1);
        b1 = _mm256_fmadd_ps(y, x1, b1);
        y = _mm256_loadu_ps(q2 + i);
        a2 = _mm256_fmadd_ps(y, x0, a2);
        b2 = _mm256_fmadd_ps(y, x1, b2);
        y = _mm256_loadu_ps(q3 + i);
        a3 = _mm256_fmadd_ps(y, x0, a3);
        b3 = _mm256_fmadd_ps(y, x1, b3);
      }
      alignas(16) float first[4], second[4];
      _mm_store_ps(first, sum4(a0, a1, a2, a3));
      _mm_store_ps(second, sum4(b0, b1, b2, b3));
      for (int j = 0; j < 4; ++j) {
        scores[rows[r + j] * kChunk] = first[j];
        scores[rows[r + j] * kChunk + 1] = second[j];
      }
    }
  }
#endif
  for (; r < count; ++r) {
    for (int k = 0; k < m; ++k) scores[rows[r] * kChunk + k] = dot<kD>(q + rows[r] * n, keys[k], n);
  }
}

// acc[x] += sum_k weights[x * kChunk + k] * values[k] for every row x in rows[0, count) and
// k < m <= kValueKeys.
template <int kD>
inline void axpy_rows(float* acc, const int64_t* rows, int64_t count, const float* weights,
                      const float* const* values, int m, int64_t d) {
  const int64_t n = kD > 0 ? kD : d;
  int64_t r = 0;
#if DECODEKIT_PAGED_KV_AVX2
  if (n % 8 == 0 && m == 4) {
    const float* v0 = values[0];
    const float* v1 = values[1];
    const float* v2 = values[2];
    const float* v3 = values[3];
    for (; r + 2 <= count; r += 2) {  // 2 rows x 4 keys: 6 loads and 2 stores per 8 FMAs
      float* y0 = acc + rows[r] * n;
      float* y1 = acc + rows[r + 1] * n;
      const float* w = weights + rows[r] * kChunk;
      const float* u = weights + rows[r + 1] * kChunk;
      const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(w[1]);
      const __m256 w2 = _mm256_set1_ps(w[2]), w3 = _mm256_set1_ps(w[3]);
      const __m256 u0 = _mm256_set1_ps(u[0]), u1 = _mm256_set1_ps(u[1]);
      const __m256 u2 = _mm256_set1_ps(u[2]), u3 = _mm256_set1_ps(u[3]);
      for (int64_t i = 0; i < n; i += 8) {
        const __m256 x0 = _mm256_loadu_ps(v0 + i), x1 = _mm256_loadu_ps(v1 + i);
        const __m256 x2 = _mm256_loadu_ps(v2 + i), x3 = _mm256_loadu_ps(v3 + i);
        __m256 s = _mm256_fmadd_ps(w0, x0, _mm256_loadu_ps(y0 + i));
        __m256 t = _mm256_fmadd_ps(u0, x0, _mm256_loadu_ps(y1 + i));
        s = _mm256_fmadd_ps(w1, x1, s);
        t = _mm256_fmadd_ps(u1, x1, t);
        s = _mm256_fmadd_ps(w2, x2, s);
        t = _mm256_fmadd_ps(u2, x2, t);
        s = _mm256_fmadd_ps(w3, x3, s);
        t = _mm256_fmadd_ps(u3, x3, t);
        _mm256_storeu_ps(y0 + i, s);
        _mm256_storeu_ps(y1 + i, t);
      }
    }
  }
#endif
  for (; r < count; ++r) {
    for (int k = 0; k < m; ++k) axpy<kD>(acc + rows[r] * n, weights[rows[r] * kChunk + k], values[k], n);
  }
}

// e^x for softmax weights (x = score - running max <= 0). glibc's expf is a scalar call without
// -ffast-math; the polynomial of cpu_math.h is plain arithmetic, so the weight loop vectorises.
// x < -87 (weights below FLT_MIN, next to the max's weight 1) and x = -inf give 0; NaN stays NaN.
// Cheaper than fast_exp: no upper clamp and no NaN blend, which x <= 0 does not need.
inline float exp_nonpositive(float x) {
  const float result = exp_polynomial(std::max(x, kExpLowest));
  return x < kExpLowest ? 0.0f : result;
}

// ---------------------------------------------------------------------------------------------
// Problem description.

enum MaskMode : int64_t { kCausal = 0, kFull = 1, kCustom = 2 };

struct Geometry {
  int64_t rows;        // T: query rows of q and out
  int64_t num_blocks;  // NB
  int64_t block_size;  // BS
  int64_t kv_heads;    // Hkv
  int64_t q_heads;     // Hq
  int64_t group;       // Hq / Hkv
  int64_t head_dim;    // D
  int64_t max_blocks;  // MB: block-table columns
  int64_t token_stride() const { return kv_heads * head_dim; }
  int64_t block_stride() const { return block_size * kv_heads * head_dim; }
};

// One request, with every index value already made safe to use.
struct Request {
  int64_t row0;      // global q row of query 0 (cu_seqlens_q[b]; rows outside [0, T) are skipped)
  int64_t q_len;
  int64_t prefix;    // kv_len - q_len: position of query 0 (negative only for bad input)
  int64_t num_keys;  // keys that exist: min(kv_len, MB * BS), >= 0
  const int32_t* blocks;  // block_table row b
  // Custom mask: element index start + i * q_len + col, valid while in [0, mask_numel).
  const uint8_t* mask;
  int64_t mask_start;
  int64_t mask_numel;

  // Whether query i sees custom-mask column col (a key among the request's own queries).
  bool mask_bit(int64_t i, int64_t col) const {
    if (col < 0 || col >= q_len) return false;
    const int64_t index = mask_start + i * q_len + col;
    return index >= 0 && index < mask_numel && mask[index] != 0;
  }
};

// A tile: queries [q_begin, q_end) of one request (every row inside [0, T)), whose visible keys
// all lie in [0, num_keys); the keys are covered by `splits` items of keys_per_split keys.
struct Tile {
  int64_t request;
  int64_t q_begin, q_end;
  int64_t num_keys;
  int64_t splits = 1;
  int64_t keys_per_split = 0;
  int64_t partial = -1;  // offset of the splits' partial results in the scratch; -1: none
  int64_t num_rows(const Geometry& g) const { return (q_end - q_begin) * g.q_heads; }
};

struct Item {
  int64_t tile, split, cost;
};

// How the keys of one chunk look to one query.
enum class Sight : uint8_t { kNone, kAll, kSome };

// Per-thread buffers, sized for the largest tile.
struct Workspace {
  std::vector<float> q;       // [rows, D] scaled queries
  std::vector<float> acc;     // [rows, D] unnormalised outputs
  std::vector<float> max;     // [rows] running max of the scaled scores
  std::vector<float> sum;     // [rows] running sum of exp(score - max)
  std::vector<float> probs;   // [rows, kChunk] scores, then weights of the current chunk
  std::vector<float> rows16;  // [kValueKeys, D] converted key or value rows (16-bit dtypes)
  std::vector<uint8_t> seen;  // [queries, kChunk] visibility when Sight::kSome
  std::vector<Sight> sight;   // [queries]
  std::vector<int64_t> head_rows;  // [rows]: per kv head, the rows of queries that see the chunk

  Workspace(int64_t rows, int64_t queries, int64_t head_dim)
      : q(rows * head_dim), acc(rows * head_dim), max(rows), sum(rows), probs(rows * kChunk),
        rows16(kValueKeys * head_dim), seen(queries * kChunk), sight(queries), head_rows(rows) {}
};

struct Attention {
  Geometry g;
  int64_t mask_mode;
  float scale;
  std::vector<Request> requests;
  std::vector<Tile> tiles;

  // Visibility of keys [c0, c1) for query i of request r; fills seen[0, c1 - c0) for kSome.
  Sight look(const Request& r, int64_t i, int64_t c0, int64_t c1, uint8_t* seen) const {
    if (mask_mode == kFull) return Sight::kAll;
    if (mask_mode == kCausal) {
      const int64_t last = r.prefix + i;  // last visible key
      if (last < c0) return Sight::kNone;
      if (last >= c1 - 1) return Sight::kAll;
      for (int64_t j = c0; j < c1; ++j) seen[j - c0] = j <= last;
      return Sight::kSome;
    }
    if (c1 <= r.prefix) return Sight::kAll;
    bool any = false;
    for (int64_t j = c0; j < c1; ++j) {
      const bool visible = j < r.prefix || r.mask_bit(i, j - r.prefix);
      seen[j - c0] = visible;
      any |= visible;
    }
    return any ? Sight::kSome : Sight::kNone;
  }
};

// ---------------------------------------------------------------------------------------------
// One work item: keys [key_begin, key_end) of one tile.

template <typename T, int kD>
void run_item(const Attention& a, const Tile& tile, int64_t key_begin, int64_t key_end,
              const T* q, const T* k_cache, const T* v_cache, Workspace& ws, T* out,
              float* partial) {
  const Geometry& g = a.g;
  const Request& r = a.requests[tile.request];
  const int64_t D = kD > 0 ? kD : g.head_dim;
  const int64_t Hq = g.q_heads, group = g.group;
  const int64_t queries = tile.q_end - tile.q_begin;
  const int64_t rows = queries * Hq;
  const int64_t row_offset = (r.row0 + tile.q_begin) * Hq * D;  // rows are consecutive in q/out

  float* qs = ws.q.data();
  float* acc = ws.acc.data();
  float* max = ws.max.data();
  float* sum = ws.sum.data();
  float* probs = ws.probs.data();
  for (int64_t i = 0; i < rows * D; ++i) qs[i] = static_cast<float>(q[row_offset + i]) * a.scale;
  std::fill_n(acc, rows * D, 0.0f);
  std::fill_n(max, rows, kNegInf);
  std::fill_n(sum, rows, 0.0f);

  const int64_t BS = g.block_size, token_stride = g.token_stride();
  for (int64_t c0 = key_begin; c0 < key_end;) {
    const int64_t block_index = c0 / BS;
    const int64_t block_end = std::min(key_end, (block_index + 1) * BS);
    const int64_t block = r.blocks[block_index];
    if (block < 0 || block >= g.num_blocks) {  // guard: keys of a bad block are invisible
      c0 = block_end;
      continue;
    }
    const int64_t c1 = std::min(block_end, c0 + kChunk);
    const int64_t n = c1 - c0;
    bool any = false;
    for (int64_t qi = 0; qi < queries; ++qi) {
      ws.sight[qi] = a.look(r, tile.q_begin + qi, c0, c1, ws.seen.data() + qi * kChunk);
      any |= ws.sight[qi] != Sight::kNone;
    }
    if (!any) {
      c0 = c1;
      continue;
    }
    const int64_t first_token = block * g.block_stride() + (c0 - block_index * BS) * token_stride;
    const T* keys = k_cache + first_token;
    const T* values = v_cache + first_token;

    // Rows that see part of the chunk, listed per kv head: head h's rows are
    // head_rows[h * per_head, (h + 1) * per_head).
    int64_t per_head = 0;
    for (int64_t h = 0; h < g.kv_heads; ++h) {
      int64_t* list = ws.head_rows.data() + h * queries * group;
      int64_t count = 0;
      for (int64_t qi = 0; qi < queries; ++qi) {
        if (ws.sight[qi] == Sight::kNone) continue;
        for (int64_t x = qi * Hq + h * group, end = x + group; x < end; ++x) list[count++] = x;
      }
      per_head = count;
    }
    const int64_t head_stride = queries * group;

    // Scores, in cache order: kScoreKeys slots, then their kv heads.
    const float* rows_f32[kValueKeys];
    for (int64_t c = 0; c < n; c += kScoreKeys) {
      const int m = static_cast<int>(std::min<int64_t>(kScoreKeys, n - c));
      for (int64_t h = 0; h < g.kv_heads; ++h) {
        for (int k = 0; k < m; ++k) {
          rows_f32[k] = as_float(keys + (c + k) * token_stride + h * D, D, ws.rows16.data() + k * D);
        }
        dot_rows<kD>(qs, ws.head_rows.data() + h * head_stride, per_head, rows_f32, m, D, probs + c);
      }
    }

    // Online softmax: new max, rescale, weights.
    for (int64_t qi = 0; qi < queries; ++qi) {
      const Sight sight = ws.sight[qi];
      if (sight == Sight::kNone) continue;
      const uint8_t* seen = ws.seen.data() + qi * kChunk;
      for (int64_t x = qi * Hq, end = x + Hq; x < end; ++x) {
        float* p = probs + x * kChunk;
        if (sight == Sight::kSome) {
          for (int64_t c = 0; c < n; ++c) p[c] = seen[c] ? p[c] : kNegInf;
        }
        float chunk_max = kNegInf;
        for (int64_t c = 0; c < n; ++c) chunk_max = std::max(chunk_max, p[c]);
        if (chunk_max == kNegInf) {  // nothing visible to this row here: no weight, no update
          std::fill_n(p, n, 0.0f);
          continue;
        }
        const float new_max = std::max(max[x], chunk_max);
        const float alpha = exp_nonpositive(max[x] - new_max);  // 0 on the first visible chunk
        for (int64_t c = 0; c < n; ++c) p[c] = exp_nonpositive(p[c] - new_max);
        float chunk_sum = 0.0f;
        for (int64_t c = 0; c < n; ++c) chunk_sum += p[c];
        sum[x] = sum[x] * alpha + chunk_sum;
        max[x] = new_max;
        if (alpha != 1.0f) {
          float* row = acc + x * D;
          for (int64_t d = 0; d < D; ++d) row[d] *= alpha;
        }
      }
    }

    // Values, in cache order again.
    for (int64_t c = 0; c < n; c += kValueKeys) {
      const int m = static_cast<int>(std::min<int64_t>(kValueKeys, n - c));
      for (int64_t h = 0; h < g.kv_heads; ++h) {
        for (int k = 0; k < m; ++k) {
          rows_f32[k] = as_float(values + (c + k) * token_stride + h * D, D, ws.rows16.data() + k * D);
        }
        axpy_rows<kD>(acc, ws.head_rows.data() + h * head_stride, per_head, probs + c, rows_f32, m, D);
      }
    }
    c0 = c1;
  }

  if (partial != nullptr) {  // one split of several: keep (max, sum, acc) for the merge
    std::copy_n(max, rows, partial);
    std::copy_n(sum, rows, partial + rows);
    std::copy_n(acc, rows * D, partial + 2 * rows);
    return;
  }
  for (int64_t x = 0; x < rows; ++x) {
    // sum > 0 exactly when some key was visible (its weight exp(0) = 1 is in the sum).
    const float inverse = sum[x] > 0.0f ? 1.0f / sum[x] : 0.0f;
    T* o = out + row_offset + x * D;
    const float* row = acc + x * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(row[d] * inverse);
  }
}

// Log-sum-exp merge of a tile's splits into out, in split order (a fixed summation order).
template <typename T>
void merge_splits(const Attention& a, const Tile& tile, const float* scratch, T* out) {
  const Geometry& g = a.g;
  const Request& r = a.requests[tile.request];
  const int64_t D = g.head_dim, rows = tile.num_rows(g);
  const int64_t stride = rows * (D + 2);  // one split's (max, sum, acc)
  const float* base = scratch + tile.partial;
  T* o = out + (r.row0 + tile.q_begin) * g.q_heads * D;
  std::vector<float> row(D);
  for (int64_t x = 0; x < rows; ++x) {
    float best = kNegInf;
    for (int64_t s = 0; s < tile.splits; ++s) best = std::max(best, base[s * stride + x]);
    std::fill(row.begin(), row.end(), 0.0f);
    float total = 0.0f;
    if (best != kNegInf) {
      for (int64_t s = 0; s < tile.splits; ++s) {
        const float* split = base + s * stride;
        if (split[rows + x] == 0.0f) continue;  // split saw no key of this row
        const float weight = std::exp(split[x] - best);
        total += split[rows + x] * weight;
        axpy<0>(row.data(), weight, split + 2 * rows + x * D, D);
      }
    }
    const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
    for (int64_t d = 0; d < D; ++d) o[x * D + d] = static_cast<T>(row[d] * inverse);
  }
}

// ---------------------------------------------------------------------------------------------
// Planning: requests -> tiles -> (tile, split) items.

std::vector<Request> read_requests(const Geometry& g, const at::Tensor& block_table,
                                   const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q,
                                   int64_t mask_mode, const at::Tensor& custom_mask,
                                   const at::Tensor& mask_indptr) {
  const int64_t batch = std::min({block_table.size(0), seq_lens.numel(), cu_seqlens_q.numel() - 1});
  const int32_t* table = block_table.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* cu = cu_seqlens_q.data_ptr<int32_t>();
  const bool custom = mask_mode == kCustom;
  const int64_t mask_numel = custom ? custom_mask.numel() : 0;
  const uint8_t* mask =
      mask_numel > 0 ? static_cast<const uint8_t*>(custom_mask.data_ptr()) : nullptr;
  const int64_t* starts = custom && mask_indptr.numel() > 0 ? mask_indptr.data_ptr<int64_t>() : nullptr;
  std::vector<Request> requests;
  requests.reserve(std::max<int64_t>(batch, 0));
  for (int64_t b = 0; b < batch; ++b) {
    Request r{};
    r.row0 = cu[b];
    r.q_len = static_cast<int64_t>(cu[b + 1]) - cu[b];
    const int64_t kv_len = lens[b];
    r.prefix = kv_len - r.q_len;
    r.num_keys = std::clamp<int64_t>(kv_len, 0, g.max_blocks * g.block_size);
    r.blocks = table + b * g.max_blocks;
    r.mask = mask;
    r.mask_numel = mask_numel;
    // A start beyond the mask (or absurdly negative) leaves no element in range; clamping it also
    // keeps start + i * q_len + col (< 2^62 for int32 lengths) from overflowing.
    const int64_t start = starts != nullptr && b < mask_indptr.numel() ? starts[b] : mask_numel;
    r.mask_start = std::clamp<int64_t>(start, -(int64_t{1} << 62), mask_numel);
    requests.push_back(r);
  }
  return requests;
}

std::vector<Tile> make_tiles(const Attention& a) {
  const Geometry& g = a.g;
  const int64_t queries_per_tile = std::max<int64_t>(1, kMaxTileRows / g.q_heads);
  std::vector<Tile> tiles;
  for (int64_t b = 0; b < static_cast<int64_t>(a.requests.size()); ++b) {
    const Request& r = a.requests[b];
    if (r.q_len <= 0) continue;
    // Queries whose rows lie in [0, T); the rest are skipped (bad cu_seqlens_q).
    const int64_t first = std::max<int64_t>(0, -r.row0);
    const int64_t last = std::min<int64_t>(r.q_len, g.rows - r.row0);
    for (int64_t i = first; i < last; i += queries_per_tile) {
      Tile t{};
      t.request = b;
      t.q_begin = i;
      t.q_end = std::min(last, i + queries_per_tile);
      // Causal: the tile's last query sees keys up to prefix + q_end - 1.
      t.num_keys = a.mask_mode == kCausal ? std::clamp<int64_t>(r.prefix + t.q_end, 0, r.num_keys)
                                          : r.num_keys;
      tiles.push_back(t);
    }
  }
  return tiles;
}

int64_t tile_cost(const Geometry& g, const Tile& t, int64_t keys) {
  // Dot products and axpys per key grow with the rows; streaming the key itself costs about as
  // much as a few more rows.
  return keys * (t.num_rows(g) + 8);
}

// Splits every tile's keys at multiples of kSplitKeys (whole blocks) and returns the size of the
// partial-result scratch. Depends on each tile alone, never on the batch or the threads.
int64_t plan_splits(const Geometry& g, std::vector<Tile>& tiles) {
  const int64_t keys = (kSplitKeys + g.block_size - 1) / g.block_size * g.block_size;
  int64_t scratch = 0;
  for (Tile& t : tiles) {
    const int64_t splits = (t.num_keys + keys - 1) / keys;
    if (splits <= 1) continue;
    t.keys_per_split = keys;
    t.splits = splits;
    t.partial = scratch;
    scratch += t.splits * t.num_rows(g) * (g.head_dim + 2);
  }
  return scratch;
}

std::vector<Item> make_items(const Geometry& g, const std::vector<Tile>& tiles) {
  std::vector<Item> items;
  for (int64_t t = 0; t < static_cast<int64_t>(tiles.size()); ++t) {
    const Tile& tile = tiles[t];
    for (int64_t s = 0; s < tile.splits; ++s) {
      const int64_t keys = tile.splits == 1 ? tile.num_keys
                                            : std::min(tile.keys_per_split,
                                                       tile.num_keys - s * tile.keys_per_split);
      items.push_back(Item{t, s, tile_cost(g, tile, keys)});
    }
  }
  // Longest first: the dynamic claim order then balances like LPT scheduling.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& x, const Item& y) { return x.cost > y.cost; });
  return items;
}

// Runs fn(index, workspace) for indices [0, n), claimed dynamically by at most `threads` workers.
template <typename MakeWorkspace, typename Fn>
void claim_in_parallel(int64_t n, MakeWorkspace&& make_workspace, Fn&& fn) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    auto ws = make_workspace();
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i, ws);
    }
  });
}

template <typename T, int kD>
void run_attention(const Attention& a, const at::Tensor& q, const at::Tensor& k_cache,
                   const at::Tensor& v_cache, const at::Tensor& out, int64_t scratch_size) {
  const Geometry& g = a.g;
  const T* q_data = q.data_ptr<T>();
  const T* k_data = k_cache.data_ptr<T>();
  const T* v_data = v_cache.data_ptr<T>();
  T* out_data = out.data_ptr<T>();
  std::vector<float> scratch(scratch_size);
  const std::vector<Item> items = make_items(g, a.tiles);
  int64_t max_queries = 0;
  for (const Tile& t : a.tiles) max_queries = std::max(max_queries, t.q_end - t.q_begin);
  claim_in_parallel(
      static_cast<int64_t>(items.size()),
      [&] { return Workspace(max_queries * g.q_heads, max_queries, g.head_dim); },
      [&](int64_t index, Workspace& ws) {
        const Item& item = items[index];
        const Tile& tile = a.tiles[item.tile];
        int64_t begin = 0, end = tile.num_keys;
        float* partial = nullptr;
        if (tile.splits > 1) {
          begin = item.split * tile.keys_per_split;
          end = std::min(tile.num_keys, begin + tile.keys_per_split);
          partial = scratch.data() + tile.partial +
                    item.split * tile.num_rows(g) * (g.head_dim + 2);
        }
        run_item<T, kD>(a, tile, begin, end, q_data, k_data, v_data, ws, out_data, partial);
      });
  if (scratch_size == 0) return;
  std::vector<int64_t> split_tiles;
  for (int64_t t = 0; t < static_cast<int64_t>(a.tiles.size()); ++t) {
    if (a.tiles[t].splits > 1) split_tiles.push_back(t);
  }
  at::parallel_for(0, static_cast<int64_t>(split_tiles.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      merge_splits<T>(a, a.tiles[split_tiles[i]], scratch.data(), out_data);
    }
  });
}

// Runs fn(std::integral_constant<int, kD>) with kD = D for the common head sizes (unrolled
// loops), else kD = 0 (runtime D).
template <typename Fn>
void dispatch_head_dim(int64_t head_dim, Fn&& fn) {
  switch (head_dim) {
    case 64:
      return fn(std::integral_constant<int, 64>{});
    case 128:
      return fn(std::integral_constant<int, 128>{});
    case 256:
      return fn(std::integral_constant<int, 256>{});
    default:
      return fn(std::integral_constant<int, 0>{});
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Cache writes.

void kv_append(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
               const at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  const int64_t tokens = std::min(k.size(0), slot_mapping.numel());
  const int64_t capacity = k_cache.size(0) * k_cache.size(1);
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const auto* k_src = static_cast<const char*>(k.data_ptr());
  const auto* v_src = static_cast<const char*>(v.data_ptr());
  auto* k_dst = static_cast<char*>(k_cache.data_ptr());
  auto* v_dst = static_cast<char*>(v_cache.data_ptr());
  const int64_t grain = std::max<int64_t>(1, kCopyGrainBytes / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0 || slot >= capacity) continue;  // padding, or a guard against bad slots
      std::memcpy(k_dst + slot * row_bytes, k_src + t * row_bytes, row_bytes);
      std::memcpy(v_dst + slot * row_bytes, v_src + t * row_bytes, row_bytes);
    }
  });
}

void kv_copy_blocks(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& src,
                    const at::Tensor& dst) {
  const int64_t layers = k_cache.size(0), num_blocks = k_cache.size(1);
  const int64_t pairs = std::min(src.numel(), dst.numel());
  const int64_t block_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.size(4) * k_cache.element_size();
  const int32_t* src_ids = src.data_ptr<int32_t>();
  const int32_t* dst_ids = dst.data_ptr<int32_t>();
  auto* k_data = static_cast<char*>(k_cache.data_ptr());
  auto* v_data = static_cast<char*>(v_cache.data_ptr());
  const int64_t grain = std::max<int64_t>(1, kCopyGrainBytes / std::max<int64_t>(block_bytes, 1));
  at::parallel_for(0, layers * pairs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t layer = i / pairs, p = i % pairs;
      const int64_t from = src_ids[p], to = dst_ids[p];
      if (from < 0 || from >= num_blocks || to < 0 || to >= num_blocks || from == to) continue;
      const int64_t layer_offset = layer * num_blocks;
      std::memcpy(k_data + (layer_offset + to) * block_bytes,
                  k_data + (layer_offset + from) * block_bytes, block_bytes);
      std::memcpy(v_data + (layer_offset + to) * block_bytes,
                  v_data + (layer_offset + from) * block_bytes, block_bytes);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Attention.

void paged_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_table, const at::Tensor& seq_lens,
                     const at::Tensor& cu_seqlens_q, int64_t mask_mode, double scale,
                     const at::Tensor& custom_mask, const at::Tensor& mask_indptr,
                     const at::Tensor& out) {
  TORCH_CHECK_VALUE(mask_mode >= kCausal && mask_mode <= kCustom,
                    "paged_attention: mask_mode must be 0 (causal), 1 (full) or 2 (custom), got ",
                    mask_mode);
  TORCH_CHECK_VALUE(k_cache.size(2) > 0 && q.size(1) % k_cache.size(2) == 0,
                    "paged_attention: Hq must be a multiple of Hkv, got Hq=", q.size(1), ", Hkv=",
                    k_cache.size(2));
  Attention a;
  a.g = Geometry{q.size(0),        k_cache.size(0), k_cache.size(1),
                 k_cache.size(2),  q.size(1),       q.size(1) / k_cache.size(2),
                 q.size(2),        block_table.size(1)};
  a.mask_mode = mask_mode;
  a.scale = static_cast<float>(scale);
  a.requests = read_requests(a.g, block_table, seq_lens, cu_seqlens_q, mask_mode, custom_mask,
                             mask_indptr);
  a.tiles = make_tiles(a);
  const int64_t scratch = plan_splits(a.g, a.tiles);
  dispatch_float_types(q, "paged_attention", [&](auto type_tag) {
    using T = decltype(type_tag);
    dispatch_head_dim(a.g.head_dim, [&](auto dim_tag) {
      run_attention<T, decltype(dim_tag)::value>(a, q, k_cache, v_cache, out, scratch);
    });
  });
}

}  // namespace decodekit::cpu
