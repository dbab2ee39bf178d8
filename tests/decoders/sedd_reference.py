"""An independent, straightforward SEDD sampler for the tests (the semantics of
``louaaron/Score-Entropy-Discrete-Diffusion`` ``graph_lib.py`` / ``sampling.py``, rewritten here):
dense graph functions over the vocabulary, the clean-token -> concrete-score conversion as the
literal Bayes sum over the clean token, the Euler / analytic / denoiser updates, and a
categorical draw by Gumbel-max on DESIGN.md's Philox uniforms. Float64 throughout, one request
at a time, the model run with ``forward_train`` (not the paged path)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from decodekit.reference import rng
from decodekit.reference.rng import Stream

INIT_OFFSET = 2**63 - 1


def loglinear(t, eps=1e-3):
    """(sigma, rate) of SEDD's LogLinearNoise."""
    return -math.log1p(-(1 - eps) * t), (1 - eps) / (1 - (1 - eps) * t)


def geometric(t, sigma_min=1e-4, sigma_max=20.0):
    """(sigma, rate) of SEDD's GeometricNoise."""
    sigma = sigma_min ** (1 - t) * sigma_max ** t
    return sigma, sigma * (math.log(sigma_max) - math.log(sigma_min))


def f32(value: float) -> float:
    """The float32 the op reads for a float64 sigma."""
    return float(torch.tensor(value, dtype=torch.float32))


class Absorbing:
    def __init__(self, dim: int, mask: int):
        self.dim, self.mask = dim, mask

    def transition(self, sigma: float) -> torch.Tensor:
        """``T[x0, y] = p_sigma(y | x0)``."""
        t = math.exp(-sigma) * torch.eye(self.dim, dtype=torch.float64)
        t[:, self.mask] += 1 - math.exp(-sigma)
        t[self.mask, self.mask] = 1.0
        return t

    def transp_rate(self, x: torch.Tensor) -> torch.Tensor:
        edge = -F.one_hot(x, self.dim).double()
        edge[x == self.mask] += 1
        return edge

    def transp_transition(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        edge = math.exp(-sigma) * F.one_hot(x, self.dim).double()
        edge += torch.where(x == self.mask, 1 - math.exp(-sigma), 0.0).unsqueeze(-1)
        return edge

    def staggered_score(self, score: torch.Tensor, dsigma: float) -> torch.Tensor:
        extra = (1 - math.exp(dsigma)) * score.sum(-1)
        out = score * math.exp(dsigma)
        out[..., self.mask] += extra
        return out

    def needs_score(self, x: torch.Tensor) -> torch.Tensor:
        return x == self.mask  # unmasked positions never move: their score is never used


class Uniform:
    def __init__(self, dim: int):
        self.dim = dim

    def transition(self, sigma: float) -> torch.Tensor:
        jump = (1 - math.exp(-sigma)) / self.dim
        return math.exp(-sigma) * torch.eye(self.dim, dtype=torch.float64) + jump

    def transp_rate(self, x: torch.Tensor) -> torch.Tensor:
        edge = torch.full((*x.shape, self.dim), 1 / self.dim, dtype=torch.float64)
        return edge.scatter(-1, x.unsqueeze(-1), -(self.dim - 1) / self.dim)

    def transp_transition(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.transition(sigma)[x]  # symmetric

    def staggered_score(self, score: torch.Tensor, dsigma: float) -> torch.Tensor:
        epow = math.exp(-dsigma)
        return (epow - 1) / (self.dim * epow) * score.sum(-1, keepdim=True) + score / epow

    def needs_score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x, dtype=torch.bool)


def reverse_rate(graph, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    rate = graph.transp_rate(x) * score
    rate.scatter_(-1, x.unsqueeze(-1), 0.0)
    return rate.scatter(-1, x.unsqueeze(-1), -rate.sum(-1, keepdim=True))


def score_from_clean(graph, p: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``S[l, y] = sum_x0 p[l, x0] p_sigma(y | x0) / p_sigma(x_l | x0)`` (Bayes), ones where the
    graph never reads the score."""
    trans = graph.transition(sigma)
    need = graph.needs_score(x)
    score = torch.ones_like(p)
    for pos in need.nonzero().flatten().tolist():
        ratio = trans / trans[:, x[pos]].unsqueeze(-1)  # [x0, y]
        score[pos] = (p[pos].unsqueeze(-1) * ratio).sum(0)
    score.scatter_(-1, x.unsqueeze(-1), 1.0)
    return score


def clean_distribution(graph, logits: torch.Tensor) -> torch.Tensor:
    logits = logits.double().clone()
    if isinstance(graph, Absorbing):
        logits[..., graph.mask] = -math.inf  # the clean token is never the mask
    return torch.softmax(logits, -1)


def update(graph, x, score, sampler: str, dsigma: float) -> torch.Tensor:
    """Unnormalised next-token weights: EulerPredictor, AnalyticPredictor, Denoiser."""
    if sampler == "euler":
        return F.one_hot(x, graph.dim).double() + dsigma * reverse_rate(graph, x, score)
    probs = graph.staggered_score(score, dsigma) * graph.transp_transition(x, dsigma)
    if sampler == "final" and isinstance(graph, Absorbing):
        probs[..., graph.mask] = 0.0
    return probs


def draw(probs: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Gumbel-max over the positive weights with u = uniform(seed, offset, DIFFUSION_TOKEN, pos * V + v)."""
    length, dim = probs.shape
    c0 = torch.arange(length * dim, dtype=torch.int64).view(length, dim) & rng.MASK32
    u = rng.uniform(torch.tensor(seed), torch.tensor(offset), Stream.DIFFUSION_TOKEN, c0).double()
    key = torch.where(probs > 0, torch.log(probs.clamp_min(1e-300)) - torch.log(-torch.log(u)), -math.inf)
    return key.argmax(-1)


def initial_canvas(graph, length: int, seed: int) -> torch.Tensor:
    if isinstance(graph, Absorbing):
        return torch.full((length,), graph.mask, dtype=torch.int64)
    u = rng.uniform(torch.tensor(seed), torch.tensor(INIT_OFFSET), Stream.DIFFUSION_TOKEN, torch.arange(length))
    return (u.double() * graph.dim).long().clamp(max=graph.dim - 1)


def schedule(graph, sampler: str, steps: int, eps: float, denoise: bool, noise=None):
    """[(sampler, sigma, dsigma)] as SEDD's pc_sampler walks ``linspace(1, eps, steps + 1)``."""
    noise = noise or (loglinear if isinstance(graph, Absorbing) else geometric)
    ts = torch.linspace(1, eps, steps + 1, dtype=torch.float64).tolist()
    dt = (1 - eps) / steps
    plan = []
    for t in ts[:-1]:
        sigma, rate = noise(t)
        dsigma = rate * dt if sampler == "euler" else sigma - noise(t - dt)[0]
        plan.append((sampler, sigma, dsigma))
    if denoise:
        plan.append(("final", noise(ts[-1])[0], noise(ts[-1])[0]))
    return plan


@torch.no_grad()
def sedd_generate(model, prompt, length, graph, *, sampler, steps, seed, eps=1e-5, denoise=True,
                  parameterization="clean_logits", template=None):
    """The final canvas (``length`` ids) of one request."""
    x = initial_canvas(graph, length, seed)
    given = [t is not None for t in template] if template else [False] * length
    if template:
        x = torch.tensor([t if t is not None else int(v) for t, v in zip(template, x)])
    for offset, (kind, sigma, dsigma) in enumerate(schedule(graph, sampler, steps, eps, denoise)):
        sigma, dsigma = f32(sigma), f32(dsigma)
        logits = model.forward_train(torch.tensor([list(prompt) + x.tolist()]), "full")[0, len(prompt):, :graph.dim]
        if parameterization == "clean_logits":
            score = score_from_clean(graph, clean_distribution(graph, logits), x, sigma)
        else:
            score = logits.double().exp().scatter(-1, x.unsqueeze(-1), 1.0)
        new = draw(update(graph, x, score, kind, dsigma), seed, offset)
        keep = torch.tensor(given) | (x != graph.mask if isinstance(graph, Absorbing) else torch.zeros_like(x).bool())
        x = torch.where(keep, x, new)
    return x.tolist()
