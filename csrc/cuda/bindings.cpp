// Torch bindings of decodekit._cuda: the only translation unit that sees torch headers. Each op checks
// tensor metadata on the host (cheap, no device sync), selects the tensors' device, and launches on the
// current stream. The Python ops layer has already validated values and allocated the outputs.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdint>
#include <limits>

#include "sampling_launch.h"
#include "spec_verify_launch.h"

namespace {

namespace dks = decodekit::sampling;
namespace dksv = decodekit::spec_verify;

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

// [B, nodes, V] contiguous CUDA tensor of float32 / float16 / bfloat16 within the kernels' int indexing.
dks::DType check_logits3(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be 3-D [B, nodes, V], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.size(0) <= std::numeric_limits<int32_t>::max() && t.size(1) <= std::numeric_limits<int32_t>::max() &&
                  t.size(2) <= dks::kMaxColumns,
              name, " is too large: at most 2^31 - 1 rows and nodes and 2^30 columns, got shape ", t.sizes());
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", type);
  return type == at::kFloat ? dks::DType::kFloat32 : type == at::kHalf ? dks::DType::kFloat16 : dks::DType::kBFloat16;
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
