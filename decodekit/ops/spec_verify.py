"""Speculative verification: ``verify_chain``, ``verify_tree``, ``build_tree``, ``build_tree_from_topk``.

Semantics (the spec is ``decodekit/reference/spec_verify.py``):

* The target's sampling parameters (temperature -> top-k -> top-p, per row, as in ``sample``)
  are applied inside the op, so verification sees exactly the distribution plain sampling would.
* ``method`` per row: ``"lossless"`` (Leviathan/Chen on chains, SpecInfer multi-step speculative
  sampling on trees: siblings tried in index order, residual ``norm(max(0, p - q))`` after every
  rejection; ``draft_probs=None`` means a deterministic drafter: accept with probability ``p(x)``,
  zero x on rejection), ``"greedy"`` (accept while the draft is the target argmax; every row with
  temperature 0 is greedy too), ``"typical"`` (Medusa: accept if
  ``p(x) > min(typical_eps, typical_delta * exp(-H(p)))``, lossy). A correction token is emitted
  at the first rejection, a bonus token when a leaf is reached.
* ``draft_probs[b, u]`` is the distribution the children of node u (chains: draft token u) were
  drawn from; sampling them i.i.d. from it makes ``"lossless"`` exact. For top-k children (EAGLE)
  pass ``None``.
* Randomness is Philox (DESIGN.md): coin of node c = ``uniform(seed, offset, ACCEPT_COIN, c)``,
  final draw = Gumbel-max with ``uniform(seed, offset, RESIDUAL_TOKEN, vocab id)``: results are
  reproducible, batch invariant and equal on every backend for the same seed.
* A row whose target logits at a visited node are NaN / +inf / all -inf gives ``valid=False``,
  every output -1 and counts 0.

Raw backend contract (same names and arguments on reference / cpu / triton / cuda): inputs
contiguous and validated; ``draft_probs`` float32 or an empty float32 tensor with
``has_draft_probs=False``; ``method`` int32 codes (0 lossless, 1 greedy, 2 typical);
temperature / top_p / typical_eps / typical_delta float32 ``[B]``, top_k int32 ``[B]``,
seed / offset int64 ``[B]``; outputs preallocated:

    verify_chain(target_logits, draft_tokens, draft_probs, has_draft_probs, method, temperature,
                 top_k, top_p, typical_eps, typical_delta, seed, offset,
                 tokens_out, num_accepted_out, num_emitted_out, valid_out)
    verify_tree(target_logits, tokens, first_child, next_sibling, draft_probs, has_draft_probs,
                method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset,
                accepted_nodes_out, tokens_out, num_accepted_out, num_emitted_out, valid_out)

Tree construction is host-side torch (vectorised over the batch, no per-node Python loop) on
every backend; it has no raw function.
"""

from __future__ import annotations

import numbers

import torch

from decodekit.ops import _args
from decodekit.ops._backend import kernel, resolve
from decodekit.reference import spec_verify as ref
from decodekit.reference.spec_verify import METHOD_CODES, Tree, TreeVerifyOutput, VerifyOutput

__all__ = [
    "METHOD_CODES",
    "Tree",
    "TreeVerifyOutput",
    "VerifyOutput",
    "build_tree",
    "build_tree_from_topk",
    "verify_chain",
    "verify_tree",
]

FAMILY = "spec_verify"
INT_TYPES = (torch.int32, torch.int64)
# draft probability rows must sum to 1 within this (float32 sums of 128256 entries drift ~1e-5)
PROB_SUM_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- custom ops


def _outputs(batch: int, width: int, device) -> tuple[torch.Tensor, ...]:
    return (
        torch.empty(batch, width, dtype=torch.int64, device=device),
        torch.empty(batch, dtype=torch.int32, device=device),
        torch.empty(batch, dtype=torch.int32, device=device),
        torch.empty(batch, dtype=torch.bool, device=device),
    )


def _verify_chain_impl(target_logits, *rest):
    """``rest``: the raw function's inputs after ``target_logits``, then the backend name."""
    *inputs, backend = rest
    outs = _outputs(target_logits.shape[0], target_logits.shape[1], target_logits.device)
    kernel(backend, FAMILY, "verify_chain")(target_logits, *inputs, *outs)
    return outs


@torch.library.custom_op("decodekit::verify_chain", mutates_args=())
def _verify_chain_op(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    has_draft_probs: bool,
    method: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    typical_eps: torch.Tensor,
    typical_delta: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _verify_chain_impl(
        target_logits, draft_tokens, draft_probs, has_draft_probs, method, temperature, top_k, top_p, typical_eps,
        typical_delta, seed, offset, backend,
    )  # fmt: skip


@_verify_chain_op.register_fake
def _(target_logits, *rest):
    batch, width = target_logits.shape[0], target_logits.shape[1]
    return (
        target_logits.new_empty(batch, width, dtype=torch.int64),
        target_logits.new_empty(batch, dtype=torch.int32),
        target_logits.new_empty(batch, dtype=torch.int32),
        target_logits.new_empty(batch, dtype=torch.bool),
    )


def _verify_tree_impl(target_logits, *rest):
    """``rest``: the raw function's inputs after ``target_logits``, the output width, the backend."""
    *inputs, width, backend = rest
    batch, device = target_logits.shape[0], target_logits.device
    accepted_nodes = torch.empty(batch, width, dtype=torch.int32, device=device)
    outs = _outputs(batch, width, device)
    kernel(backend, FAMILY, "verify_tree")(target_logits, *inputs, accepted_nodes, *outs)
    return (accepted_nodes, *outs)


@torch.library.custom_op("decodekit::verify_tree", mutates_args=())
def _verify_tree_op(
    target_logits: torch.Tensor,
    tokens: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    draft_probs: torch.Tensor,
    has_draft_probs: bool,
    method: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    typical_eps: torch.Tensor,
    typical_delta: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    width: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _verify_tree_impl(
        target_logits, tokens, first_child, next_sibling, draft_probs, has_draft_probs, method, temperature, top_k,
        top_p, typical_eps, typical_delta, seed, offset, width, backend,
    )  # fmt: skip


@_verify_tree_op.register_fake
def _(target_logits, *rest):
    batch, width = target_logits.shape[0], rest[-2]
    return (
        target_logits.new_empty(batch, width, dtype=torch.int32),
        target_logits.new_empty(batch, width, dtype=torch.int64),
        target_logits.new_empty(batch, dtype=torch.int32),
        target_logits.new_empty(batch, dtype=torch.int32),
        target_logits.new_empty(batch, dtype=torch.bool),
    )


# ----------------------------------------------------------------------------- validation


def _values_checkable(tensor: torch.Tensor) -> bool:
    """Values are read only for CPU tensors outside tracing (reading CUDA values would sync)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def _check_logits(target_logits) -> torch.Tensor:
    if not isinstance(target_logits, torch.Tensor):
        raise TypeError(f"target_logits must be a torch.Tensor, got {type(target_logits).__name__}")
    if target_logits.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"target_logits must be float32, float16 or bfloat16, got {target_logits.dtype}")
    if target_logits.dim() != 3 or 0 in target_logits.shape:
        raise ValueError(f"target_logits must have shape [B, N, V] with B, N, V >= 1, got {tuple(target_logits.shape)}")
    return target_logits.contiguous()


def _check_index_tensor(name: str, tensor, shape: tuple[int, ...], device) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in INT_TYPES:
        raise TypeError(f"{name} must be int32 or int64, got {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but target_logits are on {device}")
    return tensor.contiguous()


def _check_tokens_in_vocab(name: str, tokens: torch.Tensor, vocab: int) -> None:
    if _values_checkable(tokens) and tokens.numel() and bool(((tokens < 0) | (tokens >= vocab)).any()):
        bad = tokens[(tokens < 0) | (tokens >= vocab)][0].item()
        raise ValueError(f"{name} must be token ids in [0, V={vocab}), got {bad}")


def _check_draft_probs(
    draft_probs, shape: tuple[int, ...], device, used_rows: torch.Tensor | None, check_values: bool = True
) -> torch.Tensor:
    """float32 contiguous ``draft_probs``; on CPU (and ``check_values``) the rows that verification
    may read (``used_rows`` [B, rows] bool, all when None) must be distributions: finite, >= 0,
    summing to 1. That reads the whole tensor, several times the bytes a walk reads."""
    if not isinstance(draft_probs, torch.Tensor):
        raise TypeError(f"draft_probs must be a torch.Tensor or None, got {type(draft_probs).__name__}")
    if draft_probs.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"draft_probs must be float32, float16 or bfloat16, got {draft_probs.dtype}")
    if tuple(draft_probs.shape) != shape:
        raise ValueError(f"draft_probs must have shape {list(shape)}, got {list(draft_probs.shape)}")
    if draft_probs.device != device:
        raise ValueError(f"draft_probs is on {draft_probs.device} but target_logits are on {device}")
    probs = draft_probs.to(torch.float32).contiguous()
    if check_values and _values_checkable(probs) and probs.numel():
        # two streaming reductions, no [B, n, V] temporaries: NaN and inf propagate into the sum
        # (failing the sum test) and a negative entry shows in the minimum
        sums, mins = probs.sum(-1), probs.amin(-1)
        bad = ~((sums - 1).abs() <= PROB_SUM_TOLERANCE) | ~(mins >= 0)
        if used_rows is not None:
            bad &= used_rows
        if bool(bad.any()):
            index = tuple(bad.nonzero()[0].tolist())
            raise ValueError(
                f"draft_probs rows must be probabilities (entries >= 0, finite, summing to 1 within "
                f"{PROB_SUM_TOLERANCE}); row {list(index)} sums to {sums[index].item():.6g} with minimum "
                f"{mins[index].item():.6g}"
            )
    return probs


def _method_param(method, batch: int, device) -> torch.Tensor:
    allowed = f"one of {sorted(METHOD_CODES)}"
    if isinstance(method, str):
        if method not in METHOD_CODES:
            raise ValueError(f"method must be {allowed} (or a list / [B] int tensor of them), got {method!r}")
        return _args.row_param("method", METHOD_CODES[method], batch, device, torch.int32)
    if isinstance(method, (list, tuple)):
        if len(method) != batch:
            raise ValueError(f"method must have one entry per row (B={batch}), got {len(method)}")
        bad = [m for m in method if m not in METHOD_CODES]
        if bad:
            raise ValueError(f"method entries must be {allowed}, got {bad[0]!r}")
        return torch.tensor([METHOD_CODES[m] for m in method], dtype=torch.int32, device=device)
    if isinstance(method, torch.Tensor):
        codes = sorted(METHOD_CODES.values())
        return _args.row_param("method", method, batch, device, torch.int32, low=codes[0], high=codes[-1])
    raise TypeError(
        f"method must be a str, a list of str or a [B] int tensor of codes {METHOD_CODES}, got {type(method).__name__}"
    )


def _row_params(batch, device, method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset):
    return (
        _method_param(method, batch, device),
        _args.row_param("temperature", temperature, batch, device, torch.float32, low=0.0),
        _args.row_param("top_k", top_k, batch, device, torch.int32, low=0, high=2**31 - 1),
        _args.row_param("top_p", top_p, batch, device, torch.float32, low=0.0, high=1.0, low_open=True),
        _args.row_param("typical_eps", typical_eps, batch, device, torch.float32, low=0.0),
        _args.row_param("typical_delta", typical_delta, batch, device, torch.float32, low=0.0),
        _args.seed_param(seed, batch, device),
        _args.offset_param(offset, batch, device),
    )


def _no_draft_probs(device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------- public API


def verify_chain(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    *,
    method="lossless",
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    typical_eps=0.3,
    typical_delta=0.09,
    seed=None,
    offset=0,
    check_draft_probs: bool = True,
    backend: str | None = None,
) -> VerifyOutput:
    """Verify one chain of draft tokens per row in one fused pass.

    Args:
        target_logits: ``[B, n+1, V]`` float32 / float16 / bfloat16: row j is the target's logits
            for draft position j (row n: the bonus position).
        draft_tokens: ``[B, n]`` int32 / int64 token ids in ``[0, V)``.
        draft_probs: ``[B, n, V]`` float (converted to float32): row j is the distribution draft
            token j was sampled from; None for a deterministic drafter (n-gram, greedy draft).
        method: ``"lossless" | "greedy" | "typical"``, a list of those per row, or a ``[B]`` int
            tensor of ``METHOD_CODES``.
        temperature, top_k, top_p: the target's sampling parameters, scalars or ``[B]``, as in
            ``sample`` (temperature 0 = greedy verification for that row).
        typical_eps, typical_delta: scalars or ``[B]`` floats >= 0 (Medusa's posterior threshold
            and alpha), used by typical rows.
        seed, offset: as in ``sample`` (seed None draws per-row seeds from torch's generator).
        check_draft_probs: on CPU, read all of ``draft_probs`` to check that every row is a
            distribution (ValueError otherwise). That costs more than the verification itself,
            which reads only the rows its walk visits; pass False where the drafter's softmax
            guarantees it. CUDA tensors are never value-checked (it would synchronise).
        backend: ``"reference" | "cpu" | "triton" | "cuda"``; default per DESIGN.md.

    Returns:
        ``VerifyOutput(tokens [B, n+1] int64 (accepted drafts, then the correction or bonus token,
        -1 padded), num_accepted [B] int32, num_emitted [B] int32 (= num_accepted + 1; 0 for
        invalid rows), valid [B] bool)``.
    """
    target_logits = _check_logits(target_logits)
    batch, width, vocab = target_logits.shape
    device = target_logits.device
    draft_tokens = _check_index_tensor("draft_tokens", draft_tokens, (batch, width - 1), device).to(torch.int64)
    _check_tokens_in_vocab("draft_tokens", draft_tokens, vocab)
    has_draft_probs = draft_probs is not None
    if has_draft_probs:
        draft_probs = _check_draft_probs(draft_probs, (batch, width - 1, vocab), device, None, check_draft_probs)
    else:
        draft_probs = _no_draft_probs(device)
    params = _row_params(batch, device, method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset)
    backend = resolve(backend, device)
    call = _verify_chain_op if torch.compiler.is_compiling() else _verify_chain_impl
    return VerifyOutput(*call(target_logits, draft_tokens, draft_probs, has_draft_probs, *params, backend))


def _check_tree(tree, batch: int, nodes: int, vocab: int, device) -> Tree:
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be a decodekit.ops.Tree (from build_tree), got {type(tree).__name__}")
    arrays = {}
    for name in ("tokens", "parents", "first_child", "next_sibling"):
        arrays[name] = _check_index_tensor(f"tree.{name}", getattr(tree, name), (batch, nodes), device)
    if not isinstance(tree.max_depth, int) or not 0 <= tree.max_depth < nodes:
        raise ValueError(f"tree.max_depth must be an int in [0, N={nodes}), got {tree.max_depth!r}")
    if _values_checkable(arrays["parents"]):
        _check_parents("tree.parents", arrays["parents"])
        first_child, next_sibling = ref._child_links(arrays["parents"])
        if not (torch.equal(first_child, arrays["first_child"].to(torch.int32))
                and torch.equal(next_sibling, arrays["next_sibling"].to(torch.int32))):  # fmt: skip
            raise ValueError(
                "tree.first_child / tree.next_sibling do not match tree.parents; build trees with build_tree"
            )
        depth = ref._depths(arrays["parents"]).max()
        if int(depth) > tree.max_depth:
            raise ValueError(f"tree.max_depth={tree.max_depth} is below the tree's depth {int(depth)}")
        _check_tokens_in_vocab("tree.tokens (draft nodes)", arrays["tokens"][:, 1:], vocab)
    return tree._replace(
        tokens=arrays["tokens"].to(torch.int64),
        first_child=arrays["first_child"].to(torch.int32),
        next_sibling=arrays["next_sibling"].to(torch.int32),
    )


def verify_tree(
    target_logits: torch.Tensor,
    tree: Tree,
    draft_probs: torch.Tensor | None = None,
    *,
    method="lossless",
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    typical_eps=0.3,
    typical_delta=0.09,
    seed=None,
    offset=0,
    check_draft_probs: bool = True,
    backend: str | None = None,
) -> TreeVerifyOutput:
    """Verify one token tree per row (SpecInfer / EAGLE / Medusa style) in one fused pass.

    Args:
        target_logits: ``[B, N, V]``: row u is the target's logits for the children of node u
            (node 0 = the root, the last committed token).
        tree: from ``build_tree`` / ``build_tree_from_topk`` with the same B and N.
        draft_probs: ``[B, N, V]`` float: row u is the distribution the children of node u were
            drawn from, i.i.d. (rows of leaves are not read); None for a deterministic drafter
            (e.g. EAGLE-2 top-k children).
        method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset,
        check_draft_probs, backend: as in :func:`verify_chain` (only rows of nodes with children
            are checked).

    Returns:
        ``TreeVerifyOutput(accepted_nodes [B, max_depth+1] int32 (accepted path starting with the
        root 0, -1 padded), tokens [B, max_depth+1] int64 (the accepted nodes' tokens, then the
        correction or bonus token, -1 padded), num_accepted [B] int32, num_emitted [B] int32,
        valid [B] bool)``.
    """
    target_logits = _check_logits(target_logits)
    batch, nodes, vocab = target_logits.shape
    device = target_logits.device
    tree = _check_tree(tree, batch, nodes, vocab, device)
    has_draft_probs = draft_probs is not None
    if has_draft_probs:
        draft_probs = _check_draft_probs(
            draft_probs, (batch, nodes, vocab), device, tree.first_child >= 0, check_draft_probs
        )
    else:
        draft_probs = _no_draft_probs(device)
    params = _row_params(batch, device, method, temperature, top_k, top_p, typical_eps, typical_delta, seed, offset)
    backend = resolve(backend, device)
    call = _verify_tree_op if torch.compiler.is_compiling() else _verify_tree_impl
    outs = call(
        target_logits, tree.tokens, tree.first_child, tree.next_sibling, draft_probs, has_draft_probs, *params,
        tree.max_depth + 1, backend,
    )  # fmt: skip
    return TreeVerifyOutput(*outs)


def _check_parents(name: str, parents: torch.Tensor) -> None:
    """Node 0 is the only root (-1) and every other parent index is in [0, own index): this
    excludes cycles (a cycle needs a parent index >= its child's) and forests."""
    nodes = parents.shape[1]
    parents = parents.to(torch.int64)
    if bool((parents[:, 0] != -1).any()):
        raise ValueError(f"{name}[:, 0] must be -1 (node 0 is the root), got {parents[:, 0].tolist()}")
    rest = parents[:, 1:]
    own = torch.arange(1, nodes, device=parents.device).expand_as(rest)
    roots = rest == -1
    if bool(roots.any()):
        b, i = (roots.nonzero()[0]).tolist()
        raise ValueError(f"{name} has more than one root: node {i + 1} of row {b} has parent -1 (only node 0 may)")
    bad = (rest < -1) | (rest >= nodes)
    if bool(bad.any()):
        b, i = (bad.nonzero()[0]).tolist()
        raise ValueError(
            f"{name} out of range: node {i + 1} of row {b} has parent {int(rest[b, i])}, allowed [0, {i + 1})"
        )
    late = rest >= own
    if bool(late.any()):
        b, i = (late.nonzero()[0]).tolist()
        raise ValueError(
            f"{name} must list parents before children (parent index < own index, which also rules out "
            f"cycles): node {i + 1} of row {b} has parent {int(rest[b, i])}"
        )


def build_tree(parents: torch.Tensor, tokens: torch.Tensor, max_depth: int | None = None) -> Tree:
    """Token trees from parent links, with everything verification and tree attention need.

    Args:
        parents: ``[B, N]`` int32 / int64: ``parents[b, 0] == -1`` (node 0 = the root, the last
            committed token) and ``0 <= parents[b, i] < i`` for every other node.
        tokens: ``[B, N]`` int32 / int64 token of each node (the root's is not verified).
        max_depth: an upper bound of every node's depth (the outputs of ``verify_tree`` have
            ``max_depth + 1`` columns); None computes it, which synchronises a GPU device once.
            Values are checked when the tensors are on the CPU or ``max_depth`` is None.

    Returns:
        ``Tree(tokens [B, N] int64, parents [B, N] int32, first_child [B, N] int32,
        next_sibling [B, N] int32 (children in increasing index order), depth [B, N] int32
        (position relative to the root), ancestor_mask [B, N, N] bool (node i attends to j iff j
        is i or an ancestor of i), packed_mask [B, N, ceil(N / 8)] uint8 (bit j % 8 of byte
        j // 8), max_depth int)``.
    """
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"parents must be a torch.Tensor, got {type(parents).__name__}")
    if parents.dim() != 2 or 0 in parents.shape:
        raise ValueError(f"parents must have shape [B, N] with B, N >= 1, got {tuple(parents.shape)}")
    parents = _check_index_tensor("parents", parents, tuple(parents.shape), parents.device)
    tokens = _check_index_tensor("tokens", tokens, tuple(parents.shape), parents.device)
    nodes = parents.shape[1]
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, numbers.Integral)
                                  or not 0 <= max_depth < nodes):  # fmt: skip
        raise ValueError(f"max_depth must be None or an int in [0, N={nodes}), got {max_depth!r}")
    if max_depth is None or _values_checkable(parents):
        _check_parents("parents", parents)
    tree = ref.build_tree(parents, tokens, None if max_depth is None else int(max_depth))
    if max_depth is not None and _values_checkable(parents) and int(tree.depth.max()) > max_depth:
        raise ValueError(f"max_depth={max_depth} is below the tree's depth {int(tree.depth.max())}")
    return tree


def build_tree_from_topk(
    root_tokens: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor, num_nodes: int
) -> Tree:
    """EAGLE-2 dynamic draft tree: expand top-k children per frontier node by cumulative
    log-probability, keep the best ``num_nodes - 1`` candidates, parents before children.

    Args:
        root_tokens: ``[B]`` int32 / int64: the last committed token of each row.
        tokens: ``[B, D, K, K]`` int32 / int64: level 0's K root children in ``[:, 0, 0, :]``
            (other level-0 slots are ignored); ``[:, d, f, :]`` for d >= 1 are the K children of
            frontier slot f of level d - 1.
        logprobs: ``[B, D, K, K]`` float, <= 0: the drafter's log-probability of each child.
            Level d's frontier is its K best candidates by cumulative score (path sum of
            logprobs; descending, lower flat index ``f * K + j`` first on ties); slot f is the
            f-th best. A drafter expands exactly these nodes.
        num_nodes: N, the tree size including the root: ``1 <= N <= 1 + K + (D - 1) * K * K``.

    Returns:
        A ``Tree`` (see :func:`build_tree`) with ``max_depth = min(D, N - 1)`` (no host sync).
    """
    for name, tensor in (("root_tokens", root_tokens), ("tokens", tokens), ("logprobs", logprobs)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tokens.dim() != 4 or tokens.shape[2] != tokens.shape[3] or 0 in tokens.shape:
        raise ValueError(f"tokens must have shape [B, D, K, K] with B, D, K >= 1, got {tuple(tokens.shape)}")
    batch, levels, k, _ = tokens.shape
    device = tokens.device
    tokens = _check_index_tensor("tokens", tokens, tuple(tokens.shape), device)
    root_tokens = _check_index_tensor("root_tokens", root_tokens, (batch,), device)
    if logprobs.dtype not in _args.FLOAT_DTYPES:
        raise TypeError(f"logprobs must be float32, float16 or bfloat16, got {logprobs.dtype}")
    if tuple(logprobs.shape) != tuple(tokens.shape):
        raise ValueError(f"logprobs must have the shape of tokens {list(tokens.shape)}, got {list(logprobs.shape)}")
    if logprobs.device != device:
        raise ValueError(f"logprobs is on {logprobs.device} but tokens are on {device}")
    capacity = 1 + k + (levels - 1) * k * k
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral) or not 1 <= num_nodes <= capacity:
        raise ValueError(f"num_nodes must be an int in [1, {capacity}] for D={levels}, K={k}, got {num_nodes!r}")
    if _values_checkable(logprobs):
        used = torch.cat([logprobs[:, 0, 0, :].reshape(batch, -1), logprobs[:, 1:].reshape(batch, -1)], 1)
        if bool(torch.isnan(used).any()) or bool((used > 0).any()):
            raise ValueError("logprobs must be log-probabilities: <= 0 and not NaN")
    return ref.build_tree_from_topk(root_tokens, tokens, logprobs, int(num_nodes))
