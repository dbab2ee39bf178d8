// Fused sampling kernels, torch-free: sample, apply_penalties, mask_logits, top_k_top_p_renorm and
// philox_uniform. The spec is decodekit/reference/sampling.py; the RNG is decodekit/rng.cuh.
//
// The row kernels run one CTA of kThreads threads per row and never sort the vocabulary:
//   1. scan_row: max key and its first index, NaN/+inf detection, how many entries pass the floor
//      (x > -inf, or p > 0 for renorm) and, with top-k on, the histogram of the top key digit.
//   2. top-k: radix select of the k-th largest key (11+5 bit digits for 16-bit dtypes, 11+11+10 for
//      fp32, one 2048-bin shared histogram per digit). The top-k set K is then a key range [lo, max].
//   3. |K| <= kCandidateCapacity (top-k on, or a small vocabulary): K is gathered into shared memory
//      and sorted, and top-p, min-p, the Gumbel-max draw and the normaliser run over that short list.
//      |K| larger: top-p is a mass-weighted radix select over the row, and the draw is one more pass
//      that only runs Philox for tokens that could still beat the best score seen.
// Every threshold is a key, so "keep x >= tau" is an exact integer comparison and ties are kept.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "decodekit/rng.cuh"

namespace decodekit {
namespace sampling {

// One CTA per row: 32 warps keep enough 16-byte loads in flight to stream a 128K-entry row.
constexpr int kThreads = 1024;
constexpr int kNumWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// One candidate per thread, so scans and sorts over the candidate list are one element per thread.
constexpr int kCandidateCapacity = kThreads;
// 11-bit digits spread logits (which crowd into a few binades) over more bins than 8-bit digits do,
// which cuts shared-atomic contention, and need only 3 passes for fp32 keys.
constexpr int kDigitBits = 11;
constexpr int kNumBins = 1 << kDigitBits;
constexpr int kNoIndex = 0x7fffffff;
// Largest Gumbel noise -log(-log(u)) the RNG can produce: u <= 0.99999994 gives 16.6355.
constexpr float kMaxGumbelNoise = 16.64f;
constexpr int kElementwiseThreads = 256;

static_assert(kThreads % 32 == 0 && kNumWarps <= 32, "block reductions finish inside one warp");
static_assert((kThreads & (kThreads - 1)) == 0, "the candidate bitonic sort needs a power-of-two block");
static_assert(kNumBins % 32 == 0, "choose_digit splits the bins evenly over one warp");

// ------------------------------------------------------------------------------------------------
// Element types and orderable keys

template <typename T>
struct DtypeTraits;

template <>
struct DtypeTraits<float> {
  static constexpr int kBits = 32;
  static constexpr uint32_t kNegInfBits = 0xff800000u;
  static constexpr uint32_t kPosInfBits = 0x7f800000u;
  static __device__ __forceinline__ uint32_t to_bits(float v) { return __float_as_uint(v); }
  static __device__ __forceinline__ float from_bits(uint32_t b) { return __uint_as_float(b); }
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};

template <>
struct DtypeTraits<__half> {
  static constexpr int kBits = 16;
  static constexpr uint32_t kNegInfBits = 0xfc00u;
  static constexpr uint32_t kPosInfBits = 0x7c00u;
  static __device__ __forceinline__ uint32_t to_bits(__half v) { return __half_as_ushort(v); }
  static __device__ __forceinline__ __half from_bits(uint32_t b) {
    return __ushort_as_half(static_cast<unsigned short>(b));
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct DtypeTraits<__nv_bfloat16> {
  static constexpr int kBits = 16;
  static constexpr uint32_t kNegInfBits = 0xff80u;
  static constexpr uint32_t kPosInfBits = 0x7f80u;
  static __device__ __forceinline__ uint32_t to_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_bits(uint32_t b) {
    return __ushort_as_bfloat16(static_cast<unsigned short>(b));
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
struct KeyTraits {
  static constexpr int kBits = DtypeTraits<T>::kBits;
  static constexpr uint32_t kSign = 1u << (kBits - 1);
  static constexpr uint32_t kAllOnes = kSign | (kSign - 1u);
};

// Unsigned order of keys == numeric order of the values (16-bit dtypes use their own 16 bits, which
// order exactly like their float32 conversions). -0.0 maps to +0.0's key so equal values share a
// key; NaNs land outside [key(-inf), key(+inf)], which is how scan_row detects them.
template <typename T>
__host__ __device__ constexpr uint32_t ordered_key(uint32_t bits) {
  return bits == KeyTraits<T>::kSign ? KeyTraits<T>::kSign
         : (bits & KeyTraits<T>::kSign) ? (bits ^ KeyTraits<T>::kAllOnes)
                                        : (bits ^ KeyTraits<T>::kSign);
}

template <typename T>
struct SpecialKeys {
  static constexpr uint32_t kNegInf = ordered_key<T>(DtypeTraits<T>::kNegInfBits);
  static constexpr uint32_t kPosInf = ordered_key<T>(DtypeTraits<T>::kPosInfBits);
  static constexpr uint32_t kZero = KeyTraits<T>::kSign;
};

template <typename T>
__device__ __forceinline__ float key_to_float(uint32_t key) {
  using K = KeyTraits<T>;
  const uint32_t bits = (key & K::kSign) ? (key ^ K::kSign) : (key ^ K::kAllOnes);
  return DtypeTraits<T>::to_float(DtypeTraits<T>::from_bits(bits));
}

struct Element {
  float value;   // exact float32 conversion of the input element
  uint32_t key;  // ordered_key of its bits
};

template <typename T>
__device__ __forceinline__ Element decode_bits(uint32_t bits) {
  return {DtypeTraits<T>::to_float(DtypeTraits<T>::from_bits(bits)), ordered_key<T>(bits)};
}

// ------------------------------------------------------------------------------------------------
// Row traversal

template <typename T, typename Visit>
__device__ __forceinline__ void visit_single(const T* row, int index, bool active, Visit& visit) {
  const uint32_t bits = active ? DtypeTraits<T>::to_bits(row[index]) : 0u;
  visit(decode_bits<T>(bits), index, active);
}

template <typename T>
__device__ __forceinline__ uint32_t lane_bits(const uint4& packed, int j) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
  if constexpr (DtypeTraits<T>::kBits == 32) {
    return words[j];
  } else {
    return (words[j >> 1] >> ((j & 1) * 16)) & 0xffffu;  // little-endian: element 2i is the low half
  }
}

// Calls visit(element, index, active) for every element of the row with 16-byte loads. Every thread
// makes the same number of calls (inactive ones with active == false), so visitors may use warp
// collectives. Row starts are only element-aligned (b * V * sizeof(T)), so the elements before the
// first 16-byte boundary and the tail after the last full vector are visited one per thread.
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_element(const T* row, int vocab, Visit&& visit) {
  constexpr int kVec = 16 / sizeof(T);
  const int tid = threadIdx.x;
  const int misaligned = static_cast<int>((reinterpret_cast<uintptr_t>(row) & 15u) / sizeof(T));
  const int head = min(vocab, misaligned == 0 ? 0 : kVec - misaligned);
  visit_single(row, tid, tid < head, visit);

  const uint4* body = reinterpret_cast<const uint4*>(row + head);
  const int num_vecs = (vocab - head) / kVec;
  for (int first = 0; first < num_vecs; first += kThreads) {
    const int v = first + tid;
    const bool active = v < num_vecs;
    const uint4 packed = active ? body[v] : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      visit(decode_bits<T>(lane_bits<T>(packed, j)), head + v * kVec + j, active);
    }
  }

  const int tail = head + num_vecs * kVec;
  visit_single(row, tail + tid, tid < vocab - tail, visit);
}

// ------------------------------------------------------------------------------------------------
// Warp and block collectives (fixed reduction trees, so float results are deterministic)

__device__ __forceinline__ int lane_index() { return threadIdx.x & 31; }
__device__ __forceinline__ int warp_index() { return threadIdx.x >> 5; }

__device__ __forceinline__ float shfl_xor(float v, int mask) { return __shfl_xor_sync(kFullMask, v, mask); }
__device__ __forceinline__ int shfl_xor(int v, int mask) { return __shfl_xor_sync(kFullMask, v, mask); }
__device__ __forceinline__ uint32_t shfl_xor(uint32_t v, int mask) {
  return __shfl_xor_sync(kFullMask, v, mask);
}
__device__ __forceinline__ unsigned long long shfl_xor(unsigned long long v, int mask) {
  return __shfl_xor_sync(kFullMask, v, mask);
}

struct Sum {
  template <typename V>
  __device__ __forceinline__ V operator()(V a, V b) const {
    return a + b;
  }
};

template <typename V, typename Combine>
__device__ __forceinline__ V warp_all_reduce(V value, Combine combine) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) value = combine(value, shfl_xor(value, mask));
  return value;
}

// Every thread gets the combination of all threads' values. `combine` must be commutative.
template <typename V, typename Combine>
__device__ __forceinline__ V block_all_reduce(V value, Combine combine, V identity) {
  __shared__ V warp_partials[kNumWarps];
  __shared__ V total;
  value = warp_all_reduce(value, combine);
  if (lane_index() == 0) warp_partials[warp_index()] = value;
  __syncthreads();
  if (warp_index() == 0) {
    V partial = lane_index() < kNumWarps ? warp_partials[lane_index()] : identity;
    partial = warp_all_reduce(partial, combine);
    if (lane_index() == 0) total = partial;
  }
  __syncthreads();
  const V result = total;
  __syncthreads();  // the next reduction of this type reuses warp_partials and total
  return result;
}

// Inclusive prefix sum over threads in threadIdx order.
__device__ __forceinline__ float block_inclusive_sum(float value) {
  __shared__ float warp_offsets[kNumWarps];
  const int lane = lane_index();
#pragma unroll
  for (int delta = 1; delta < 32; delta <<= 1) {
    const float lower = __shfl_up_sync(kFullMask, value, delta);
    if (lane >= delta) value += lower;
  }
  if (lane == 31) warp_offsets[warp_index()] = value;
  __syncthreads();
  if (warp_index() == 0) {
    const float warp_total = lane < kNumWarps ? warp_offsets[lane] : 0.f;
    float inclusive = warp_total;
#pragma unroll
    for (int delta = 1; delta < 32; delta <<= 1) {
      const float lower = __shfl_up_sync(kFullMask, inclusive, delta);
      if (lane >= delta) inclusive += lower;
    }
    const float exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
    if (lane < kNumWarps) warp_offsets[lane] = lane == 0 ? 0.f : exclusive;
  }
  __syncthreads();
  value += warp_offsets[warp_index()];
  __syncthreads();  // warp_offsets is reused by the next scan
  return value;
}

template <typename V>
__device__ __forceinline__ V block_broadcast(V value, int source_thread) {
  __shared__ V slot;
  if (static_cast<int>(threadIdx.x) == source_thread) slot = value;
  __syncthreads();
  const V result = slot;
  __syncthreads();
  return result;
}

// ------------------------------------------------------------------------------------------------
// Pass 1: row statistics

struct RowStats {
  unsigned long long max_packed;  // (key << 32) | ~index: the largest key, lowest index among equals
  uint32_t min_key;
  int num_above_floor;

  __device__ __forceinline__ uint32_t max_key() const { return static_cast<uint32_t>(max_packed >> 32); }
  __device__ __forceinline__ int argmax() const { return static_cast<int>(~static_cast<uint32_t>(max_packed)); }
};

struct CombineRowStats {
  __device__ __forceinline__ RowStats operator()(const RowStats& a, const RowStats& b) const {
    return {a.max_packed > b.max_packed ? a.max_packed : b.max_packed, a.min_key < b.min_key ? a.min_key : b.min_key,
            a.num_above_floor + b.num_above_floor};
  }
};

__device__ __forceinline__ RowStats shfl_xor(const RowStats& s, int mask) {
  return {shfl_xor(s.max_packed, mask), shfl_xor(s.min_key, mask), shfl_xor(s.num_above_floor, mask)};
}

__device__ __forceinline__ unsigned long long pack_key_index(uint32_t key, int index) {
  return (static_cast<unsigned long long>(key) << 32) | static_cast<unsigned long long>(~static_cast<uint32_t>(index));
}

__device__ __forceinline__ void clear_counts(uint32_t* counts) {
  for (int b = threadIdx.x; b < kNumBins; b += kThreads) counts[b] = 0u;
}

// One pass: RowStats, and when top_digit_counts is given, the histogram of every key's top digit
// (the first radix-select pass of top-k rides along with the scan instead of re-reading the row).
template <typename T>
__device__ RowStats scan_row(const T* row, int vocab, uint32_t floor_key, uint32_t* top_digit_counts) {
  constexpr int kTopShift = DtypeTraits<T>::kBits - kDigitBits;
  if (top_digit_counts != nullptr) clear_counts(top_digit_counts);
  __syncthreads();
  const RowStats identity{0ull, 0xffffffffu, 0};
  RowStats local = identity;
  for_each_element(row, vocab, [&](const Element& e, int index, bool active) {
    if (!active) return;
    const unsigned long long packed = pack_key_index(e.key, index);
    local.max_packed = packed > local.max_packed ? packed : local.max_packed;
    local.min_key = e.key < local.min_key ? e.key : local.min_key;
    local.num_above_floor += e.key > floor_key ? 1 : 0;
    if (top_digit_counts != nullptr) atomicAdd(&top_digit_counts[e.key >> kTopShift], 1u);
  });
  return block_all_reduce(local, CombineRowStats{}, identity);  // its barriers also publish the histogram
}

template <typename T>
__device__ __forceinline__ bool has_nan(const RowStats& stats) {
  return stats.max_key() > SpecialKeys<T>::kPosInf || stats.min_key < SpecialKeys<T>::kNegInf;
}

// ------------------------------------------------------------------------------------------------
// Radix select over keys

struct RadixSmem {
  uint32_t counts[kNumBins];
  unsigned long long weights[kNumBins];  // fixed-point mass, top-p search only
};

template <typename W>
struct DigitChoice {
  uint32_t digit;
  W weight_above;  // weight of the bins above `digit` (inside the current bucket)
  uint32_t count;  // elements in bin `digit`
};

// Picks the lowest non-empty bin whose weight strictly above it still `fits` (fits must hold for
// small weights and fail from some point on). With weight = count and fits = (above < k) that is the
// bin holding the k-th largest element; with weight = mass it is the top-p boundary. One warp scans:
// lane l owns a contiguous run of bins, so the lowest qualifying bin is in the lowest lane that has one.
template <typename W, typename Fits>
__device__ DigitChoice<W> choose_digit(const uint32_t* counts, const W* weights, int num_bins, Fits fits) {
  __shared__ DigitChoice<W> chosen;
  if (warp_index() == 0) {
    const int lane = lane_index();
    const int per_lane = (num_bins + 31) / 32;
    const int first = lane * per_lane;
    const int last = min(first + per_lane, num_bins);
    W lane_weight = 0;
    for (int b = first; b < last; ++b) lane_weight += weights[b];
    W suffix = lane_weight;  // becomes the weight of this lane's bins and every higher lane's
#pragma unroll
    for (int delta = 1; delta < 32; delta <<= 1) {
      const W higher = __shfl_down_sync(kFullMask, suffix, delta);
      if (lane + delta < 32) suffix += higher;
    }
    W above = suffix - lane_weight;
    int found = -1;
    W found_above = 0;
    for (int b = last - 1; b >= first; --b) {
      if (counts[b] != 0u && fits(above)) {
        found = b;
        found_above = above;
      }
      above += weights[b];
    }
    const unsigned lanes_found = __ballot_sync(kFullMask, found >= 0);
    // lanes_found is never 0 when the caller's invariant holds; lane 0 then reports digit 0 so
    // that a broken invariant yields a wrong threshold, never an out-of-bounds access.
    const int winner = lanes_found != 0u ? __ffs(lanes_found) - 1 : 0;
    if (lane == winner) {
      chosen = {found >= 0 ? static_cast<uint32_t>(found) : 0u, found_above,
                found >= 0 ? counts[found] : 0u};
    }
  }
  __syncthreads();
  const DigitChoice<W> result = chosen;
  __syncthreads();
  return result;
}

// Digits from the top: for a pass covering key bits [shift, high), digit = (key >> shift) & mask.
__device__ __forceinline__ int digit_shift(int high) { return high > kDigitBits ? high - kDigitBits : 0; }
__device__ __forceinline__ uint32_t digit_mask(int high) { return (1u << (high - digit_shift(high))) - 1u; }

struct KthKey {
  uint32_t key;        // key of the k-th largest element, duplicates counted
  int count_at_least;  // elements with key >= it
};

// Requires scan_row to have filled smem.counts with the top-digit histogram of the whole row.
template <typename T>
__device__ KthKey kth_largest_key(const T* row, int vocab, int k, RadixSmem& smem) {
  constexpr int kBits = DtypeTraits<T>::kBits;
  uint32_t prefix = 0u, prefix_mask = 0u;
  uint32_t rank = static_cast<uint32_t>(k);  // rank of the target inside the current bucket
  uint32_t count_above = 0u;                 // elements known to be strictly larger than the target
  uint32_t count_equal = 0u;
  for (int high = kBits; high > 0; high -= kDigitBits) {
    const int shift = digit_shift(high);
    const uint32_t mask = digit_mask(high);
    if (high != kBits) {
      clear_counts(smem.counts);
      __syncthreads();
      for_each_element(row, vocab, [&](const Element& e, int, bool active) {
        if (active && (e.key & prefix_mask) == prefix) atomicAdd(&smem.counts[(e.key >> shift) & mask], 1u);
      });
      __syncthreads();
    }
    const DigitChoice<uint32_t> choice = choose_digit(smem.counts, smem.counts, static_cast<int>(mask) + 1,
                                                      [rank](uint32_t above) { return above < rank; });
    rank -= choice.weight_above;
    count_above += choice.weight_above;
    count_equal = choice.count;
    prefix |= choice.digit << shift;
    prefix_mask |= mask << shift;
  }
  return {prefix, static_cast<int>(count_above + count_equal)};
}

// Masses are <= 1 (relative to the row maximum), so 32 fractional bits keep V * 2^32 < 2^64 for any
// int32 vocabulary, and integer sums make the search independent of atomic ordering (deterministic).
__device__ __forceinline__ unsigned long long mass_to_fixed(float mass) {
  return mass > 0.f ? __float2ull_rn(fminf(mass, 1.f) * 4294967296.f) : 0ull;
}

// Top-p without sorting: the smallest key tau among {key >= lo_key} whose strictly-larger mass is
// < top_p * total, found digit by digit from mass-weighted histograms. Returns max_key if the row has
// no mass at all (only when x / temperature overflows float32).
template <typename T, typename MassFn>
__device__ uint32_t top_p_key_streaming(const T* row, int vocab, uint32_t lo_key, float top_p, MassFn mass_of,
                                        uint32_t max_key, RadixSmem& smem) {
  constexpr int kBits = DtypeTraits<T>::kBits;
  uint32_t prefix = 0u, prefix_mask = 0u;
  unsigned long long mass_above = 0ull;  // mass of kept-range elements above the current bucket
  double budget = 0.0;
  for (int high = kBits; high > 0; high -= kDigitBits) {
    const int shift = digit_shift(high);
    const uint32_t mask = digit_mask(high);
    clear_counts(smem.counts);
    for (int b = threadIdx.x; b < kNumBins; b += kThreads) smem.weights[b] = 0ull;
    __syncthreads();
    for_each_element(row, vocab, [&](const Element& e, int, bool active) {
      if (!active || e.key < lo_key || (e.key & prefix_mask) != prefix) return;
      const uint32_t bin = (e.key >> shift) & mask;
      atomicAdd(&smem.counts[bin], 1u);
      const unsigned long long weight = mass_to_fixed(mass_of(e.value));
      if (weight != 0ull) atomicAdd(&smem.weights[bin], weight);
    });
    __syncthreads();
    if (high == kBits) {
      unsigned long long local = 0ull;
      for (int b = threadIdx.x; b < kNumBins; b += kThreads) local += smem.weights[b];
      const unsigned long long total = block_all_reduce(local, Sum{}, 0ull);
      if (total == 0ull) return max_key;
      budget = static_cast<double>(top_p) * static_cast<double>(total);
    }
    const DigitChoice<unsigned long long> choice =
        choose_digit(smem.counts, smem.weights, static_cast<int>(mask) + 1,
                     [mass_above, budget](unsigned long long above) {
                       return static_cast<double>(mass_above + above) < budget;
                     });
    mass_above += choice.weight_above;
    prefix |= choice.digit << shift;
    prefix_mask |= mask << shift;
  }
  return prefix;
}

// ------------------------------------------------------------------------------------------------
// Top-k range and candidate lists

struct KeptRange {
  uint32_t lo_key;  // the top-k set is {key >= lo_key} (within the valid keys)
  int count;
};

// Reference: keep = (x > floor) & (x >= k-th largest x), where the k-th largest counts every entry
// (-inf and zeros included) and top-k is off for k == 0 or k >= V.
template <typename T>
__device__ KeptRange top_k_range(const T* row, int vocab, int k, bool top_k_on, uint32_t floor_key,
                                 const RowStats& stats, RadixSmem& smem) {
  const KeptRange above_floor{floor_key + 1u, stats.num_above_floor};
  if (!top_k_on) return above_floor;
  const KthKey kth = kth_largest_key(row, vocab, k, smem);
  return kth.key > floor_key ? KeptRange{kth.key, kth.count_at_least} : above_floor;
}

struct CandidateSmem {
  uint32_t keys[kCandidateCapacity];
  int indices[kCandidateCapacity];
  int count;
};

// Bitonic sort, one element per thread: descending key, ascending index among equal keys. That is a
// total order, so the sorted list (and every sum taken over it) does not depend on which slots the
// gather's atomics handed out.
__device__ __forceinline__ void sort_candidates_descending(CandidateSmem& cands, int n) {
  int size_pow2 = 1;
  while (size_pow2 < n) size_pow2 <<= 1;
  const int i = threadIdx.x;
  if (i >= n && i < size_pow2) {
    cands.keys[i] = 0u;
    cands.indices[i] = kNoIndex;
  }
  __syncthreads();
  for (int size = 2; size <= size_pow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      const int j = i ^ stride;
      if (j > i && j < size_pow2) {
        const uint32_t key_i = cands.keys[i], key_j = cands.keys[j];
        const int index_i = cands.indices[i], index_j = cands.indices[j];
        const bool i_first = key_i > key_j || (key_i == key_j && index_i < index_j);
        const bool descending_run = (i & size) == 0;
        if (i_first != descending_run) {
          cands.keys[i] = key_j;
          cands.keys[j] = key_i;
          cands.indices[i] = index_j;
          cands.indices[j] = index_i;
        }
      }
      __syncthreads();
    }
  }
}

// Collects {key >= lo_key} (the caller knows there are at most kCandidateCapacity) and sorts them.
template <typename T>
__device__ int gather_sorted_candidates(const T* row, int vocab, uint32_t lo_key, CandidateSmem& cands) {
  if (threadIdx.x == 0) cands.count = 0;
  __syncthreads();
  const int lane = lane_index();
  for_each_element(row, vocab, [&](const Element& e, int index, bool active) {
    const bool take = active && e.key >= lo_key;
    const unsigned takers = __ballot_sync(kFullMask, take);
    if (takers == 0u) return;  // warp-uniform
    const int leader = __ffs(takers) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(&cands.count, __popc(takers));
    base = __shfl_sync(kFullMask, base, leader);
    if (take) {
      const int slot = base + __popc(takers & ((1u << lane) - 1u));
      if (slot < kCandidateCapacity) {
        cands.keys[slot] = e.key;
        cands.indices[slot] = index;
      }
    }
  });
  __syncthreads();
  const int n = min(cands.count, kCandidateCapacity);
  sort_candidates_descending(cands, n);
  return n;
}

// Top-p over the sorted list, as the reference does it: position t is below the budget iff
// (inclusive cumsum - own mass) < top_p * total; tau is the key at the last such position (at least
// the first), and the caller keeps key >= tau, which also keeps every tie of that key.
// `mass` is this thread's candidate mass (0 for threads >= n).
__device__ __forceinline__ uint32_t top_p_key_sorted(const CandidateSmem& cands, int n, float mass, float top_p) {
  const float inclusive = block_inclusive_sum(mass);
  const float total = block_broadcast(inclusive, n - 1);
  const bool below = static_cast<int>(threadIdx.x) < n && inclusive - mass < top_p * total;
  const int num_below = block_all_reduce(below ? 1 : 0, Sum{}, 0);
  return cands.keys[max(num_below, 1) - 1];
}

// exp(z - z_max) with z = x / temperature (true division, as the reference): the unnormalised
// probability after temperature. Largest value 1 (the row maximum).
struct TemperedMass {
  float temperature;
  float z_max;
  __device__ __forceinline__ float operator()(float x) const { return expf(x / temperature - z_max); }
};

// p / p_max: top-p is scale-invariant, and a relative mass in [0, 1] fits the fixed-point histogram.
struct RelativeProb {
  float p_max;
  __device__ __forceinline__ float operator()(float p) const { return p / p_max; }
};

// Top-p threshold key over the range {key >= range.lo_key} for any number of kept tokens.
template <typename T, typename MassFn>
__device__ uint32_t top_p_key(const T* row, int vocab, KeptRange range, float top_p, MassFn mass_of,
                              uint32_t max_key, RadixSmem& radix, CandidateSmem& cands) {
  if (range.count <= kCandidateCapacity) {
    const int n = gather_sorted_candidates(row, vocab, range.lo_key, cands);
    const bool present = static_cast<int>(threadIdx.x) < n;
    const float mass = present ? mass_of(key_to_float<T>(cands.keys[threadIdx.x])) : 0.f;
    return top_p_key_sorted(cands, n, mass, top_p);
  }
  return top_p_key_streaming(row, vocab, range.lo_key, top_p, mass_of, max_key, radix);
}

// ------------------------------------------------------------------------------------------------
// Gumbel-max draw

struct SampleParams {
  float temperature;
  float top_p;
  float min_p;
  uint64_t seed;
  uint64_t offset;
};

struct Draw {
  float score;       // z - log(-log(u)) of the best kept token so far
  int index;         // its vocabulary index (kNoIndex: nothing kept)
  float z;           // its tempered logit
  float kept_mass;   // sum of exp(z - z_max) over the kept tokens seen
};

__device__ __forceinline__ Draw no_draw() { return {-INFINITY, kNoIndex, 0.f, 0.f}; }

struct CombineDraws {
  __device__ __forceinline__ Draw operator()(const Draw& a, const Draw& b) const {
    const bool a_wins = a.score > b.score || (a.score == b.score && a.index < b.index);
    const float kept_mass = a.kept_mass + b.kept_mass;
    return a_wins ? Draw{a.score, a.index, a.z, kept_mass} : Draw{b.score, b.index, b.z, kept_mass};
  }
};

__device__ __forceinline__ Draw shfl_xor(const Draw& d, int mask) {
  return {shfl_xor(d.score, mask), shfl_xor(d.index, mask), shfl_xor(d.z, mask), shfl_xor(d.kept_mass, mask)};
}

// u == 0 gives -inf, so such a token only wins when every kept token drew 0 (then the lowest index).
__device__ __forceinline__ float gumbel_score(float z, const SampleParams& params, int index) {
  const float u = philox_uniform(params.seed, params.offset, kStreamSampleToken, static_cast<uint32_t>(index));
  return z - logf(-logf(u));
}

template <typename T>
__device__ Draw draw_from_candidates(const T* row, int vocab, uint32_t lo_key, const SampleParams& params,
                                     float z_max, CandidateSmem& cands) {
  const int n = gather_sorted_candidates(row, vocab, lo_key, cands);
  const int t = threadIdx.x;
  const bool present = t < n;
  const uint32_t key = present ? cands.keys[t] : 0u;
  const float z = present ? key_to_float<T>(key) / params.temperature : 0.f;
  const float mass = present ? expf(z - z_max) : 0.f;
  const uint32_t tau = params.top_p < 1.f ? top_p_key_sorted(cands, n, mass, params.top_p) : lo_key;
  Draw mine = no_draw();
  if (present && key >= tau && mass >= params.min_p) {
    const int index = cands.indices[t];
    mine = {gumbel_score(z, params, index), index, z, mass};
  }
  return block_all_reduce(mine, CombineDraws{}, no_draw());
}

// One pass over {key >= tau} with the min-p test. Philox (~100 instructions) dominates plain sampling,
// so each thread starts from the row maximum's score and skips tokens with z + kMaxGumbelNoise below
// its best: rounding is monotone, so such a token's score is strictly below and cannot win or tie.
template <typename T>
__device__ Draw draw_streaming(const T* row, int vocab, uint32_t tau, int argmax, const SampleParams& params,
                               float z_max) {
  Draw best = no_draw();
  // The maximum passes every filter (mass 1 >= min_p); the test only fails when z_max is not finite.
  if (expf(z_max - z_max) >= params.min_p) best = {gumbel_score(z_max, params, argmax), argmax, z_max, 0.f};
  float kept_mass = 0.f;
  for_each_element(row, vocab, [&](const Element& e, int index, bool active) {
    if (!active || e.key < tau) return;
    const float z = e.value / params.temperature;
    const float mass = expf(z - z_max);
    if (!(mass >= params.min_p)) return;
    kept_mass += mass;
    if (z + kMaxGumbelNoise < best.score) return;
    const float score = gumbel_score(z, params, index);
    if (score > best.score || (score == best.score && index < best.index)) best = {score, index, z, 0.f};
  });
  best.kept_mass = kept_mass;
  return block_all_reduce(best, CombineDraws{}, no_draw());
}

// ------------------------------------------------------------------------------------------------
// Row writers

template <typename T>
__device__ __forceinline__ void fill_row(T* out, int vocab, T value) {
  for (int i = threadIdx.x; i < vocab; i += kThreads) out[i] = value;
}

// out = x where keep_min <= key <= keep_max, else -inf. Reads then writes each element from one
// thread, so out may alias row.
template <typename T>
__device__ void write_masked_row(const T* row, T* out, int vocab, uint32_t keep_min, uint32_t keep_max) {
  const T neg_inf = DtypeTraits<T>::from_bits(DtypeTraits<T>::kNegInfBits);
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const T raw = row[i];
    const uint32_t key = ordered_key<T>(DtypeTraits<T>::to_bits(raw));
    out[i] = (key >= keep_min && key <= keep_max) ? raw : neg_inf;
  }
}

template <typename T>
__device__ void write_renormalized_row(const T* row, T* out, int vocab, uint32_t tau, float kept_sum) {
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const T raw = row[i];
    const uint32_t key = ordered_key<T>(DtypeTraits<T>::to_bits(raw));
    out[i] = DtypeTraits<T>::from_float(key >= tau ? DtypeTraits<T>::to_float(raw) / kept_sum : 0.f);
  }
}

template <typename T>
__device__ float sum_at_or_above(const T* row, int vocab, uint32_t tau) {
  float local = 0.f;
  for_each_element(row, vocab, [&](const Element& e, int, bool active) {
    if (active && e.key >= tau) local += e.value;
  });
  return block_all_reduce(local, Sum{}, 0.f);
}

__device__ __forceinline__ float quiet_nan() { return __uint_as_float(0x7fc00000u); }

// ------------------------------------------------------------------------------------------------
// Kernels

// grid = (B): one CTA per row.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    sample_kernel(const T* logits, int vocab, const float* temperature, const int32_t* top_k, const float* top_p,
                  const float* min_p, const int64_t* seed, const int64_t* offset, int64_t* tokens_out,
                  float* logprobs_out, bool* valid_out) {
  using Keys = SpecialKeys<T>;
  __shared__ RadixSmem radix;
  __shared__ CandidateSmem cands;
  const int b = blockIdx.x;
  const T* row = logits + static_cast<int64_t>(b) * vocab;
  const float temp = temperature[b];
  const int k = top_k[b];
  const bool greedy = temp == 0.f;
  const bool top_k_on = !greedy && k > 0 && k < vocab;

  const RowStats stats = scan_row(row, vocab, Keys::kNegInf, top_k_on ? radix.counts : nullptr);
  const uint32_t max_key = stats.max_key();
  // NaN or +inf anywhere, or nothing above -inf.
  const bool invalid = has_nan<T>(stats) || max_key == Keys::kPosInf || max_key == Keys::kNegInf;
  if (invalid || greedy) {
    if (threadIdx.x == 0) {
      tokens_out[b] = invalid ? -1 : stats.argmax();
      logprobs_out[b] = invalid ? quiet_nan() : 0.f;
      valid_out[b] = !invalid;
    }
    return;
  }

  const SampleParams params{temp, top_p[b], min_p[b], static_cast<uint64_t>(seed[b]),
                            static_cast<uint64_t>(offset[b])};
  const float z_max = key_to_float<T>(max_key) / temp;
  const KeptRange range = top_k_range(row, vocab, k, top_k_on, Keys::kNegInf, stats, radix);
  Draw draw;
  if (range.count <= kCandidateCapacity) {
    draw = draw_from_candidates(row, vocab, range.lo_key, params, z_max, cands);
  } else {
    const uint32_t tau =
        params.top_p < 1.f
            ? top_p_key_streaming(row, vocab, range.lo_key, params.top_p, TemperedMass{temp, z_max}, max_key, radix)
            : range.lo_key;
    draw = draw_streaming(row, vocab, tau, stats.argmax(), params, z_max);
  }

  if (threadIdx.x == 0) {
    // Nothing kept only happens when x / temperature overflows float32 (masses become NaN).
    const bool drawn = draw.index != kNoIndex;
    tokens_out[b] = drawn ? draw.index : -1;
    // As torch.logsumexp: log(sum(exp(z - z_max))) + z_max.
    logprobs_out[b] = drawn ? draw.z - (logf(draw.kept_mass) + z_max) : quiet_nan();
    valid_out[b] = drawn;
  }
}

// grid = (B, chunks). out may alias logits.
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
    apply_penalties_kernel(const T* logits, const int32_t* token_counts, int vocab, const float* repetition,
                           const float* frequency, const float* presence, T* out) {
  const int b = blockIdx.x;
  const float r = repetition[b], f = frequency[b], p = presence[b];
  const int64_t row_start = static_cast<int64_t>(b) * vocab;
  for (int i = blockIdx.y * kElementwiseThreads + threadIdx.x; i < vocab; i += gridDim.y * kElementwiseThreads) {
    const T raw = logits[row_start + i];
    const int32_t count = token_counts[row_start + i];
    T result = raw;
    if (count > 0) {
      const float x = DtypeTraits<T>::to_float(raw);
      const float scaled = x > 0.f ? x / r : x * r;
      result = DtypeTraits<T>::from_float(scaled - f * static_cast<float>(count) - p);
    }
    out[row_start + i] = result;
  }
}

// grid = (B). Kept set = top-k -> top-p at temperature 1; others -inf; NaN rows all NaN.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    mask_logits_kernel(const T* logits, int vocab, const int32_t* top_k, const float* top_p, T* out) {
  using Keys = SpecialKeys<T>;
  __shared__ RadixSmem radix;
  __shared__ CandidateSmem cands;
  const int b = blockIdx.x;
  const T* row = logits + static_cast<int64_t>(b) * vocab;
  T* out_row = out + static_cast<int64_t>(b) * vocab;
  const int k = top_k[b];
  const float p = top_p[b];
  const bool top_k_on = k > 0 && k < vocab;

  const RowStats stats = scan_row(row, vocab, Keys::kNegInf, top_k_on ? radix.counts : nullptr);
  if (has_nan<T>(stats)) {
    fill_row(out_row, vocab, DtypeTraits<T>::from_float(quiet_nan()));
    return;
  }
  const uint32_t max_key = stats.max_key();
  // An all -inf row has an empty range (count 0, lo above every key) and comes out all -inf.
  const KeptRange range = top_k_range(row, vocab, k, top_k_on, Keys::kNegInf, stats, radix);
  uint32_t keep_min = range.lo_key;
  uint32_t keep_max = Keys::kPosInf;
  if (max_key == Keys::kPosInf) {
    // The reference's mass exp(x - x_max) is exp(inf - inf) = NaN for +inf logits: that fails its
    // min-p test (NaN >= 0 is false), and with top-p on the NaN total leaves tau at +inf, so the row
    // keeps nothing. Without top-p every finite top-k logit survives.
    keep_max = Keys::kPosInf - 1u;
    if (p < 1.f) keep_min = Keys::kPosInf;
  } else if (p < 1.f && range.count > 0) {
    keep_min = top_p_key(row, vocab, range, p, TemperedMass{1.f, key_to_float<T>(max_key)}, max_key, radix, cands);
  }
  write_masked_row(row, out_row, vocab, keep_min, keep_max);
}

// grid = (B). Ranking by p itself; kept = p > 0, top-k, then top-p; out = p / sum(kept p), 0 elsewhere.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    top_k_top_p_renorm_kernel(const T* probs, int vocab, const int32_t* top_k, const float* top_p, T* out) {
  using Keys = SpecialKeys<T>;
  __shared__ RadixSmem radix;
  __shared__ CandidateSmem cands;
  const int b = blockIdx.x;
  const T* row = probs + static_cast<int64_t>(b) * vocab;
  T* out_row = out + static_cast<int64_t>(b) * vocab;
  const int k = top_k[b];
  const float p = top_p[b];
  const bool top_k_on = k > 0 && k < vocab;

  const RowStats stats = scan_row(row, vocab, Keys::kZero, top_k_on ? radix.counts : nullptr);
  const uint32_t max_key = stats.max_key();
  // NaN rows are all NaN; with no positive entry the reference divides 0 by a zero sum (NaN too).
  if (has_nan<T>(stats) || stats.num_above_floor == 0) {
    fill_row(out_row, vocab, DtypeTraits<T>::from_float(quiet_nan()));
    return;
  }
  if (max_key == Keys::kPosInf) {
    // The kept sum is +inf: +inf / inf = NaN, and every finite kept or dropped entry becomes 0.
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const uint32_t key = ordered_key<T>(DtypeTraits<T>::to_bits(row[i]));
      out_row[i] = DtypeTraits<T>::from_float(key == Keys::kPosInf ? quiet_nan() : 0.f);
    }
    return;
  }

  const KeptRange range = top_k_range(row, vocab, k, top_k_on, Keys::kZero, stats, radix);
  const RelativeProb mass_of{key_to_float<T>(max_key)};
  uint32_t tau = range.lo_key;
  float kept_sum;
  if (range.count <= kCandidateCapacity) {
    const int n = gather_sorted_candidates(row, vocab, range.lo_key, cands);
    const bool present = static_cast<int>(threadIdx.x) < n;
    const uint32_t key = present ? cands.keys[threadIdx.x] : 0u;
    const float prob = present ? key_to_float<T>(key) : 0.f;
    if (p < 1.f) tau = top_p_key_sorted(cands, n, present ? mass_of(prob) : 0.f, p);
    kept_sum = block_all_reduce(present && key >= tau ? prob : 0.f, Sum{}, 0.f);
  } else {
    if (p < 1.f) tau = top_p_key_streaming(row, vocab, range.lo_key, p, mass_of, max_key, radix);
    kept_sum = sum_at_or_above(row, vocab, tau);
  }
  write_renormalized_row(row, out_row, vocab, tau, kept_sum);
}

// grid = (B, chunks): out[b, i] = uniform(seed[b], offset[b], stream, counter i). A template (on the
// output type, float) like every kernel here, so several translation units may include this header.
template <typename Out>
__global__ void __launch_bounds__(kElementwiseThreads)
    philox_uniform_kernel(const int64_t* seed, const int64_t* offset, uint32_t stream, int n, Out* out) {
  const int b = blockIdx.x;
  const uint64_t row_seed = static_cast<uint64_t>(seed[b]);
  const uint64_t row_offset = static_cast<uint64_t>(offset[b]);
  Out* out_row = out + static_cast<int64_t>(b) * n;
  for (int i = blockIdx.y * kElementwiseThreads + threadIdx.x; i < n; i += gridDim.y * kElementwiseThreads) {
    out_row[i] = philox_uniform(row_seed, row_offset, stream, static_cast<uint32_t>(i));
  }
}

}  // namespace sampling
}  // namespace decodekit
