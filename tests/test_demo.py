"""`decodekit demo` end to end on a reduced setting, on the zoo weights shipped in the package."""

import pytest
import torch

from decodekit import zoo
from decodekit.demo import generative_bits_per_byte, run_demo, unigram_entropy_bits

HAVE_WEIGHTS = all((zoo.WEIGHTS_DIR / name / "model.safetensors").is_file() for name in zoo.NAMES)


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the zoo's weights are not in this checkout (decodekit zoo train)")
def test_demo_runs_every_quick_method(tmp_path):
    torch.set_num_threads(1)
    rows = run_demo(("Ru1:1 Now it came to pass",), max_new_tokens=16, quick=True, out_dir=tmp_path, progress=False)
    assert {r["family"] for r in rows} >= {"autoregressive", "speculative", "non-autoregressive", "diffusion",
                                          "hybrid: planned"}
    for name in ("demo.md", "demo.csv", "demo.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert all(r["forward calls"] >= 1 and r["gen. perplexity/byte"] >= 1.0 for r in rows)


def test_quality_measures_on_a_tiny_model():
    from decodekit.models.tiny import tiny_transformer

    model = tiny_transformer(16, seed=0)
    prompts, outputs = [[1, 2, 3]], [[4, 5]]
    logits = torch.log_softmax(model.forward_train(torch.tensor([[1, 2, 3, 4, 5]])).float(), -1)[0]
    expected = -(logits[2, 4] + logits[3, 5]) / 2 / torch.log(torch.tensor(2.0))
    assert generative_bits_per_byte(model, prompts, outputs) == pytest.approx(float(expected), rel=1e-4)
    assert unigram_entropy_bits([[7, 7, 7, 7]]) == 0.0
    assert unigram_entropy_bits([[1, 2], [3, 4]]) == pytest.approx(2.0)
