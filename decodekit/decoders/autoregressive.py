"""Autoregressive decoding (GPT, Llama): batched prefill, then one token per request per step,
on the paged cache with the fused ``sample`` op."""

from __future__ import annotations

import torch

from decodekit import ops
from decodekit.decoders.base import Decoder, Request
from decodekit.decoders.params import BatchSampling


class TokenSampler:
    """Turns a batch's last-row logits into tokens: penalties (only if a request asked for
    them), then the fused ``sample`` op keyed by each request's seed and step counter.

    Penalty counts cover the prompt and the generated tokens (Hugging Face's repetition penalty
    convention) and live on the model's device as ``[N, V]`` int32, updated without a sync.
    """

    def __init__(self, requests: list[Request], vocab: int, device: torch.device):
        self.params = BatchSampling.of([r.sampling for r in requests], device)
        # One SamplingParams for the whole batch (the usual case): pass its values as Python
        # scalars, which the ops turn into cached constant rows, instead of gathering and
        # range-checking six [B] tensors every step.
        first = requests[0].sampling if requests else None
        self.shared = first if all(r.sampling == first for r in requests) else None
        self.seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64, device=device)
        self.device = device
        self.counts = None
        if self.params.any_penalty:
            self.counts = torch.zeros(len(requests), vocab, dtype=torch.int32, device=device)
            for r in requests:
                prompt = torch.tensor(r.prompt, dtype=torch.int64, device=device)
                self.counts[r.index].scatter_add_(0, prompt, torch.ones_like(prompt, dtype=torch.int32))

    def rows(self, requests: list[Request]) -> torch.Tensor:
        return torch.tensor([r.index for r in requests], dtype=torch.int64).to(self.device)

    def penalize(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.counts is None:
            return logits
        if self.shared is not None:
            s = self.shared
            repetition, frequency, presence = s.repetition_penalty, s.frequency_penalty, s.presence_penalty
        else:
            p = self.params.rows(rows)
            repetition, frequency, presence = p.repetition, p.frequency, p.presence
        return ops.apply_penalties(logits, token_counts=self.counts.index_select(0, rows),
                                   repetition=repetition, frequency=frequency, presence=presence)

    def sample(self, logits: torch.Tensor, rows: torch.Tensor, offsets: list[int]) -> ops.SampleOutput:
        """One token per row of ``logits [B, V]``; ``rows`` are the requests' indices."""
        if self.shared is not None:
            s = self.shared
            filters = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p)
        else:
            p = self.params.rows(rows)
            filters = dict(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p)
        logits = self.penalize(logits, rows)
        offset = torch.tensor(offsets, dtype=torch.int64).to(self.device)
        out = ops.sample(logits, **filters, seed=self.seeds.index_select(0, rows), offset=offset)
        if self.counts is not None:
            self.counts.index_put_((rows, out.tokens.clamp(min=0)), torch.ones_like(rows, dtype=torch.int32), accumulate=True)
        return out


class AutoregressiveDecoder(Decoder):
    """One token per request per model call (the baseline every other family is compared with).

    Example::

        model = Transformer.from_hf("path/to/llama")          # or HFModel(hf_model)
        decoder = AutoregressiveDecoder(model, tokenizer=tokenizer)
        result = decoder.generate(["In the beginning"], max_new_tokens=64,
                                  sampling=SamplingParams(temperature=0.8, top_p=0.95), seed=0)
        print(result.texts[0], result.stats[0].tokens_per_second)

    The prefill of all prompts is one model call; each decode step is one call over the
    unfinished requests; a finished request's blocks are freed at once. Reading the sampled tokens
    back to check stop ids is the one host sync per step.
    """

    def _run(self, requests: list[Request], caches: dict) -> None:
        model = self.model
        cache = self._cache(model, requests, caches)
        sampler = TokenSampler(requests, model.vocab_size, model.device)
        for r in requests:
            cache.allocator.allocate(r.seq_id)
        active = list(requests)
        logits = self._model_step(model, cache, active, [r.prompt for r in active])
        while active:
            rows = sampler.rows(active)
            out = sampler.sample(logits, rows, [len(r.output) for r in active])
            tokens, valid = out.tokens.tolist(), out.valid.tolist()
            still = []
            for request, token, ok in zip(active, tokens, valid):
                if not ok:
                    self._finish(request, "invalid_logits")
                else:
                    request.emit([token])
                if request.finished:
                    self._finish(request)
                    cache.allocator.free(request.seq_id)
                    model.release([request.seq_id])
                else:
                    still.append(request)
            active = still
            if active:
                logits = self._model_step(model, cache, active, [[r.output[-1]] for r in active])
