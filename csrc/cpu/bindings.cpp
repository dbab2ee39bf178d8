// Python bindings of the C++ CPU kernels: the `decodekit._C` module. One m.def per raw op; the
// kernels' contracts are in the headers next to this file.
#include <torch/extension.h>

#include "paged_kv.h"
#include "denoise.h"
#include "discrete_diffusion.h"
#include "sampling.h"
#include "spec_verify.h"

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "decodekit C++ CPU kernels (raw ops; use decodekit.ops)";
  // The kernels never touch Python objects, so other Python threads may run meanwhile.
  const auto release_gil = py::call_guard<py::gil_scoped_release>();

  m.def("sample", &decodekit::cpu::sample, release_gil, py::arg("logits"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
        py::arg("seed"), py::arg("offset"), py::arg("tokens_out"), py::arg("logprobs_out"),
        py::arg("valid_out"));
  m.def("apply_penalties", &decodekit::cpu::apply_penalties, release_gil, py::arg("logits"),
        py::arg("token_counts"), py::arg("repetition"), py::arg("frequency"),
        py::arg("presence"), py::arg("out"));
  m.def("mask_logits", &decodekit::cpu::mask_logits, release_gil, py::arg("logits"),
        py::arg("top_k"), py::arg("top_p"), py::arg("out"));
  m.def("top_k_top_p_renorm", &decodekit::cpu::top_k_top_p_renorm, release_gil,
        py::arg("probs"), py::arg("top_k"), py::arg("top_p"), py::arg("out"));
  m.def("philox_uniform", &decodekit::cpu::philox_uniform, release_gil, py::arg("seed"),
        py::arg("offset"), py::arg("stream"), py::arg("out"));

  m.def("kv_append", &decodekit::cpu::kv_append, release_gil, py::arg("k"), py::arg("v"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("slot_mapping"));
  m.def("kv_copy_blocks", &decodekit::cpu::kv_copy_blocks, release_gil, py::arg("k_cache"),
        py::arg("v_cache"), py::arg("src"), py::arg("dst"));
  m.def("paged_attention", &decodekit::cpu::paged_attention, release_gil, py::arg("q"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("block_table"), py::arg("seq_lens"),
        py::arg("cu_seqlens_q"), py::arg("mask_mode"), py::arg("scale"), py::arg("custom_mask"),
        py::arg("mask_indptr"), py::arg("out"));
  m.def("denoise_propose", &decodekit::cpu::denoise_propose, release_gil, py::arg("logits"),
        py::arg("temperature"), py::arg("keep_floor"), py::arg("suppress_ids"), py::arg("seed"),
        py::arg("offset"), py::arg("window_start"), py::arg("conf_mode"), py::arg("tempered"),
        py::arg("proposal_out"), py::arg("confidence_out"));
  m.def("denoise_select", &decodekit::cpu::denoise_select, release_gil, py::arg("tokens"),
        py::arg("proposal"), py::arg("confidence"), py::arg("window_start"),
        py::arg("block_start"), py::arg("block_end"), py::arg("mask_id"), py::arg("select_mode"),
        py::arg("k"), py::arg("tau"), py::arg("factor"), py::arg("p_transfer"),
        py::arg("span_ids"), py::arg("seed"), py::arg("offset"), py::arg("committed_out"),
        py::arg("num_committed_out"));
  m.def("discrete_diffusion_step", &decodekit::cpu::discrete_diffusion_step, release_gil,
        py::arg("scores"), py::arg("tokens"), py::arg("sigma"), py::arg("dsigma"), py::arg("fixed"),
        py::arg("seed"), py::arg("offset"), py::arg("graph"), py::arg("sampler"), py::arg("param"),
        py::arg("mask_id"), py::arg("out"));
  m.def("verify_chain", &decodekit::cpu::verify_chain, release_gil, py::arg("target_logits"),
        py::arg("draft_tokens"), py::arg("draft_probs"), py::arg("has_draft_probs"),
        py::arg("method"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
        py::arg("typical_eps"), py::arg("typical_delta"), py::arg("seed"), py::arg("offset"),
        py::arg("tokens_out"), py::arg("num_accepted_out"), py::arg("num_emitted_out"),
        py::arg("valid_out"));
  m.def("verify_tree", &decodekit::cpu::verify_tree, release_gil, py::arg("target_logits"),
        py::arg("tokens"), py::arg("first_child"), py::arg("next_sibling"),
        py::arg("draft_probs"), py::arg("has_draft_probs"), py::arg("method"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("typical_eps"),
        py::arg("typical_delta"), py::arg("seed"), py::arg("offset"),
        py::arg("accepted_nodes_out"), py::arg("tokens_out"), py::arg("num_accepted_out"),
        py::arg("num_emitted_out"), py::arg("valid_out"));
}
