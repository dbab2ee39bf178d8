import pytest
import torch

from decodekit.decoders import (AutoregressiveDecoder, DiscreteDiffusionDecoder, MaskedDiffusionDecoder,
                                PlannedDiffusionDecoder, SamplingParams)
from decodekit.decoders.base import forward_step
from decodekit.decoders.plan import round_attention_mask
from decodekit.models.tiny import tiny_transformer
from decodekit.zoo import load
from decodekit.zoo import planned as pl
from decodekit.zoo.corpus import parse_verses
from decodekit.zoo.tokenizer import NUM_BYTES, ByteTokenizer
from decodekit.zoo.train import TrainSettings, block_mask, train

VERSES = parse_verses("\n".join(
    f"Ge{c}:{v} And God said, Let there be light number {c * 10 + v}: and there was light."
    for c in (1, 2, 3) for v in range(1, 6)
) + "\nRuth1:1 Now it came to pass in the days when the judges ruled.\nRuth1:2 And the name of the man.\n")
TOK = ByteTokenizer()
CONFIG = dict(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
              num_kv_heads=2, max_positions=256, mask_token_id=TOK.mask_token_id, eos_token_id=TOK.eos_token_id)


def _paged(model, rows_per_call, masks):
    cache = model.make_cache(64, 16)
    cache.allocator.allocate(0)
    out = []
    for rows, (mask, custom) in zip(rows_per_call, masks):
        out.append(forward_step(model, cache, [0], [rows], mask=mask, custom_mask=custom, logits="all"))
    return torch.cat(out)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_forward_train_equals_the_paged_forward(attention):
    model = tiny_transformer(TOK.vocab_size, attention=attention, init_std=0.3, seed=1)
    ids = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        train_logits = model.forward_train(ids)
    for b in range(2):
        paged = _paged(model, [ids[b].tolist()], [(None, None)])
        torch.testing.assert_close(train_logits[b], paged, atol=1e-4, rtol=1e-4)


def test_forward_train_with_the_planned_mask_equals_the_decoders_calls():
    model = tiny_transformer(TOK.vocab_size, init_std=0.3, seed=2)
    doc = pl.annotate(VERSES[0].line, [[VERSES[1].line, VERSES[2].line]], TOK, final_eos=False)
    (round_start, blocks, _), = doc.rounds
    with torch.no_grad():
        train_logits = model.forward_train(torch.tensor([doc.tokens]), pl.attention_mask(doc))[0]
    # the decoder: prompt + plan appended causally, then the round's rows under its custom mask
    round_rows = doc.tokens[round_start:]
    custom = round_attention_mask([(a - round_start, b - round_start) for a, b in blocks], len(round_rows))
    paged = _paged(model, [doc.tokens[:round_start], round_rows], [("causal", None), ("custom", [custom])])
    torch.testing.assert_close(train_logits, paged, atol=1e-4, rtol=1e-4)


def test_block_training_mask_matches_block_causal_attention():
    mask, positions, seg = block_mask(6, 2, 2)  # prompt [0, 2), blocks [2, 4), [4, 6); noisy copies 6..9
    assert positions.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5] and seg.tolist() == [1, 1, 2, 2]
    assert mask[0, :2].all() and not mask[0, 2:].any()  # the prompt sees itself
    assert mask[2, :4].all() and not mask[2, 4:].any()  # clean block 1: prompt + itself
    assert mask[8, :4].all() and not mask[8, 4:8].any() and mask[8, 8:].all()  # noisy block 2


@pytest.mark.parametrize("kind", ["ar", "mdm", "planned", "udm"])
def test_training_lowers_the_loss_and_is_deterministic(kind, tmp_path):
    torch.set_num_threads(1)
    config = dict(CONFIG, attention="bidirectional" if kind in ("mdm", "udm") else "causal")
    settings = TrainSettings(steps=12, batch_size=4, seq_len=256 if kind == "planned" else 48, lr=1e-2,
                             warmup=2, eval_examples=4)
    train_v, held = VERSES[:15], VERSES[15:]
    model, meta = train(kind, config, train_v, held, settings, out_dir=tmp_path / kind, name=kind, progress=False)
    assert meta["final_loss"] < 0.8 * meta["first_loss"]
    # the uniform graph's ELBO of a 12-step model is ~22 bits (its score entropy is far from tight)
    assert 0 < meta["held_out_bits_per_byte"] < (40 if kind == "udm" else 10)
    again, _ = train(kind, config, train_v, held, settings, progress=False)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    other, _ = train(kind, config, train_v, held, TrainSettings(**{**settings.__dict__, "seed": 1}), progress=False)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_saved_models_load_and_run_in_their_decoders(tmp_path, monkeypatch):
    settings = TrainSettings(steps=2, batch_size=2, seq_len=256, eval_examples=2)
    for name, kind, attention in (("kjv-ar", "ar", "causal"), ("kjv-mdm", "mdm", "bidirectional"),
                                  ("kjv-planned", "planned", "causal")):
        train(kind, dict(CONFIG, attention=attention), VERSES[:15], VERSES[15:], settings,
              out_dir=tmp_path / name, progress=False)
    greedy = SamplingParams.greedy()
    ar, tok = load("kjv-ar", weights_dir=tmp_path, dtype=torch.float32)
    assert ar.dtype == torch.float32 and ar.attention == "causal"
    out = AutoregressiveDecoder(ar, tokenizer=tok).generate(["Ge1:1 "], max_new_tokens=5, sampling=greedy)
    assert isinstance(out.texts[0], str)
    mdm, _ = load("kjv-mdm", weights_dir=tmp_path, dtype=torch.float32)
    assert mdm.attention == "bidirectional" and mdm.config.mask_token_id == tok.mask_token_id
    MaskedDiffusionDecoder(mdm, mask_token_id=tok.mask_token_id, preset="llada", tokenizer=tok).generate(
        ["Ge1:1 "], max_new_tokens=8, sampling=greedy)
    planned, _ = load("kjv-planned", weights_dir=tmp_path, dtype=torch.float32)
    decoder = PlannedDiffusionDecoder(planned, tok.mask_token_id, control=tok.control_tokens(),
                                      on_bad_plan="autoregressive", tokenizer=tok)
    decoder.generate(["Ge1:1 "], max_new_tokens=8, sampling=greedy)
    train("udm", dict(CONFIG, attention="bidirectional", extra={"diffusion_states": NUM_BYTES + 1}), VERSES[:15],
          VERSES[15:], settings, out_dir=tmp_path / "kjv-udm", progress=False)
    udm, _ = load("kjv-udm", weights_dir=tmp_path, dtype=torch.float32)
    decoder = DiscreteDiffusionDecoder(udm, graph="uniform", steps=16, tokenizer=tok)
    assert decoder.num_states == NUM_BYTES + 1  # read back from the saved config
    out = decoder.generate(["Ge1:1 "], max_new_tokens=8, seed=0, stop_token_ids=[]).sequences[0]
    assert len(out) == 8 and max(out) <= NUM_BYTES
    with pytest.raises(ValueError, match="name must be one of"):
        load("nope")
    with pytest.raises(FileNotFoundError, match="decodekit zoo train"):
        load("kjv-ar-draft", weights_dir=tmp_path)


def test_bad_kind_and_config_are_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        train("gan", CONFIG, VERSES, VERSES, TrainSettings(steps=1))
    with pytest.raises(ValueError, match="needs attention='bidirectional'"):
        train("mdm", CONFIG, VERSES, VERSES, TrainSettings(steps=1))
    with pytest.raises(ValueError, match="vocab_size must be 264"):
        train("ar", dict(CONFIG, vocab_size=300), VERSES, VERSES, TrainSettings(steps=1))


def test_zoo_configs_fit_the_size_budget_and_the_draft_is_several_times_smaller():
    from decodekit.models import Transformer, TransformerConfig
    from decodekit.zoo import ZOO

    params = {name: sum(p.numel() for p in Transformer(TransformerConfig(**m.config)).parameters())
              for name, m in ZOO.items()}
    assert 2e6 <= params["kjv-ar"] <= 6e6 and params["kjv-ar"] >= 4 * params["kjv-ar-draft"]
    assert 2 * sum(params.values()) <= 25e6  # fp16 bytes shipped
    assert {m.config["vocab_size"] for m in ZOO.values()} == {TOK.vocab_size}
    assert ZOO["kjv-mdm"].config["attention"] == "bidirectional" == ZOO["kjv-udm"].config["attention"]
    assert params["kjv-udm"] <= 3.5e6 and ZOO["kjv-udm"].config["extra"]["diffusion_states"] == NUM_BYTES + 1


def test_udm_noise_and_scores_follow_the_uniform_graph():
    from decodekit.reference.discrete_diffusion import Graph, Parameterization, concrete_score
    from decodekit.zoo.train import uniform_concrete_score, uniform_noise

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 20000, dtype=torch.int64)
    sigma = torch.tensor([[0.01], [0.3], [1.0], [5.0]], dtype=torch.float64)
    noisy = uniform_noise(x, sigma, 257, g)
    assert int(noisy.max()) < 257
    changed = (noisy != 0).double().mean(1)
    want = -torch.expm1(-sigma.squeeze(1)) * 256 / 257  # a replacement may draw the same token
    torch.testing.assert_close(changed, want, atol=0.01, rtol=0.03)
    # the ELBO's score is the sampler's: the discrete_diffusion spec's clean-logit conversion
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    sig = torch.tensor([[0.05], [2.0]], dtype=torch.float64)
    ours = uniform_concrete_score(torch.log_softmax(logits, -1), tokens, sig)
    ours = ours.scatter(-1, tokens.unsqueeze(-1), 1.0)
    spec, invalid = concrete_score(logits, tokens, sig.squeeze(1), Graph.UNIFORM, Parameterization.CLEAN_LOGITS, -1)
    assert not invalid.any()
    torch.testing.assert_close(ours.float(), spec, rtol=1e-4, atol=1e-5)


def test_udm_elbo_of_the_exact_posterior_is_the_nll():
    """With the exact clean-token posterior (i.i.d. data: ``p(x0 | x_t) ~ pi(x0) p_t(x_t | x0)``)
    the reverse process is exact, so the ELBO equals the data's NLL (up to Monte-Carlo spread);
    a network that ignores its input (the marginal) is a loose bound above it."""
    from decodekit.decoders.noise_schedules import Geometric
    from decodekit.zoo.train import udm_elbo_nats

    probs = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)

    class Exact(torch.nn.Module):
        def __init__(self, sigmas):
            super().__init__()
            self.sigmas = list(sigmas)  # the noise levels of the coming calls, in order

        def forward_train(self, ids, mask):
            a = torch.exp(-self.sigmas.pop(0))  # [B, 1]
            like = a.unsqueeze(-1) * torch.nn.functional.one_hot(ids, 3) + (1 - a.unsqueeze(-1)) / 3
            return torch.log(probs * like).float()

    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(probs, 64 * 64, replacement=True, generator=g).view(64, 64)
    nll = float(-torch.log(probs)[x].sum())
    sched, total, marginal = Geometric(), 0.0, 0.0
    draws = 64  # the integrand is heavy-tailed near t = 1: 1024 draws give 1.011, 8 draws 0.97-0.99
    for k in range(draws):  # stratified times: one per sequence, shifted per draw
        t = ((torch.arange(64, dtype=torch.float64) + (k + 0.5) / draws) / 64).view(64, 1)
        model = Exact([sched.sigma(t), sched.sigma(torch.zeros(64, 1))])
        total += float(udm_elbo_nats(model, x, 3, g, t=t)) / draws
        lazy = Exact([torch.full((64, 1), 1e9)] * 2)  # a = 0: the marginal, whatever the input
        marginal += float(udm_elbo_nats(lazy, x, 3, g, t=t)) / draws
    assert 0.98 < total / nll < 1.05, (total, nll)
    assert marginal > 1.5 * nll
