"""Speculative verification microbenchmark: fused `verify_chain` / `verify_tree` against what
users otherwise run, measured in the same run.

Baselines:
* chains: a torch rejection sampler in the style of vLLM's (softmax of every position, gather
  of p and q at the drafts, per-position coins, first rejection by cumprod, recovered tokens
  from max(p - q, 0) by an exponential race at every position, bonus from the last position);
* trees: EAGLE's reference style: softmax of every node, then a Python loop over rows and nodes
  (siblings tried in turn, residual renormalised after every rejection, torch.multinomial).

Inputs: target logits ``randn * 3`` (a spread like a language model's); chains draw their drafts
from ``q = softmax(target + 0.5 * noise)`` (acceptance about 0.6-0.8 per token); trees come from
``build_tree_from_topk`` (D = 6 levels, K = 4, N = 64) with the target's logit of every node's
first child raised so walks reach depth 4-6, the expensive case. GB/s counts the target (and
draft) rows a walk visits, the bytes the op cannot avoid.

Run: ``decodekit bench spec_verify [--quick] [--device cpu|cuda] [--out DIR]``
"""

from __future__ import annotations

import sys

import torch

from decodekit import ops
from decodekit.bench import harness
from decodekit.ops import _backend

CHAIN_MODES = {
    "lossless": dict(use_probs=True),
    "lossless, no draft probs": dict(use_probs=False),
    "lossless, T0.8 top-k50 top-p0.9": dict(use_probs=True, temperature=0.8, top_k=50, top_p=0.9),
    "greedy": dict(use_probs=False, method="greedy"),
}
TREE_MODES = {
    "lossless (SpecInfer, draft probs)": dict(use_probs=True),
    "lossless, no draft probs (EAGLE)": dict(use_probs=False),
    "greedy": dict(use_probs=False, method="greedy"),
}
QUICK_CHAIN = ["lossless", "greedy"]
QUICK_TREE = ["lossless, no draft probs (EAGLE)", "lossless (SpecInfer, draft probs)"]


# ----------------------------------------------------------------------------- baselines


def _filtered_probs(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """vLLM's native path: temperature, sort-based top-k / top-p mask, softmax."""
    scores = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(scores, top_k).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - top_p
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores.softmax(-1)


def torch_chain_baseline(target_logits, draft_tokens, draft_probs, method="lossless", temperature=1.0, top_k=0, top_p=1.0):
    """A straightforward torch rejection sampler (vLLM style), tokens [B, n+1] -1 padded."""
    batch, n = draft_tokens.shape
    if method == "greedy":
        target = target_logits.argmax(-1)
        match = (target[:, :n] == draft_tokens).int().cumprod(-1)
        accepted = match.sum(-1)
        out = torch.where(torch.arange(n + 1, device=target.device) <= accepted.unsqueeze(-1), target, -1)
        return out, accepted
    p = _filtered_probs(target_logits, temperature, top_k, top_p)
    rows = torch.arange(batch, device=p.device).unsqueeze(-1)
    cols = torch.arange(n, device=p.device)
    p_draft = p[rows, cols, draft_tokens]
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
        residual = p[:, :n].clone()
        residual[rows, cols, draft_tokens] = 0.0
    else:
        q_draft = draft_probs[rows, cols, draft_tokens]
        residual = (p[:, :n] - draft_probs).clamp_min(0.0)
    coins = torch.rand(batch, n, device=p.device)
    accept = (coins * q_draft < p_draft).int().cumprod(-1)
    accepted = accept.sum(-1)
    exp_race = torch.empty_like(residual).exponential_()
    recovered = (residual / exp_race).argmax(-1)
    bonus = torch.multinomial(p[:, n], 1).squeeze(-1)
    final = torch.where(accepted == n, bonus, recovered.gather(1, accepted.clamp(max=n - 1).unsqueeze(-1)).squeeze(-1))
    out = torch.full((batch, n + 1), -1, dtype=torch.int64, device=p.device)
    out[:, :n] = torch.where(cols < accepted.unsqueeze(-1), draft_tokens, -1)
    out.scatter_(1, accepted.unsqueeze(-1), final.unsqueeze(-1))
    return out, accepted


def python_tree_baseline(target_logits, tree, draft_probs, method="lossless"):
    """EAGLE-reference style: softmax everywhere, then a Python loop over rows and nodes."""
    probs = target_logits.float().softmax(-1)
    parents = tree.parents.tolist()
    tokens = tree.tokens.tolist()
    out = []
    for b in range(len(parents)):
        children = [[] for _ in parents[b]]
        for node, parent in enumerate(parents[b]):
            if parent >= 0:
                children[parent].append(node)
        node, emitted = 0, []
        while True:
            gtp = probs[b, node].clone()
            accepted_child = None
            for child in children[node]:
                tok = tokens[b][child]
                if method == "greedy":
                    if tok == int(gtp.argmax()):
                        accepted_child = child
                        break
                    continue
                q_tok = 1.0 if draft_probs is None else float(draft_probs[b, node, tok])
                if float(torch.rand(())) * q_tok < float(gtp[tok]):
                    accepted_child = child
                    break
                if draft_probs is None:
                    gtp[tok] = 0.0
                else:
                    gtp = (gtp - draft_probs[b, node]).clamp_min(0.0)
                gtp = gtp / gtp.sum()
            if accepted_child is None:
                final = int(gtp.argmax()) if method == "greedy" else int(torch.multinomial(gtp, 1))
                out.append(emitted + [final])
                break
            emitted.append(tokens[b][accepted_child])
            node = accepted_child
    return out


# ----------------------------------------------------------------------------- inputs


def chain_inputs(batch, n, vocab, device, use_probs):
    logits = torch.randn(batch, n + 1, vocab, device=device).mul_(3)
    q = torch.softmax(logits[:, :n] + 0.5 * torch.randn(batch, n, vocab, device=device), -1)
    draft = torch.multinomial(q.reshape(-1, vocab), 1).reshape(batch, n)
    return logits, draft, (q if use_probs else None)


def tree_inputs(batch, vocab, device, use_probs, levels=6, k=4, nodes=64):
    gen_tokens = torch.randint(0, vocab, (batch, levels, k, k), device=device)
    logprobs = torch.log_softmax(torch.randn(batch, levels, k, k, device=device), -1)
    tree = ops.build_tree_from_topk(torch.zeros(batch, dtype=torch.int64, device=device), gen_tokens, logprobs, nodes)
    logits = torch.randn(batch, nodes, vocab, device=device).mul_(3)
    # raise each node's first child so the walk goes deep (the expensive case for a walk)
    has_child = tree.first_child >= 0
    child_tok = tree.tokens.gather(1, tree.first_child.clamp(min=0).long())
    rows, cols = has_child.nonzero(as_tuple=True)
    logits[rows, cols, child_tok[rows, cols]] += 18.0  # p(first child) ~ 0.85-0.95 against randn * 3
    q = None
    if use_probs:
        q = torch.softmax(logits + 0.5 * torch.randn_like(logits), -1)
    return logits, tree, q


def visited_bytes(num_accepted: torch.Tensor, vocab: int, elem: int, use_probs: bool) -> int:
    rows = int((num_accepted.long() + 1).sum())
    return rows * vocab * elem * (2 if use_probs else 1)


# ----------------------------------------------------------------------------- runs


def _variants(backends, use_probs, device) -> list[tuple[str, bool]]:
    """(backend, check_draft_probs) pairs: on CPU the default call reads all of draft_probs to
    validate it, which costs more than the walk; the unchecked call is what a decoder whose
    drafter ends in a softmax runs, so both are reported."""
    pairs = [(backend, True) for backend in backends]
    if use_probs and device.type == "cpu":
        pairs += [(backend, False) for backend in backends]
    return pairs


def run_chains(device, vocabs, modes, reps, batch=64, n=8) -> list[harness.Row]:
    ceiling = harness.copy_ceiling_gbps(device)
    backends = [b for b in _backend.available(device) if b != "reference"]
    label = harness.device_name(device)
    rows = []
    for vocab in vocabs:
        for mode in modes:
            params = dict(CHAIN_MODES[mode])
            use_probs = params.pop("use_probs")
            inputs = chain_inputs(batch, n, vocab, device, use_probs)
            make = lambda: inputs  # noqa: E731 - one copy: each is >= 74 MB, larger than any L2 at B=64
            seed = torch.arange(batch, device=device)
            probe = ops.verify_chain(*inputs, seed=seed, **params)
            nbytes = visited_bytes(probe.num_accepted, vocab, 4, use_probs)
            shape = f"chain B={batch} n={n} V={vocab}"
            base_us = harness.time_op(lambda *a: torch_chain_baseline(*a, **params), make, nbytes, device, reps=reps)
            rows.append(harness.Row(mode, "torch (vLLM-style)", shape, "float32", label, base_us, nbytes, ceiling, base_us))
            for backend, check in _variants(backends, use_probs, device):
                call = lambda *a: ops.verify_chain(*a, seed=seed, backend=backend, check_draft_probs=check, **params)  # noqa: E731
                us = harness.time_op(call, make, nbytes, device, reps=reps)
                name = backend if check else f"{backend}, check_draft_probs=False"
                rows.append(harness.Row(mode, name, shape, "float32", label, us, nbytes, ceiling, base_us))
            accepted = float(probe.num_accepted.float().mean())
            print(f"{shape} {mode}: mean accepted {accepted:.2f} of {n}", flush=True)
            print(harness.markdown_table(rows[-(1 + len(_variants(backends, use_probs, device))):]), flush=True)
    return rows


def run_trees(device, vocabs, modes, reps, batch=16) -> list[harness.Row]:
    ceiling = harness.copy_ceiling_gbps(device)
    backends = [b for b in _backend.available(device) if b != "reference"]
    label = harness.device_name(device)
    rows = []
    for vocab in vocabs:
        for mode in modes:
            params = dict(TREE_MODES[mode])
            use_probs = params.pop("use_probs")
            logits, tree, q = tree_inputs(batch, vocab, device, use_probs)
            make = lambda: (logits, tree, q)  # noqa: E731
            seed = torch.arange(batch, device=device)
            probe = ops.verify_tree(logits, tree, q, seed=seed, **params)
            nbytes = visited_bytes(probe.num_accepted, vocab, 4, use_probs)
            shape = f"tree B={batch} N={tree.tokens.shape[1]} depth={tree.max_depth} V={vocab}"
            base_reps = max(2, reps // 3)  # the Python loop takes ~1 s per call at V=128256 on CPU
            base_us = harness.time_op(lambda *a: python_tree_baseline(*a, **params), make, nbytes, device, reps=base_reps)
            rows.append(harness.Row(mode, "python loop (EAGLE-style)", shape, "float32", label, base_us, nbytes, ceiling, base_us))
            for backend, check in _variants(backends, use_probs, device):
                call = lambda *a: ops.verify_tree(*a, seed=seed, backend=backend, check_draft_probs=check, **params)  # noqa: E731
                us = harness.time_op(call, make, nbytes, device, reps=reps)
                name = backend if check else f"{backend}, check_draft_probs=False"
                rows.append(harness.Row(mode, name, shape, "float32", label, us, nbytes, ceiling, base_us))
            accepted = float(probe.num_accepted.float().mean())
            print(f"{shape} {mode}: mean accepted {accepted:.2f}", flush=True)
            print(harness.markdown_table(rows[-(1 + len(_variants(backends, use_probs, device))):]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = harness.bench_parser("spec_verify", __doc__, "two modes per case, fewer repetitions")
    parser.add_argument("--vocab", type=int, nargs="*", default=[32000, 128256])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    reps = args.reps or (3 if args.quick else 7)
    chain_modes = QUICK_CHAIN if args.quick else list(CHAIN_MODES)
    tree_modes = QUICK_TREE if args.quick else list(TREE_MODES)
    rows = run_chains(device, args.vocab, chain_modes, reps) + run_trees(device, args.vocab, tree_modes, reps)
    title = f"spec_verify on {harness.device_name(device)}"
    print(f"\n## {title}\n\n{harness.markdown_table(rows)}")
    name = f"spec_verify_{device.type}" + ("_quick" if args.quick else "")
    for path in harness.write_results(rows, name, args.out, title):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
