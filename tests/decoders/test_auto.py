"""AutoDecoder and its choice rule on a synthetic profile: every preference picks what the profile
says, estimates interpolate the grid, and the requests of one batch keep their order."""

import math

import pytest

from decodekit.decoders import (
    AutoDecoder,
    AutoregressiveDecoder,
    NoQualifyingMethodError,
    Preference,
    Profile,
    SamplingParams,
)
from decodekit.decoders.auto import CandidateProfile, choose
from decodekit.models.tiny import tiny_transformer

VOCAB = 48
NAMES = ["ar", "spec", "diffusion"]


def synthetic_profile() -> Profile:
    """Grid B in {1, 4}, L in {16, 256}. ar: slow and best; spec: fast at B=1, slightly worse;
    diffusion: slow at short lengths and small batches, fastest when long, worst quality."""
    return Profile(
        batch_sizes=[1, 4], lengths=[16, 256],
        candidates={
            "ar": CandidateProfile("autoregressive", False, [[100, 100], [100, 100]], [2.0, 2.0]),
            "spec": CandidateProfile("speculative", False, [[200, 200], [120, 120]], [2.5, 2.5], [0.6, 0.7]),
            "diffusion": CandidateProfile("diffusion", True, [[50, 800], [400, 1600]], [8.0, 4.0]),
        },
        metadata={"machine": "synthetic"},
    )


def pick(preference, batch_size, length, names=NAMES):
    return choose(synthetic_profile(), names, preference, batch_size, length)["method"]


@pytest.mark.parametrize("preference, batch_size, length, expected", [
    ("fastest", 1, 16, "spec"),
    ("fastest", 1, 256, "diffusion"),
    ("fastest", 4, 16, "diffusion"),
    ("best", 1, 16, "ar"),
    ("best", 4, 256, "ar"),
    (Preference("fastest", max_perplexity=3.0), 1, 256, "spec"),
    (Preference("fastest", max_perplexity=3.0), 4, 16, "spec"),
    (Preference("fastest", max_perplexity=2.2), 1, 256, "ar"),
    # ar needs 2.56 s for 256 tokens, spec 1.28 s, diffusion 0.32 s
    (Preference("best", latency_budget=2.0), 1, 256, "spec"),
    (Preference("best", latency_budget=1.0), 1, 256, "diffusion"),
    (Preference("best", latency_budget=3.0), 1, 256, "ar"),
])
def test_each_preference_picks_what_the_profile_says(preference, batch_size, length, expected):
    assert pick(preference, batch_size, length) == expected


def test_constraints_are_inclusive_at_the_edge():
    assert pick(Preference("fastest", max_perplexity=4.0), 1, 256) == "diffusion"
    assert pick(Preference("fastest", max_perplexity=4.0 - 1e-9), 1, 256) == "spec"
    assert pick(Preference("best", latency_budget=2.56), 1, 256) == "ar"
    assert pick(Preference("best", latency_budget=2.55), 1, 256) == "spec"


def test_only_the_given_candidates_compete():
    assert pick("fastest", 1, 256, names=["ar", "spec"]) == "spec"
    assert pick("best", 1, 256, names=["spec", "diffusion"]) == "spec"


def test_nothing_qualifies_raises_a_clear_error():
    with pytest.raises(NoQualifyingMethodError, match="no candidate meets") as info:
        pick(Preference("fastest", max_perplexity=1.5, latency_budget=0.01), 1, 256)
    message = str(info.value)
    assert all(name in message for name in NAMES) and "perplexity 2 > 1.5" in message
    assert isinstance(info.value, ValueError)


def test_interpolation_is_log_linear_and_clamped():
    profile = synthetic_profile()
    mid = profile.estimate("diffusion", 1, 64)  # 64 is the geometric middle of 16 and 256
    assert mid["tokens_per_second"] == pytest.approx(math.sqrt(50 * 800))
    assert mid["perplexity"] == pytest.approx(math.sqrt(8.0 * 4.0))
    assert mid["latency_s"] == pytest.approx(64 / math.sqrt(50 * 800))
    assert profile.estimate("spec", 2, 16)["tokens_per_second"] == pytest.approx(math.sqrt(200 * 120))
    assert profile.estimate("spec", 1, 64)["acceptance_rate"] == pytest.approx(0.65)
    assert profile.estimate("ar", 1, 16)["acceptance_rate"] is None
    # outside the grid: the nearest edge, never an extrapolation
    assert profile.estimate("diffusion", 64, 4096)["tokens_per_second"] == pytest.approx(1600)
    assert profile.estimate("diffusion", 1, 1)["perplexity"] == pytest.approx(8.0)
    assert profile.estimate("diffusion", 64, 4096)["latency_s"] == pytest.approx(64 * 4096 / 1600)


def test_profile_json_round_trip(tmp_path):
    profile = synthetic_profile()
    loaded = Profile.load(profile.save(tmp_path / "sub" / "profile.json"))
    assert loaded.to_dict() == profile.to_dict()
    assert loaded.estimate("spec", 2, 100) == profile.estimate("spec", 2, 100)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(lengths=[256, 16]), "lengths"),
    (lambda d: d.update(batch_sizes=[]), "batch_sizes"),
    (lambda d: d["candidates"]["ar"].update(tokens_per_second=[[100, 100]]), "tokens_per_second"),
    (lambda d: d["candidates"]["ar"].update(tokens_per_second=[[100, 0], [100, 100]]), "tokens_per_second"),
    (lambda d: d["candidates"]["ar"].update(perplexity=[0.5, 2.0]), "perplexity"),
    (lambda d: d["candidates"]["ar"].update(perplexity=[float("nan"), 2.0]), "perplexity"),
    (lambda d: d["candidates"]["spec"].update(acceptance_rate=[0.5, 1.5]), "acceptance_rate"),
])
def test_bad_profiles_are_rejected(change, match):
    data = synthetic_profile().to_dict()
    change(data)
    with pytest.raises(ValueError, match=match):
        Profile.from_dict(data)


def test_bad_estimate_and_preference_arguments():
    profile = synthetic_profile()
    with pytest.raises(ValueError, match="name"):
        profile.estimate("nope", 1, 16)
    with pytest.raises(ValueError, match="batch_size"):
        profile.estimate("ar", 0, 16)
    with pytest.raises(ValueError, match="objective"):
        Preference("cheapest")
    with pytest.raises(ValueError, match="max_perplexity"):
        Preference("best", max_perplexity=-1)
    with pytest.raises(ValueError, match="latency_budget"):
        Preference("best", latency_budget=float("inf"))
    with pytest.raises(ValueError, match="unknown keys"):
        Preference.parse({"objective": "best", "floor": 3})
    with pytest.raises(TypeError, match="preference"):
        Preference.parse(3)
    assert Preference.parse({"max_perplexity": 3}) == Preference("fastest", max_perplexity=3)


# ------------------------------------------------------------------------------ AutoDecoder


def tiny_candidates():
    """Three AR decoders on different random models: whose output a request got shows which
    candidate ran it."""
    return {name: AutoregressiveDecoder(tiny_transformer(VOCAB, seed=i, init_std=0.5)) for i, name in enumerate(NAMES)}


PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]


def test_per_request_preferences_in_one_batch_keep_order():
    candidates = tiny_candidates()
    auto = AutoDecoder(candidates, synthetic_profile())
    prefs = ["best", "fastest", {"objective": "fastest", "max_perplexity": 3.0}, Preference("fastest")]
    sampling = SamplingParams(temperature=0.8)
    result = auto.generate(PROMPTS, max_new_tokens=8, sampling=sampling, seed=[11, 12, 13, 14], preference=prefs)
    # B = 4 and L = 8 (clamped to the grid's 16): best -> ar, fastest -> diffusion, floor 3 -> spec
    expected = ["ar", "diffusion", "spec", "diffusion"]
    assert [s.choice["method"] for s in result.stats] == expected
    for i, name in enumerate(expected):
        alone = candidates[name].generate([PROMPTS[i]], max_new_tokens=8, sampling=sampling, seed=[11 + i])
        assert result.sequences[i] == alone.sequences[0]
    assert result.generated_tokens == 4 * 8
    assert result.texts is None


def test_stats_carry_the_choice_and_the_numbers_behind_it():
    profile = synthetic_profile()
    auto = AutoDecoder(tiny_candidates(), profile, preference=Preference("fastest", max_perplexity=3.0))
    result = auto.generate(PROMPTS[:1], max_new_tokens=8, seed=0)
    choice = result.stats[0].choice
    assert choice["method"] == "spec"
    assert choice["preference"] == {"objective": "fastest", "max_perplexity": 3.0, "latency_budget": None}
    assert (choice["batch_size"], choice["max_new_tokens"]) == (1, 8)
    assert set(choice["estimates"]) == set(NAMES)
    assert choice["estimates"]["spec"] == profile.estimate("spec", 1, 8)
    assert set(choice["rejected"]) == {"diffusion"} and "perplexity" in choice["rejected"]["diffusion"]
    assert "spec" in choice["reason"]
    assert auto.choose(1, 8)["method"] == "spec"


def test_default_sampling_per_candidate_and_integer_seed():
    candidates = tiny_candidates()
    auto = AutoDecoder(candidates, synthetic_profile(), preference="best", sampling={"ar": SamplingParams.greedy()})
    result = auto.generate(PROMPTS, max_new_tokens=6, seed=5)
    alone = candidates["ar"].generate(PROMPTS, max_new_tokens=6, sampling=SamplingParams.greedy(), seed=5)
    assert result.sequences == alone.sequences


def test_nothing_qualifies_in_generate():
    auto = AutoDecoder(tiny_candidates(), synthetic_profile())
    with pytest.raises(NoQualifyingMethodError):
        auto.generate(PROMPTS, max_new_tokens=4, seed=0, preference=Preference("best", max_perplexity=1.1))


def test_bad_auto_decoder_arguments():
    profile = synthetic_profile()
    candidates = tiny_candidates()
    with pytest.raises(ValueError, match="not in the profile"):
        AutoDecoder({"other": candidates["ar"]}, profile)
    with pytest.raises(TypeError, match=r"candidates\['ar'\]"):
        AutoDecoder({"ar": object()}, profile)
    with pytest.raises(ValueError, match="candidates"):
        AutoDecoder({}, profile)
    with pytest.raises(ValueError, match="sampling"):
        AutoDecoder(candidates, profile, sampling={"other": SamplingParams()})
    with pytest.raises(FileNotFoundError, match="decodekit profile"):
        AutoDecoder(candidates, "/nonexistent/profile.json")
    auto = AutoDecoder(candidates, profile)
    with pytest.raises(ValueError, match="preference has 2 entries"):
        auto.generate(PROMPTS, max_new_tokens=4, seed=0, preference=["best", "fastest"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        auto.generate(PROMPTS, max_new_tokens=0)
