"""The shipped zoo profile, AutoDecoder's choices on it, and `decodekit profile` / `decodekit
generate` end to end on reduced settings."""

import json

import pytest
import torch

from decodekit import zoo
from decodekit.cli import main
from decodekit.decoders import NoQualifyingMethodError, Preference, Profile
from decodekit.decoders.auto import choose
from decodekit.demo import methods
from decodekit.profile import ZOO_PROFILE_PATH, held_out_prompts

HAVE_WEIGHTS = all((zoo.WEIGHTS_DIR / name / "model.safetensors").is_file() for name in zoo.NAMES)
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="the zoo's weights are not in this checkout")


@pytest.fixture(scope="module")
def zoo_profile() -> Profile:
    return Profile.load(ZOO_PROFILE_PATH)


def test_zoo_profile_covers_every_demo_method_with_machine_metadata(zoo_profile):
    assert set(zoo_profile.candidates) == {m.name for m in methods(zoo.ByteTokenizer())}
    machine = zoo_profile.metadata["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["measured_utc"]
    assert set(zoo_profile.metadata["models"]) == set(zoo.NAMES)
    assert zoo_profile.candidates["spec chain"].acceptance_rate is not None
    assert zoo_profile.candidates["ar"].acceptance_rate is None


def test_long_output_with_a_floor_the_parallel_method_meets_picks_a_parallel_method(zoo_profile):
    """At the longest profiled length, with the floor set to the measured perplexity of the
    fastest parallel method, "fastest" picks a parallel method; a floor just below every parallel
    method's perplexity falls back to a left-to-right one."""
    names = list(zoo_profile.candidates)
    length, batch = zoo_profile.lengths[-1], zoo_profile.batch_sizes[0]
    parallel = [n for n in names if zoo_profile.candidates[n].parallel]
    estimates = {n: zoo_profile.estimate(n, batch, length) for n in names}
    fastest_parallel = max(parallel, key=lambda n: estimates[n]["tokens_per_second"])
    floor = estimates[fastest_parallel]["perplexity"]
    choice = choose(zoo_profile, names, Preference("fastest", max_perplexity=floor), batch, length)
    assert zoo_profile.candidates[choice["method"]].parallel, choice["reason"]
    assert choice["estimates"][choice["method"]]["perplexity"] <= floor

    below = min(estimates[n]["perplexity"] for n in parallel) * (1 - 1e-6)
    serial = choose(zoo_profile, names, Preference("fastest", max_perplexity=below), batch, length)
    assert not zoo_profile.candidates[serial["method"]].parallel


def test_zoo_profile_best_is_the_lowest_measured_perplexity(zoo_profile):
    names = list(zoo_profile.candidates)
    length = zoo_profile.lengths[-1]
    best = choose(zoo_profile, names, "best", 1, length)["method"]
    assert zoo_profile.candidates[best].perplexity[-1] == min(c.perplexity[-1] for c in zoo_profile.candidates.values())
    with pytest.raises(NoQualifyingMethodError):
        choose(zoo_profile, names, Preference("best", max_perplexity=1.0), 1, length)


def test_zoo_profile_json_round_trip(zoo_profile, tmp_path):
    path = zoo_profile.save(tmp_path / "profile.json")
    assert Profile.load(path).to_dict() == zoo_profile.to_dict()
    assert json.loads(path.read_text()) == json.loads(ZOO_PROFILE_PATH.read_text())


def test_held_out_prompts_are_distinct_verse_openings():
    prompts = held_out_prompts(4)
    assert len(set(prompts)) == 4 and all(p.endswith("\n") and ":1 " in p for p in prompts)


@needs_weights
def test_profile_cli_end_to_end_on_a_reduced_grid(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "profile.json"
    assert main(["profile", "--quick", "--methods", "ar", "spec chain", "mask-predict", "--batch-sizes", "1", "2",
                 "--lengths", "8", "--out", str(out)]) == 0
    profile = Profile.load(out)
    assert list(profile.candidates) == ["ar", "spec chain", "mask-predict"]
    assert (profile.batch_sizes, profile.lengths) == ([1, 2], [8])
    assert profile.candidates["mask-predict"].parallel and not profile.candidates["ar"].parallel
    assert profile.candidates["spec chain"].acceptance_rate is not None
    assert all(c.perplexity[0] >= 1.0 for c in profile.candidates.values())
    assert "wrote" in capsys.readouterr().out


@needs_weights
def test_generate_cli_auto_reports_its_choice(tmp_path, capsys):
    torch.set_num_threads(1)
    prompt = "Ruth1:1 Now it came to pass\\n"
    assert main(["generate", "--method", "auto", "--prompt", prompt, "--max-new-tokens", "12",
                 "--profile", str(ZOO_PROFILE_PATH), "--prefer", "best"]) == 0
    printed = capsys.readouterr().out
    best = choose(Profile.load(ZOO_PROFILE_PATH), list(Profile.load(ZOO_PROFILE_PATH).candidates), "best", 1, 12)
    assert f"auto chose {best['method']!r}" in printed and "tokens/s" in printed
    assert main(["generate", "--method", "spec-chain", "--prompt", prompt, "--max-new-tokens", "8"]) == 0
    assert "acceptance" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no candidate meets"):
        main(["generate", "--method", "auto", "--prompt", prompt, "--max-new-tokens", "8",
              "--profile", str(ZOO_PROFILE_PATH), "--max-perplexity", "1.0"])


def test_bad_grids_are_rejected_before_measuring():
    from decodekit.profile import measure

    with pytest.raises(ValueError, match="batch_sizes"):
        measure([], {}, zoo.ByteTokenizer(), batch_sizes=[4, 1], lengths=[8], progress=False)
    with pytest.raises(ValueError, match="lengths"):
        measure([], {}, zoo.ByteTokenizer(), batch_sizes=[1], lengths=[0], progress=False)


@needs_weights
def test_profile_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="--lengths"):
        main(["profile", "--lengths", "0", "--out", str(tmp_path / "p.json")])
    with pytest.raises(SystemExit, match="unknown"):
        main(["profile", "--methods", "nope", "--out", str(tmp_path / "p.json")])
    assert not (tmp_path / "p.json").exists()
