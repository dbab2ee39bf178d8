// Torch bindings of decodekit._cuda: the only translation unit that sees torch headers. Each op checks
// tensor metadata on the host (cheap, no device sync), selects the tensors' device, and launches on the
// current stream. The Python ops layer has already validated values and allocated the outputs.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdint>
#include <limits>

#include "paged_kv_launch.h"
#include "sampling_launch.h"

namespace {

namespace dks = decodekit::sampling;

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "decodekit._cuda.", op, ": kernel launch failed: ", cudaGetErrorString(status));
}

// [B, V] contiguous CUDA matrix of float32 / float16 / bfloat16 whose sizes fit the kernels' int indexing.
dks::DType check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [B, V], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.size(0) <= std::numeric_limits<int32_t>::max() && t.size(1) <= dks::kMaxColumns, name,
              " is too large: at most 2^31 - 1 rows and 2^30 columns, got shape ", t.sizes());
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", type);
  return type == at::kFloat ? dks::DType::kFloat32 : type == at::kHalf ? dks::DType::kFloat16 : dks::DType::kBFloat16;
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& like, at::ScalarType dtype,
                at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void sample(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
            const at::Tensor& min_p, const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& tokens_out,
            const at::Tensor& logprobs_out, const at::Tensor& valid_out) {
  const dks::DType dtype = check_matrix(logits, "logits");
  const int64_t batch = logits.size(0);
  check_like(temperature, "temperature", logits, at::kFloat, {batch});
  check_like(top_k, "top_k", logits, at::kInt, {batch});
  check_like(top_p, "top_p", logits, at::kFloat, {batch});
  check_like(min_p, "min_p", logits, at::kFloat, {batch});
  check_like(seed, "seed", logits, at::kLong, {batch});
  check_like(offset, "offset", logits, at::kLong, {batch});
  check_like(tokens_out, "tokens_out", logits, at::kLong, {batch});
  check_like(logprobs_out, "logprobs_out", logits, at::kFloat, {batch});
  check_like(valid_out, "valid_out", logits, at::kBool, {batch});
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(dks::launch_sample(logits.data_ptr(), dtype, batch, logits.size(1), temperature.data_ptr<float>(),
                                  top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(), min_p.data_ptr<float>(),
                                  seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(), tokens_out.data_ptr<int64_t>(),
                                  logprobs_out.data_ptr<float>(), valid_out.data_ptr<bool>(),
                                  at::cuda::getCurrentCUDAStream()),
               "sample");
}

void apply_penalties(const at::Tensor& logits, const at::Tensor& token_counts, const at::Tensor& repetition,
                     const at::Tensor& frequency, const at::Tensor& presence, const at::Tensor& out) {
  const dks::DType dtype = check_matrix(logits, "logits");
  const int64_t batch = logits.size(0);
  check_like(token_counts, "token_counts", logits, at::kInt, logits.sizes());
  check_like(repetition, "repetition", logits, at::kFloat, {batch});
  check_like(frequency, "frequency", logits, at::kFloat, {batch});
  check_like(presence, "presence", logits, at::kFloat, {batch});
  check_like(out, "out", logits, logits.scalar_type(), logits.sizes());
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(dks::launch_apply_penalties(logits.data_ptr(), dtype, batch, logits.size(1),
                                           token_counts.data_ptr<int32_t>(), repetition.data_ptr<float>(),
                                           frequency.data_ptr<float>(), presence.data_ptr<float>(), out.data_ptr(),
                                           at::cuda::getCurrentCUDAStream()),
               "apply_penalties");
}

void mask_logits(const at::Tensor& logits, const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& out) {
  const dks::DType dtype = check_matrix(logits, "logits");
  const int64_t batch = logits.size(0);
  check_like(top_k, "top_k", logits, at::kInt, {batch});
  check_like(top_p, "top_p", logits, at::kFloat, {batch});
  check_like(out, "out", logits, logits.scalar_type(), logits.sizes());
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(dks::launch_mask_logits(logits.data_ptr(), dtype, batch, logits.size(1), top_k.data_ptr<int32_t>(),
                                       top_p.data_ptr<float>(), out.data_ptr(), at::cuda::getCurrentCUDAStream()),
               "mask_logits");
}

void top_k_top_p_renorm(const at::Tensor& probs, const at::Tensor& top_k, const at::Tensor& top_p,
                        const at::Tensor& out) {
  const dks::DType dtype = check_matrix(probs, "probs");
  const int64_t batch = probs.size(0);
  check_like(top_k, "top_k", probs, at::kInt, {batch});
  check_like(top_p, "top_p", probs, at::kFloat, {batch});
  check_like(out, "out", probs, probs.scalar_type(), probs.sizes());
  const c10::cuda::CUDAGuard guard(probs.device());
  check_launch(dks::launch_top_k_top_p_renorm(probs.data_ptr(), dtype, batch, probs.size(1),
                                              top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(), out.data_ptr(),
                                              at::cuda::getCurrentCUDAStream()),
               "top_k_top_p_renorm");
}

void philox_uniform(const at::Tensor& seed, const at::Tensor& offset, int64_t stream, const at::Tensor& out) {
  TORCH_CHECK(seed.is_cuda(), "seed must be a CUDA tensor, got device ", seed.device());
  TORCH_CHECK(seed.dim() == 1, "seed must be 1-D [B], got shape ", seed.sizes());
  TORCH_CHECK(stream >= 0 && stream <= std::numeric_limits<uint32_t>::max(),
              "stream must be a uint32 stream id, got ", stream);
  const int64_t batch = seed.size(0);
  check_like(seed, "seed", seed, at::kLong, {batch});
  check_like(offset, "offset", seed, at::kLong, {batch});
  TORCH_CHECK(out.dim() == 2 && out.size(0) == batch, "out must have shape [B, n] with B = ", batch, ", got ",
              out.sizes());
  TORCH_CHECK(batch <= std::numeric_limits<int32_t>::max() && out.size(1) <= dks::kMaxColumns,
              "out is too large: at most 2^31 - 1 rows and 2^30 columns, got shape ", out.sizes());
  check_like(out, "out", seed, at::kFloat, out.sizes());
  const c10::cuda::CUDAGuard guard(seed.device());
  check_launch(dks::launch_philox_uniform(seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(),
                                          static_cast<uint32_t>(stream), batch, out.size(1), out.data_ptr<float>(),
                                          at::cuda::getCurrentCUDAStream()),
               "philox_uniform");
}


// ------------------------------------------------------------------------------------------------
// paged_kv

namespace dkp = decodekit::paged_kv;

dkp::DType kv_dtype(const at::Tensor& t, const char* name) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", type);
  return type == at::kFloat ? dkp::DType::kFloat32 : type == at::kHalf ? dkp::DType::kFloat16 : dkp::DType::kBFloat16;
}

// A contiguous CUDA tensor on `like`'s device with `dims` dimensions and the given dtype.
void check_kv(const at::Tensor& t, const char* name, const at::Tensor& like, at::ScalarType dtype, int64_t dims) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void kv_append(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache, const at::Tensor& v_cache,
               const at::Tensor& slot_mapping) {
  TORCH_CHECK(k_cache.is_cuda(), "k_cache must be a CUDA tensor, got device ", k_cache.device());
  kv_dtype(k_cache, "k_cache");
  const at::ScalarType dtype = k_cache.scalar_type();
  check_kv(k_cache, "k_cache", k_cache, dtype, 4);
  check_kv(v_cache, "v_cache", k_cache, dtype, 4);
  check_kv(k, "k", k_cache, dtype, 3);
  check_kv(v, "v", k_cache, dtype, 3);
  check_kv(slot_mapping, "slot_mapping", k_cache, at::kLong, 1);
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(), ", got ",
              v_cache.sizes());
  const int64_t tokens = k.size(0);
  TORCH_CHECK(k.size(1) == k_cache.size(2) && k.size(2) == k_cache.size(3), "k must be [T, Hkv, D] = [T, ",
              k_cache.size(2), ", ", k_cache.size(3), "], got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(slot_mapping.size(0) == tokens, "slot_mapping must be [T] with T = ", tokens, ", got ",
              slot_mapping.sizes());
  const c10::cuda::CUDAGuard guard(k_cache.device());
  check_launch(dkp::launch_kv_append(k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                     slot_mapping.data_ptr<int64_t>(), tokens, k_cache.size(0) * k_cache.size(1),
                                     k_cache.size(2) * k_cache.size(3) * k_cache.element_size(),
                                     at::cuda::getCurrentCUDAStream()),
               "kv_append");
}

void kv_copy_blocks(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& src,
                    const at::Tensor& dst) {
  TORCH_CHECK(k_cache.is_cuda(), "k_cache must be a CUDA tensor, got device ", k_cache.device());
  kv_dtype(k_cache, "k_cache");
  check_kv(k_cache, "k_cache", k_cache, k_cache.scalar_type(), 5);
  check_kv(v_cache, "v_cache", k_cache, k_cache.scalar_type(), 5);
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(), ", got ",
              v_cache.sizes());
  check_kv(src, "src", k_cache, at::kInt, 1);
  check_kv(dst, "dst", k_cache, at::kInt, 1);
  TORCH_CHECK(src.size(0) == dst.size(0), "src and dst must have the same length, got ", src.size(0), " and ",
              dst.size(0));
  const c10::cuda::CUDAGuard guard(k_cache.device());
  check_launch(dkp::launch_kv_copy_blocks(k_cache.data_ptr(), v_cache.data_ptr(), src.data_ptr<int32_t>(),
                                          dst.data_ptr<int32_t>(), src.size(0), k_cache.size(0), k_cache.size(1),
                                          k_cache.size(2) * k_cache.size(3) * k_cache.size(4) * k_cache.element_size(),
                                          at::cuda::getCurrentCUDAStream()),
               "kv_copy_blocks");
}

void paged_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_table, const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q,
                     int64_t mask_mode, double scale, const at::Tensor& custom_mask, const at::Tensor& mask_indptr,
                     const at::Tensor& out) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor, got device ", q.device());
  const dkp::DType dtype = kv_dtype(q, "q");
  check_kv(q, "q", q, q.scalar_type(), 3);
  check_kv(k_cache, "k_cache", q, q.scalar_type(), 4);
  check_kv(v_cache, "v_cache", q, q.scalar_type(), 4);
  check_kv(out, "out", q, q.scalar_type(), 3);
  check_kv(block_table, "block_table", q, at::kInt, 2);
  check_kv(seq_lens, "seq_lens", q, at::kInt, 1);
  check_kv(cu_seqlens_q, "cu_seqlens_q", q, at::kInt, 1);
  const int64_t rows = q.size(0), q_heads = q.size(1), head_dim = q.size(2);
  const int64_t kv_heads = k_cache.size(2), batch = block_table.size(0);
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(), ", got ",
              v_cache.sizes());
  TORCH_CHECK(out.sizes() == q.sizes(), "out must have the shape of q ", q.sizes(), ", got ", out.sizes());
  TORCH_CHECK(k_cache.size(3) == head_dim, "k_cache head_dim ", k_cache.size(3), " must equal q's ", head_dim);
  TORCH_CHECK_VALUE(kv_heads > 0 && q_heads % kv_heads == 0, "Hq (", q_heads, ") must be a multiple of Hkv (",
                    kv_heads, ")");
  TORCH_CHECK_VALUE(dkp::attention_supports_head_dim(head_dim),
                    "the cuda paged_attention supports head_dim 64, 128 or 256, got ", head_dim);
  TORCH_CHECK(seq_lens.size(0) == batch && cu_seqlens_q.size(0) == batch + 1,
              "seq_lens must be [B] and cu_seqlens_q [B + 1] with B = ", batch, ", got ", seq_lens.sizes(), " and ",
              cu_seqlens_q.sizes());
  TORCH_CHECK(mask_mode >= 0 && mask_mode <= 2, "mask_mode must be 0 (causal), 1 (full) or 2 (custom), got ",
              mask_mode);
  const bool custom = mask_mode == 2;
  if (custom) {
    TORCH_CHECK(custom_mask.device() == q.device() && custom_mask.is_contiguous() &&
                    (custom_mask.scalar_type() == at::kByte || custom_mask.scalar_type() == at::kBool),
                "custom_mask must be a contiguous uint8 or bool tensor on ", q.device());
    check_kv(mask_indptr, "mask_indptr", q, at::kLong, 1);
    TORCH_CHECK(mask_indptr.size(0) == batch + 1, "mask_indptr must be [B + 1] with B = ", batch, ", got ",
                mask_indptr.sizes());
  }
  const c10::cuda::CUDAGuard guard(q.device());
  dkp::AttentionPlan plan;
  TORCH_CHECK(dkp::plan_paged_attention(batch, rows, q_heads, kv_heads, head_dim, k_cache.size(1),
                                        block_table.size(1), &plan),
              "paged_attention: sizes exceed the CUDA grid limits (T=", rows, ", Hkv=", kv_heads,
              ", MB * BS=", block_table.size(1) * k_cache.size(1), ")");
  at::Tensor workspace;
  if (plan.workspace_floats > 0) workspace = at::empty({plan.workspace_floats}, q.options().dtype(at::kFloat));
  dkp::AttentionArgs args{};
  args.q = q.data_ptr();
  args.k_cache = k_cache.data_ptr();
  args.v_cache = v_cache.data_ptr();
  args.out = out.data_ptr();
  args.dtype = dtype;
  args.block_table = block_table.data_ptr<int32_t>();
  args.seq_lens = seq_lens.data_ptr<int32_t>();
  args.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
  args.custom_mask = custom && custom_mask.numel() > 0 ? static_cast<const uint8_t*>(custom_mask.data_ptr()) : nullptr;
  args.custom_mask_numel = custom ? custom_mask.numel() : 0;
  args.mask_indptr = custom ? mask_indptr.data_ptr<int64_t>() : nullptr;
  args.mask_mode = static_cast<int>(mask_mode);
  args.scale = static_cast<float>(scale);
  args.batch = batch;
  args.rows = rows;
  args.q_heads = q_heads;
  args.kv_heads = kv_heads;
  args.head_dim = head_dim;
  args.num_blocks = k_cache.size(0);
  args.block_size = k_cache.size(1);
  args.max_blocks = block_table.size(1);
  float* workspace_data = plan.workspace_floats > 0 ? workspace.data_ptr<float>() : nullptr;
  check_launch(dkp::launch_paged_attention(args, plan, workspace_data, at::cuda::getCurrentCUDAStream()),
               "paged_attention");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "decodekit CUDA kernels (raw backend functions; use decodekit.ops)";
  m.def("sample", &sample,
        "Sample one token per row of logits [B, V] (f32/f16/bf16) into tokens_out i64[B], logprobs_out f32[B], "
        "valid_out bool[B]; per-row temperature f32, top_k i32, top_p f32, min_p f32, seed i64, offset i64.",
        py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
        py::arg("seed"), py::arg("offset"), py::arg("tokens_out"), py::arg("logprobs_out"), py::arg("valid_out"));
  m.def("apply_penalties", &apply_penalties,
        "Repetition / frequency / presence penalties of logits [B, V] given token_counts i32[B, V] into out "
        "[B, V] (may be logits).",
        py::arg("logits"), py::arg("token_counts"), py::arg("repetition"), py::arg("frequency"),
        py::arg("presence"), py::arg("out"));
  m.def("mask_logits", &mask_logits, "logits [B, V] with tokens outside top-k -> top-p set to -inf, into out.",
        py::arg("logits"), py::arg("top_k"), py::arg("top_p"), py::arg("out"));
  m.def("top_k_top_p_renorm", &top_k_top_p_renorm,
        "probs [B, V] restricted to top-k -> top-p and renormalised, into out.", py::arg("probs"),
        py::arg("top_k"), py::arg("top_p"), py::arg("out"));
  m.def("philox_uniform", &philox_uniform,
        "out f32[B, n] = Philox uniform(seed[b], offset[b], stream, counter i).", py::arg("seed"),
        py::arg("offset"), py::arg("stream"), py::arg("out"));
  m.def("kv_append", &kv_append,
        "Scatter k, v [T, Hkv, D] into k_cache, v_cache [NB, BS, Hkv, D] at slot_mapping i64[T] (slots outside "
        "[0, NB*BS) skipped).",
        py::arg("k"), py::arg("v"), py::arg("k_cache"), py::arg("v_cache"), py::arg("slot_mapping"));
  m.def("kv_copy_blocks", &kv_copy_blocks,
        "In every layer of k_cache, v_cache [L, NB, BS, Hkv, D], block dst[p] = block src[p] (i32[P]; ids outside "
        "[0, NB) skipped).",
        py::arg("k_cache"), py::arg("v_cache"), py::arg("src"), py::arg("dst"));
  m.def("paged_attention", &paged_attention,
        "Attention of q [T, Hq, D] over the paged cache (block_table i32[B, MB], seq_lens i32[B], cu_seqlens_q "
        "i32[B+1], mask_mode 0 causal / 1 full / 2 custom with custom_mask u8 and mask_indptr i64[B+1]) into out.",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("block_table"), py::arg("seq_lens"),
        py::arg("cu_seqlens_q"), py::arg("mask_mode"), py::arg("scale"), py::arg("custom_mask"),
        py::arg("mask_indptr"), py::arg("out"));
}
