"""``AutoDecoder``: pick a decoder per request from a measured profile and a preference.

A :class:`Profile` (written by ``decodekit profile`` on the user's machine and models) holds, for
every candidate method, tokens per second measured on a grid of (batch size, output length) points
and the quality of what it wrote at each length: generative perplexity per token under a reference
AR model (lower is better) and, for speculative decoding, the draft acceptance rate.

The choice rule uses nothing but the profile and the request's :class:`Preference`:

1. Estimate each candidate at the call's batch size ``B`` (every request of the ``generate`` call,
   whatever group it lands in) and the requested ``max_new_tokens`` ``L``:

   * tokens/s: bilinear interpolation of ``log(tokens/s)`` over ``(log B, log L)`` between the
     measured grid points around it; outside the grid the nearest edge value is used (no
     extrapolation: a profile says nothing about points it did not measure);
   * perplexity and acceptance rate: linear interpolation in ``log L`` (log perplexity), clamped
     the same way;
   * latency: ``B * L / tokens_per_second``, the seconds that candidate needs for the whole batch
     (the time its group would take if every request wrote ``L`` tokens).

2. Drop candidates whose perplexity exceeds ``max_perplexity`` or whose latency exceeds
   ``latency_budget`` (where given). If none remains, :class:`NoQualifyingMethodError` (a
   ValueError) lists every candidate's estimate and the constraint it failed: there is no silent
   fallback, the caller loosens the preference.

3. ``"fastest"``: the highest tokens/s among the rest (ties: lower perplexity, then name);
   ``"best"``: the lowest perplexity (ties: higher tokens/s, then name).

``AutoDecoder.generate`` groups the requests by chosen method, runs each group with its decoder
(seeds and sampling parameters follow each request), and returns one :class:`GenerationResult` in
the original order whose ``stats[i].choice`` records the method, the preference and the numbers of
every candidate behind the choice. Groups run one after another, so a request's ``wall_time``
counts from the start of its group.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from decodekit.decoders.base import Decoder
from decodekit.decoders.params import SamplingParams
from decodekit.decoders.result import GenerationResult

PROFILE_FORMAT = "decodekit-profile/1"
OBJECTIVES = ("fastest", "best")


class NoQualifyingMethodError(ValueError):
    """No candidate meets the preference's quality floor and latency budget."""


# ---------------------------------------------------------------------------------------- profile


def _increasing_ints(values, name: str) -> list[int]:
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of ints, got {values!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name} must hold ints >= 1, got {values!r}")
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {values!r}")
    return list(values)


def _positive_row(values, count: int, name: str, *, at_least: float = 0.0, inclusive: bool = False) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise ValueError(f"{name} must be a list of {count} numbers, got {values!r}")
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < at_least or (v == at_least and not inclusive):
            bound = ">=" if inclusive else ">"
            raise ValueError(f"{name} must hold finite numbers {bound} {at_least}, got {values!r}")
        out.append(float(v))
    return out


@dataclass
class CandidateProfile:
    """Measurements of one method.

    Attributes:
        family: the method's generation family (as in ``decodekit demo``).
        parallel: whether it writes several positions per model call by design (diffusion,
            mask-predict, planned spans) rather than left to right.
        tokens_per_second: ``[len(batch_sizes)][len(lengths)]`` measured generated tokens/s.
        perplexity: ``[len(lengths)]`` generative perplexity per token of its outputs (>= 1).
        acceptance_rate: ``[len(lengths)]`` draft acceptance rate in [0, 1], or None.
    """

    family: str
    parallel: bool
    tokens_per_second: list[list[float]]
    perplexity: list[float]
    acceptance_rate: list[float] | None = None


@dataclass
class Profile:
    """Measured speed and quality of candidate methods (JSON: :meth:`save` / :meth:`load`).

    Attributes:
        batch_sizes, lengths: the measured grid (strictly increasing ints >= 1).
        candidates: method name -> :class:`CandidateProfile`.
        metadata: free-form description of where it was measured (machine, models, settings).
    """

    batch_sizes: list[int]
    lengths: list[int]
    candidates: dict[str, CandidateProfile]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.batch_sizes = _increasing_ints(self.batch_sizes, "batch_sizes")
        self.lengths = _increasing_ints(self.lengths, "lengths")
        if not isinstance(self.candidates, dict) or not self.candidates:
            raise ValueError("candidates must be a non-empty dict of name -> CandidateProfile")
        for name, c in list(self.candidates.items()):
            if isinstance(c, dict):
                c = self.candidates[name] = CandidateProfile(**c)
            if not isinstance(c, CandidateProfile):
                raise TypeError(f"candidates[{name!r}] must be a CandidateProfile, got {type(c).__name__}")
            rows = c.tokens_per_second
            if not isinstance(rows, (list, tuple)) or len(rows) != len(self.batch_sizes):
                raise ValueError(f"candidates[{name!r}].tokens_per_second needs one row per batch size "
                                 f"({len(self.batch_sizes)}), got {rows!r}")
            c.tokens_per_second = [_positive_row(r, len(self.lengths), f"candidates[{name!r}].tokens_per_second[{i}]")
                                   for i, r in enumerate(rows)]
            c.perplexity = _positive_row(c.perplexity, len(self.lengths), f"candidates[{name!r}].perplexity",
                                         at_least=1.0, inclusive=True)
            if c.acceptance_rate is not None:
                c.acceptance_rate = _positive_row(c.acceptance_rate, len(self.lengths),
                                                  f"candidates[{name!r}].acceptance_rate", inclusive=True)
                if max(c.acceptance_rate) > 1.0:
                    raise ValueError(f"candidates[{name!r}].acceptance_rate must be in [0, 1], got {c.acceptance_rate}")

    # -------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        return {"format": PROFILE_FORMAT, "batch_sizes": self.batch_sizes, "lengths": self.lengths,
                "candidates": {n: asdict(c) for n, c in self.candidates.items()}, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a decodekit profile: format must be {PROFILE_FORMAT!r}, got {found!r}")
        return cls(data["batch_sizes"], data["lengths"], dict(data["candidates"]), data.get("metadata", {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no profile at {path}: write one with `decodekit profile --out {path}`")
        return cls.from_dict(json.loads(path.read_text()))

    # -------------------------------------------------------------------------- estimates

    def estimate(self, name: str, batch_size: int, length: int) -> dict:
        """Interpolated numbers of candidate ``name`` at ``(batch_size, length)`` (module docstring):
        ``tokens_per_second``, ``latency_s``, ``perplexity``, ``acceptance_rate`` (or None)."""
        if name not in self.candidates:
            raise ValueError(f"name must be one of the profile's candidates {sorted(self.candidates)}, got {name!r}")
        for arg, value in (("batch_size", batch_size), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        c = self.candidates[name]
        log_tps = _bilinear([[math.log(v) for v in row] for row in c.tokens_per_second],
                            self.batch_sizes, self.lengths, batch_size, length)
        tps = math.exp(log_tps)
        ppl = math.exp(_linear([math.log(v) for v in c.perplexity], self.lengths, length))
        acc = None if c.acceptance_rate is None else _linear(c.acceptance_rate, self.lengths, length)
        return {"tokens_per_second": tps, "latency_s": batch_size * length / tps, "perplexity": ppl,
                "acceptance_rate": acc}


def _bracket(grid: Sequence[int], x: int) -> tuple[int, int, float]:
    """Indices ``(i, j)`` of the grid points around ``x`` and the weight of ``j`` in log space,
    clamped to the grid's ends."""
    if x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    j = bisect_right(grid, x)
    i = j - 1
    return i, j, (math.log(x) - math.log(grid[i])) / (math.log(grid[j]) - math.log(grid[i]))


def _linear(values: Sequence[float], grid: Sequence[int], x: int) -> float:
    i, j, w = _bracket(grid, x)
    return values[i] * (1 - w) + values[j] * w


def _bilinear(table, rows: Sequence[int], cols: Sequence[int], r: int, c: int) -> float:
    i, j, w = _bracket(rows, r)
    return _linear(table[i], cols, c) * (1 - w) + _linear(table[j], cols, c) * w


# ---------------------------------------------------------------------------------------- preference


@dataclass(frozen=True)
class Preference:
    """What a request wants.

    Attributes:
        objective: ``"fastest"`` (highest tokens/s) or ``"best"`` (lowest perplexity) among the
            candidates that meet the constraints.
        max_perplexity: quality floor: the estimated generative perplexity must be <= this.
        latency_budget: seconds: the estimated latency must be <= this.

    Combinations read naturally: ``Preference("fastest", max_perplexity=8)`` is the fastest method
    meeting the floor, ``Preference("best", latency_budget=0.5)`` the best one within the budget.
    """

    objective: str = "fastest"
    max_perplexity: float | None = None
    latency_budget: float | None = None

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("max_perplexity", "latency_budget"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be None or a finite number > 0, got {value!r}")

    @classmethod
    def parse(cls, value) -> "Preference":
        """A Preference from a Preference, an objective string or a dict of its fields."""
        if isinstance(value, Preference):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            unknown = set(value) - {"objective", "max_perplexity", "latency_budget"}
            if unknown:
                raise ValueError(f"preference has unknown keys {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"preference must be a Preference, 'fastest', 'best' or a dict, got {type(value).__name__}")

    def describe(self) -> str:
        parts = [self.objective]
        if self.max_perplexity is not None:
            parts.append(f"perplexity <= {self.max_perplexity:g}")
        if self.latency_budget is not None:
            parts.append(f"latency <= {self.latency_budget:g} s")
        return parts[0] + (" with " + " and ".join(parts[1:]) if parts[1:] else "")


def choose(profile: Profile, names: Sequence[str], preference, batch_size: int, max_new_tokens: int) -> dict:
    """The choice rule (module docstring) over ``names``; returns the choice record stored in each
    request's ``stats.choice``: ``method``, ``preference``, ``batch_size``, ``max_new_tokens``,
    ``reason``, ``estimates`` (every candidate) and ``rejected`` (name -> failed constraint)."""
    preference = Preference.parse(preference)
    estimates = {n: profile.estimate(n, batch_size, max_new_tokens) for n in names}
    rejected = {}
    for n, e in estimates.items():
        failed = []
        if preference.max_perplexity is not None and e["perplexity"] > preference.max_perplexity:
            failed.append(f"perplexity {e['perplexity']:.3g} > {preference.max_perplexity:g}")
        if preference.latency_budget is not None and e["latency_s"] > preference.latency_budget:
            failed.append(f"latency {e['latency_s']:.3g} s > {preference.latency_budget:g} s")
        if failed:
            rejected[n] = "; ".join(failed)
    qualified = [n for n in names if n not in rejected]
    if not qualified:
        lines = "\n".join(f"  {n}: {rejected[n]}" for n in names)
        raise NoQualifyingMethodError(
            f"no candidate meets the preference '{preference.describe()}' at batch size {batch_size} and "
            f"{max_new_tokens} new tokens (profile estimates):\n{lines}\nloosen max_perplexity or latency_budget")
    if preference.objective == "fastest":
        key = lambda n: (-estimates[n]["tokens_per_second"], estimates[n]["perplexity"], n)  # noqa: E731
    else:
        key = lambda n: (estimates[n]["perplexity"], -estimates[n]["tokens_per_second"], n)  # noqa: E731
    method = min(qualified, key=key)
    e = estimates[method]
    reason = (f"{preference.describe()}: {method} ({e['tokens_per_second']:.4g} tokens/s, perplexity "
              f"{e['perplexity']:.3g}, est. {e['latency_s']:.3g} s) among {len(qualified)} of {len(names)} "
              f"candidates meeting the constraints")
    return {"method": method, "preference": asdict(preference), "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "reason": reason, "estimates": estimates, "rejected": rejected}


# ---------------------------------------------------------------------------------------- decoder


class AutoDecoder:
    """Runs each request with the candidate the profile says suits its preference best.

    Args:
        candidates: method name -> a :class:`Decoder`; every name must be in the profile.
        profile: a :class:`Profile` or the path of its JSON.
        preference: the default preference (a :class:`Preference`, ``"fastest"``, ``"best"`` or a
            dict of Preference fields).
        sampling: optional method name -> :class:`SamplingParams` used when ``generate`` gets no
            ``sampling`` (e.g. greedy for diffusion, temperature for AR).
    """

    def __init__(self, candidates: dict, profile, *, preference="fastest", sampling: dict | None = None):
        if not isinstance(candidates, dict) or not candidates:
            raise ValueError("candidates must be a non-empty dict of method name -> Decoder")
        self.profile = profile if isinstance(profile, Profile) else Profile.load(profile)
        for name, decoder in candidates.items():
            if not isinstance(decoder, Decoder):
                raise TypeError(f"candidates[{name!r}] must be a Decoder, got {type(decoder).__name__}")
            if name not in self.profile.candidates:
                raise ValueError(
                    f"candidates[{name!r}] is not in the profile (it has {sorted(self.profile.candidates)})")
        sampling = dict(sampling or {})
        for name, params in sampling.items():
            if name not in candidates:
                raise ValueError(f"sampling names {name!r}, which is not a candidate")
            if not isinstance(params, SamplingParams):
                raise TypeError(f"sampling[{name!r}] must be a SamplingParams, got {type(params).__name__}")
        self.candidates = dict(candidates)
        self.preference = Preference.parse(preference)
        self.sampling = sampling

    def choose(self, batch_size: int, max_new_tokens: int, preference=None) -> dict:
        """The choice record for a call of ``batch_size`` requests (see :func:`choose`)."""
        preference = self.preference if preference is None else preference
        return choose(self.profile, list(self.candidates), preference, batch_size, max_new_tokens)

    def generate(self, prompts, *, max_new_tokens: int, sampling=None, stop_token_ids=None, seed=None,
                 preference=None) -> GenerationResult:
        """Like :meth:`Decoder.generate`, plus ``preference``: None (the default preference), one
        preference for every request, or a list with one per prompt."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of prompts, got {prompts!r}")
        count = len(prompts)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        prefs = self._per_request(preference, count, "preference")
        seeds = Decoder._seeds(seed, count)
        params = None if sampling is None else Decoder._sampling_list(sampling, count)
        choices, groups = {}, {}
        for i, pref in enumerate(prefs):
            pref = self.preference if pref is None else Preference.parse(pref)
            if pref not in choices:
                choices[pref] = self.choose(count, max_new_tokens, pref)
            groups.setdefault(choices[pref]["method"], []).append((i, choices[pref]))
        sequences, stats, texts = [None] * count, [None] * count, [None] * count
        wall, forward_calls = 0.0, 0
        for method, members in groups.items():
            index = [i for i, _ in members]
            group_sampling = self.sampling.get(method) if params is None else [params[i] for i in index]
            result = self.candidates[method].generate(
                [prompts[i] for i in index], max_new_tokens=max_new_tokens, sampling=group_sampling,
                stop_token_ids=stop_token_ids, seed=[seeds[i] for i in index])
            wall += result.wall_time
            forward_calls += result.forward_calls
            for k, (i, choice) in enumerate(members):
                sequences[i] = result.sequences[k]
                stats[i] = result.stats[k]
                stats[i].choice = json.loads(json.dumps(choice))  # a private copy per request
                texts[i] = None if result.texts is None else result.texts[k]
        merged_texts = None if any(t is None for t in texts) else texts
        return GenerationResult(sequences, stats, wall, forward_calls, merged_texts)

    @staticmethod
    def _per_request(value, count: int, name: str) -> list:
        if isinstance(value, (list, tuple)):
            if len(value) != count:
                raise ValueError(f"{name} has {len(value)} entries for {count} prompts; give one or one per prompt")
            return list(value)
        return [value] * count
