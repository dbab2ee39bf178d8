// CPU kernels of the `paged_kv` op family (decodekit._C); the spec is decodekit/reference/paged_kv.py
// (same raw-function contract on every backend).
//
// The Python ops layer has checked shapes, dtypes and contiguity and allocated the outputs. Index
// VALUES are not trusted (the value checks can be switched off on the hot path): every function
// skips out-of-range slots, block ids, rows and mask entries instead of reading or writing outside
// its tensors. They return nothing and write their outputs in place.
//
// Cache layout NHD: k_cache, v_cache [NB, BS, Hkv, D]; dtype float32, float16 or bfloat16 (the
// same for every float tensor of a call).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace decodekit::cpu {

// k, v [T, Hkv, D]; k_cache, v_cache [NB, BS, Hkv, D]; slot_mapping int64 [T]. Token t is written
// to slot slot_mapping[t] (block slot / BS, offset slot % BS) when 0 <= slot < NB * BS.
void kv_append(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
               const at::Tensor& v_cache, const at::Tensor& slot_mapping);

// k_cache, v_cache [L, NB, BS, Hkv, D]; src, dst int32 [P]: in every layer block dst[p] becomes a
// copy of block src[p]; pairs with an id outside [0, NB) are skipped.
void kv_copy_blocks(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& src,
                    const at::Tensor& dst);

// q [T, Hq, D]; k_cache, v_cache [NB, BS, Hkv, D]; block_table int32 [B, MB]; seq_lens int32 [B];
// cu_seqlens_q int32 [B + 1]; mask_mode 0 causal / 1 full / 2 custom; scale: softmax scale;
// custom_mask uint8 (or bool) flat and mask_indptr int64 [B + 1] (both empty unless mask_mode is
// 2); out [T, Hq, D] of q's dtype. Rows that belong to no request are left untouched.
void paged_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_table, const at::Tensor& seq_lens,
                     const at::Tensor& cu_seqlens_q, int64_t mask_mode, double scale,
                     const at::Tensor& custom_mask, const at::Tensor& mask_indptr,
                     const at::Tensor& out);

}  // namespace decodekit::cpu
