// Torch bindings of decodekit._cuda: the only translation unit that sees torch headers. Each op checks
// tensor metadata on the host (cheap, no device sync), selects the tensors' device, and launches on the
// current stream. The Python ops layer has already validated values and allocated the outputs.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdint>
#include <limits>

#include "denoise_launch.h"
#include "discrete_diffusion_launch.h"
#include "paged_kv_launch.h"
#include "sampling_launch.h"
#include "spec_verify_launch.h"

namespace {

namespace dks = decodekit::sampling;
namespace dkd = decodekit::denoise;
namespace dkdd = decodekit::discrete_diffusion;
namespace dksv = decodekit::spec_verify;

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "decodekit._cuda.", op, ": kernel launch failed: ", cudaGetErrorString(status));
}

// The launchers' code for t's float dtype (float32 / float16 / bfloat16; anything else is an error).
decodekit::DType float_dtype(const at::Tensor& t, const char* name) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", type);
  return type == at::kFloat  ? decodekit::DType::kFloat32
         : type == at::kHalf ? decodekit::DType::kFloat16
                             : decodekit::DType::kBFloat16;
}

// [B, V] contiguous CUDA matrix of float32 / float16 / bfloat16 whose sizes fit the kernels' int indexing.
dks::DType check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [B, V], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.size(0) <= std::numeric_limits<int32_t>::max() && t.size(1) <= dks::kMaxColumns, name,
              " is too large: at most 2^31 - 1 rows and 2^30 columns, got shape ", t.sizes());
  return float_dtype(t, name);
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
  float_dtype(k_cache, "k_cache");
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
  float_dtype(k_cache, "k_cache");
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
  const dkp::DType dtype = float_dtype(q, "q");
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

// ------------------------------------------------------------------------------------------------
// denoise

void denoise_propose(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& keep_floor,
                     const at::Tensor& suppress_ids, const at::Tensor& seed, const at::Tensor& offset,
                     const at::Tensor& window_start, int64_t conf_mode, int64_t tempered,
                     const at::Tensor& proposal_out, const at::Tensor& confidence_out) {
  TORCH_CHECK(logits.is_cuda(), "logits must be a CUDA tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 3, "logits must be 3-D [B, W, V], got shape ", logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), "logits must be contiguous");
  const dkd::DType dtype = float_dtype(logits, "logits");
  const int64_t batch = logits.size(0), width = logits.size(1), vocab = logits.size(2);
  TORCH_CHECK(batch * width <= std::numeric_limits<int32_t>::max() && vocab <= dkd::kMaxVocab,
              "logits is too large: at most 2^31 - 1 positions (B * W) and 2^30 vocabulary entries, got shape ",
              logits.sizes());
  TORCH_CHECK(conf_mode >= 0 && conf_mode <= 3, "conf_mode must be 0..3, got ", conf_mode);
  check_like(temperature, "temperature", logits, at::kFloat, {batch});
  if (keep_floor.numel() > 0) check_like(keep_floor, "keep_floor", logits, at::kFloat, {batch, width});
  if (suppress_ids.numel() > 0) check_like(suppress_ids, "suppress_ids", logits, at::kLong, {suppress_ids.numel()});
  check_like(seed, "seed", logits, at::kLong, {batch});
  check_like(offset, "offset", logits, at::kLong, {batch});
  check_like(window_start, "window_start", logits, at::kLong, {batch});
  check_like(proposal_out, "proposal_out", logits, at::kLong, {batch, width});
  check_like(confidence_out, "confidence_out", logits, at::kFloat, {batch, width});
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(dkd::launch_denoise_propose(
                   logits.data_ptr(), dtype, batch, width, vocab, temperature.data_ptr<float>(),
                   keep_floor.numel() > 0 ? keep_floor.data_ptr<float>() : nullptr,
                   suppress_ids.numel() > 0 ? suppress_ids.data_ptr<int64_t>() : nullptr, suppress_ids.numel(),
                   seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(), window_start.data_ptr<int64_t>(), conf_mode,
                   tempered != 0, proposal_out.data_ptr<int64_t>(), confidence_out.data_ptr<float>(),
                   at::cuda::getCurrentCUDAStream()),
               "denoise_propose");
}

void discrete_diffusion_step(const at::Tensor& scores, const at::Tensor& tokens, const at::Tensor& sigma,
                             const at::Tensor& dsigma, const at::Tensor& fixed, const at::Tensor& seed,
                             const at::Tensor& offset, int64_t graph, int64_t sampler, int64_t param, int64_t mask_id,
                             const at::Tensor& out) {
  TORCH_CHECK(scores.is_cuda(), "scores must be a CUDA tensor, got device ", scores.device());
  TORCH_CHECK(scores.dim() == 3, "scores must be 3-D [B, L, V], got shape ", scores.sizes());
  TORCH_CHECK(scores.is_contiguous(), "scores must be contiguous");
  const dkdd::DType dtype = float_dtype(scores, "scores");
  const int64_t batch = scores.size(0), length = scores.size(1), vocab = scores.size(2);
  TORCH_CHECK(vocab >= 1 && batch * length <= std::numeric_limits<int32_t>::max() && vocab <= dkdd::kMaxVocab,
              "scores must have V >= 1, at most 2^31 - 1 positions (B * L) and 2^30 vocabulary entries, got shape ",
              scores.sizes());
  TORCH_CHECK(graph == 0 || graph == 1, "graph must be 0 (absorbing) or 1 (uniform), got ", graph);
  TORCH_CHECK(sampler >= 0 && sampler <= 2, "sampler must be 0 (euler), 1 (analytic) or 2 (final), got ", sampler);
  TORCH_CHECK(param == 0 || param == 1, "param must be 0 (log_score) or 1 (clean_logits), got ", param);
  TORCH_CHECK(graph != 0 || (mask_id >= 0 && mask_id < vocab), "mask_id must be in [0, ", vocab,
              ") on the absorbing graph, got ", mask_id);
  check_like(tokens, "tokens", scores, at::kLong, {batch, length});
  check_like(sigma, "sigma", scores, at::kFloat, {batch});
  check_like(dsigma, "dsigma", scores, at::kFloat, {batch});
  if (fixed.numel() > 0) check_like(fixed, "fixed", scores, at::kBool, {batch, length});
  check_like(seed, "seed", scores, at::kLong, {batch});
  check_like(offset, "offset", scores, at::kLong, {batch});
  check_like(out, "out", scores, at::kLong, {batch, length});
  const c10::cuda::CUDAGuard guard(scores.device());
  check_launch(dkdd::launch_discrete_diffusion_step(
                   scores.data_ptr(), dtype, batch, length, vocab, tokens.data_ptr<int64_t>(), sigma.data_ptr<float>(),
                   dsigma.data_ptr<float>(), fixed.numel() > 0 ? fixed.data_ptr<bool>() : nullptr,
                   seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(), graph, sampler, param, mask_id,
                   out.data_ptr<int64_t>(), at::cuda::getCurrentCUDAStream()),
               "discrete_diffusion_step");
}

void denoise_select(const at::Tensor& tokens, const at::Tensor& proposal, const at::Tensor& confidence,
                    const at::Tensor& window_start, const at::Tensor& block_start, const at::Tensor& block_end,
                    int64_t mask_id, int64_t select_mode, const at::Tensor& k, const at::Tensor& tau,
                    const at::Tensor& factor, const at::Tensor& p_transfer, const at::Tensor& span_ids,
                    const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& committed_out,
                    const at::Tensor& num_committed_out) {
  TORCH_CHECK(tokens.is_cuda(), "tokens must be a CUDA tensor, got device ", tokens.device());
  TORCH_CHECK(tokens.dim() == 2, "tokens must be 2-D [B, L], got shape ", tokens.sizes());
  check_like(tokens, "tokens", tokens, at::kLong, tokens.sizes());
  const int64_t batch = tokens.size(0), length = tokens.size(1);
  TORCH_CHECK(proposal.dim() == 2 && proposal.size(0) == batch, "proposal must have shape [B, W] with B = ", batch,
              ", got ", proposal.sizes());
  const int64_t width = proposal.size(1);
  TORCH_CHECK(width <= dkd::kMaxWidth, "the CUDA denoise_select handles windows of at most ", dkd::kMaxWidth,
              " positions, got W = ", width);
  TORCH_CHECK(select_mode >= 0 && select_mode <= 3, "select_mode must be 0..3, got ", select_mode);
  check_like(proposal, "proposal", tokens, at::kLong, {batch, width});
  check_like(confidence, "confidence", tokens, at::kFloat, {batch, width});
  check_like(window_start, "window_start", tokens, at::kLong, {batch});
  check_like(block_start, "block_start", tokens, at::kLong, {batch});
  check_like(block_end, "block_end", tokens, at::kLong, {batch});
  TORCH_CHECK(k.dim() == 2 && k.size(0) == batch && k.size(1) >= 1 &&
                  k.size(1) <= std::numeric_limits<int32_t>::max(),
              "k must have shape [B, S] with B = ", batch, " and S >= 1, got ", k.sizes());
  check_like(k, "k", tokens, at::kInt, k.sizes());
  check_like(tau, "tau", tokens, at::kFloat, {batch});
  check_like(factor, "factor", tokens, at::kFloat, {batch});
  check_like(p_transfer, "p_transfer", tokens, at::kFloat, {batch});
  if (span_ids.numel() > 0) check_like(span_ids, "span_ids", tokens, at::kInt, {batch, length});
  check_like(seed, "seed", tokens, at::kLong, {batch});
  check_like(offset, "offset", tokens, at::kLong, {batch});
  check_like(committed_out, "committed_out", tokens, at::kBool, {batch, length});
  check_like(num_committed_out, "num_committed_out", tokens, at::kInt, {batch});
  const c10::cuda::CUDAGuard guard(tokens.device());
  check_launch(dkd::launch_denoise_select(
                   tokens.data_ptr<int64_t>(), batch, length, proposal.data_ptr<int64_t>(),
                   confidence.data_ptr<float>(), width, window_start.data_ptr<int64_t>(),
                   block_start.data_ptr<int64_t>(), block_end.data_ptr<int64_t>(), mask_id, select_mode,
                   k.data_ptr<int32_t>(), k.size(1), tau.data_ptr<float>(), factor.data_ptr<float>(),
                   p_transfer.data_ptr<float>(), span_ids.numel() > 0 ? span_ids.data_ptr<int32_t>() : nullptr,
                   seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(), committed_out.data_ptr<bool>(),
                   num_committed_out.data_ptr<int32_t>(), at::cuda::getCurrentCUDAStream()),
               "denoise_select");
}

// ------------------------------------------------------------------------------------------------
// spec_verify

// [B, nodes, V] contiguous CUDA tensor of float32 / float16 / bfloat16 within the kernels' int indexing.
dks::DType check_logits3(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be 3-D [B, nodes, V], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.size(0) <= std::numeric_limits<int32_t>::max() && t.size(1) <= std::numeric_limits<int32_t>::max() &&
                  t.size(2) <= dks::kMaxColumns,
              name, " is too large: at most 2^31 - 1 rows and nodes and 2^30 columns, got shape ", t.sizes());
  return float_dtype(t, name);
}

// The per-row parameters shared by verify_chain and verify_tree, checked against logits [B, ...].
dksv::ParamPointers verify_params(const at::Tensor& logits, const at::Tensor& method, const at::Tensor& temperature,
                                  const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& typical_eps,
                                  const at::Tensor& typical_delta, const at::Tensor& seed, const at::Tensor& offset) {
  const int64_t batch = logits.size(0);
  check_like(method, "method", logits, at::kInt, {batch});
  check_like(temperature, "temperature", logits, at::kFloat, {batch});
  check_like(top_k, "top_k", logits, at::kInt, {batch});
  check_like(top_p, "top_p", logits, at::kFloat, {batch});
  check_like(typical_eps, "typical_eps", logits, at::kFloat, {batch});
  check_like(typical_delta, "typical_delta", logits, at::kFloat, {batch});
  check_like(seed, "seed", logits, at::kLong, {batch});
  check_like(offset, "offset", logits, at::kLong, {batch});
  return {method.data_ptr<int32_t>(),     temperature.data_ptr<float>(),   top_k.data_ptr<int32_t>(),
          top_p.data_ptr<float>(),        typical_eps.data_ptr<float>(),   typical_delta.data_ptr<float>(),
          seed.data_ptr<int64_t>(),       offset.data_ptr<int64_t>()};
}

// draft_probs f32 [B, rows, V] when has_draft_probs (its data pointer), else nullptr (the tensor is ignored).
const float* draft_rows(const at::Tensor& draft_probs, bool has_draft_probs, const at::Tensor& logits, int64_t rows) {
  if (!has_draft_probs) return nullptr;
  check_like(draft_probs, "draft_probs", logits, at::kFloat, {logits.size(0), rows, logits.size(2)});
  return draft_probs.data_ptr<float>();
}

void verify_chain(const at::Tensor& target_logits, const at::Tensor& draft_tokens, const at::Tensor& draft_probs,
                  bool has_draft_probs, const at::Tensor& method, const at::Tensor& temperature,
                  const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& typical_eps,
                  const at::Tensor& typical_delta, const at::Tensor& seed, const at::Tensor& offset,
                  const at::Tensor& tokens_out, const at::Tensor& num_accepted_out, const at::Tensor& num_emitted_out,
                  const at::Tensor& valid_out) {
  const dks::DType dtype = check_logits3(target_logits, "target_logits");
  const int64_t batch = target_logits.size(0), n = target_logits.size(1) - 1;
  TORCH_CHECK(n >= 0, "target_logits must have n + 1 >= 1 positions, got shape ", target_logits.sizes());
  check_like(draft_tokens, "draft_tokens", target_logits, at::kLong, {batch, n});
  const float* q = draft_rows(draft_probs, has_draft_probs, target_logits, n);
  const dksv::ParamPointers params = verify_params(target_logits, method, temperature, top_k, top_p, typical_eps,
                                                   typical_delta, seed, offset);
  check_like(tokens_out, "tokens_out", target_logits, at::kLong, {batch, n + 1});
  check_like(num_accepted_out, "num_accepted_out", target_logits, at::kInt, {batch});
  check_like(num_emitted_out, "num_emitted_out", target_logits, at::kInt, {batch});
  check_like(valid_out, "valid_out", target_logits, at::kBool, {batch});
  const c10::cuda::CUDAGuard guard(target_logits.device());
  check_launch(dksv::launch_verify_chain(target_logits.data_ptr(), dtype, batch, n, target_logits.size(2),
                                         draft_tokens.data_ptr<int64_t>(), q, params, tokens_out.data_ptr<int64_t>(),
                                         num_accepted_out.data_ptr<int32_t>(), num_emitted_out.data_ptr<int32_t>(),
                                         valid_out.data_ptr<bool>(), at::cuda::getCurrentCUDAStream()),
               "verify_chain");
}

void verify_tree(const at::Tensor& target_logits, const at::Tensor& tokens, const at::Tensor& first_child,
                 const at::Tensor& next_sibling, const at::Tensor& draft_probs, bool has_draft_probs,
                 const at::Tensor& method, const at::Tensor& temperature, const at::Tensor& top_k,
                 const at::Tensor& top_p, const at::Tensor& typical_eps, const at::Tensor& typical_delta,
                 const at::Tensor& seed, const at::Tensor& offset, const at::Tensor& accepted_nodes_out,
                 const at::Tensor& tokens_out, const at::Tensor& num_accepted_out, const at::Tensor& num_emitted_out,
                 const at::Tensor& valid_out) {
  const dks::DType dtype = check_logits3(target_logits, "target_logits");
  const int64_t batch = target_logits.size(0), nodes = target_logits.size(1);
  TORCH_CHECK(nodes >= 1, "target_logits must have N >= 1 nodes, got shape ", target_logits.sizes());
  check_like(tokens, "tokens", target_logits, at::kLong, {batch, nodes});
  check_like(first_child, "first_child", target_logits, at::kInt, {batch, nodes});
  check_like(next_sibling, "next_sibling", target_logits, at::kInt, {batch, nodes});
  const float* q = draft_rows(draft_probs, has_draft_probs, target_logits, nodes);
  const dksv::ParamPointers params = verify_params(target_logits, method, temperature, top_k, top_p, typical_eps,
                                                   typical_delta, seed, offset);
  TORCH_CHECK(tokens_out.dim() == 2 && tokens_out.size(0) == batch && tokens_out.size(1) >= 1 &&
                  tokens_out.size(1) <= std::numeric_limits<int32_t>::max(),
              "tokens_out must have shape [B, W] with B = ", batch, " and W >= 1, got ", tokens_out.sizes());
  const int64_t width = tokens_out.size(1);
  check_like(tokens_out, "tokens_out", target_logits, at::kLong, {batch, width});
  check_like(accepted_nodes_out, "accepted_nodes_out", target_logits, at::kInt, {batch, width});
  check_like(num_accepted_out, "num_accepted_out", target_logits, at::kInt, {batch});
  check_like(num_emitted_out, "num_emitted_out", target_logits, at::kInt, {batch});
  check_like(valid_out, "valid_out", target_logits, at::kBool, {batch});
  const c10::cuda::CUDAGuard guard(target_logits.device());
  // Scratch for the rejection steps of nodes with many children (none for trees of <= 65 nodes);
  // the caching allocator hands it out without a device sync.
  const int64_t workspace_bytes = dksv::verify_tree_workspace_bytes(batch, nodes);
  at::Tensor workspace;
  if (workspace_bytes > 0) workspace = at::empty({workspace_bytes}, target_logits.options().dtype(at::kByte));
  check_launch(dksv::launch_verify_tree(target_logits.data_ptr(), dtype, batch, nodes, target_logits.size(2),
                                        tokens.data_ptr<int64_t>(), first_child.data_ptr<int32_t>(),
                                        next_sibling.data_ptr<int32_t>(), q, params,
                                        accepted_nodes_out.data_ptr<int32_t>(), tokens_out.data_ptr<int64_t>(), width,
                                        num_accepted_out.data_ptr<int32_t>(), num_emitted_out.data_ptr<int32_t>(),
                                        valid_out.data_ptr<bool>(), workspace_bytes > 0 ? workspace.data_ptr() : nullptr,
                                        at::cuda::getCurrentCUDAStream()),
               "verify_tree");
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
  m.def("denoise_propose", &denoise_propose,
        "Proposal i64[B, W] and confidence f32[B, W] of logits [B, W, V] (f32/f16/bf16) into proposal_out, "
        "confidence_out; temperature f32[B], keep_floor f32[B, W] or empty, suppress_ids i64[S], seed, offset, "
        "window_start i64[B], conf_mode 0..3, tempered 0/1.",
        py::arg("logits"), py::arg("temperature"), py::arg("keep_floor"), py::arg("suppress_ids"), py::arg("seed"),
        py::arg("offset"), py::arg("window_start"), py::arg("conf_mode"), py::arg("tempered"),
        py::arg("proposal_out"), py::arg("confidence_out"));
  m.def("denoise_select", &denoise_select,
        "Commit eligible masked window positions of tokens i64[B, L] (in place) by select_mode 0..3; writes "
        "committed_out bool[B, L] and num_committed_out i32[B].",
        py::arg("tokens"), py::arg("proposal"), py::arg("confidence"), py::arg("window_start"),
        py::arg("block_start"), py::arg("block_end"), py::arg("mask_id"), py::arg("select_mode"), py::arg("k"),
        py::arg("tau"), py::arg("factor"), py::arg("p_transfer"), py::arg("span_ids"), py::arg("seed"),
        py::arg("offset"), py::arg("committed_out"), py::arg("num_committed_out"));
  m.def("discrete_diffusion_step", &discrete_diffusion_step,
        "One SEDD reverse step: the next canvas i64[B, L] of scores [B, L, V] (f32/f16/bf16) and tokens i64[B, L] "
        "into out; sigma, dsigma f32[B], fixed bool[B, L] or empty, seed, offset i64[B], graph 0/1, sampler 0..2, "
        "param 0/1, mask_id (-1 on the uniform graph).",
        py::arg("scores"), py::arg("tokens"), py::arg("sigma"), py::arg("dsigma"), py::arg("fixed"), py::arg("seed"),
        py::arg("offset"), py::arg("graph"), py::arg("sampler"), py::arg("param"), py::arg("mask_id"), py::arg("out"));
  m.def("verify_chain", &verify_chain,
        "Verify draft chains draft_tokens i64[B, n] against target_logits [B, n+1, V] (f32/f16/bf16) into "
        "tokens_out i64[B, n+1], num_accepted_out / num_emitted_out i32[B], valid_out bool[B].",
        py::arg("target_logits"), py::arg("draft_tokens"), py::arg("draft_probs"), py::arg("has_draft_probs"),
        py::arg("method"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("typical_eps"),
        py::arg("typical_delta"), py::arg("seed"), py::arg("offset"), py::arg("tokens_out"),
        py::arg("num_accepted_out"), py::arg("num_emitted_out"), py::arg("valid_out"));
  m.def("verify_tree", &verify_tree,
        "Verify token trees (tokens i64[B, N], first_child / next_sibling i32[B, N]) against target_logits "
        "[B, N, V] into accepted_nodes_out i32[B, W], tokens_out i64[B, W], num_accepted_out / num_emitted_out "
        "i32[B], valid_out bool[B].",
        py::arg("target_logits"), py::arg("tokens"), py::arg("first_child"), py::arg("next_sibling"),
        py::arg("draft_probs"), py::arg("has_draft_probs"), py::arg("method"), py::arg("temperature"),
        py::arg("top_k"), py::arg("top_p"), py::arg("typical_eps"), py::arg("typical_delta"), py::arg("seed"),
        py::arg("offset"), py::arg("accepted_nodes_out"), py::arg("tokens_out"), py::arg("num_accepted_out"),
        py::arg("num_emitted_out"), py::arg("valid_out"));
}
