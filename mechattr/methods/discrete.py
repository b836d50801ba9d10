"""Discretized path methods: integrated gradients along paths through real word embeddings.

DIG (Sanyal & Ren 2021, "Discretized Integrated Gradients for Explaining Language Models")
replaces IG's straight line by a path through *anchor words*: starting at the input word, each
step picks a word among the k nearest neighbours (in token-embedding space) of the current word,
then *monotonizes* it: dimensions of the anchor that lie between the baseline and the current
point are kept, the others are moved to ``cur - (cur - baseline) / m`` (``m = n_anchors``, the
reference code's ``steps``), so every coordinate of the path moves monotonically from baseline
to input. GREEDY picks the anchor closest to its monotonized version, MAXCOUNT the anchor with
most monotonic dimensions.

UDIG (Roy et al. 2022, "Uniform Discretized Integrated Gradients"; ``linear_word_path`` in its
code) takes ``A`` evenly spaced points ``b + s / (A + 1) (x - b)``, ``s = A .. 1``, on the
straight baseline -> input line, walks them from the input side, and at each takes the ``k``
vocabulary words nearest to *that line point* (not to the current word) as candidates, choosing
among them with DIG's GREEDY / MAXCOUNT rule and monotonizing the choice as DIG does.

The path is a polyline baseline = p_0, p_1 .. p_A (monotonized anchors), p_{A+1} = input;
``n_steps`` gradient intervals are spread over its segments and the attribution is the
line integral of the gradient along it, summed over d_model:

    attr_i = sum_k (x_{k+1} - x_k)_i * grad f(z_k)_i

with ``z_k = x_k`` (rule ``"left"``, the DIG paper's sum), the interval midpoint (``"midpoint"``)
or both ends weighted 1/2 (``"trapezoid"``, default: n_steps + 1 gradients, second-order
accurate). By the gradient theorem the exact line integral equals f(input) - f(baseline), so
the completeness error shrinks as n_steps grows for a fixed path. With ``n_anchors=0`` the path
is IG's straight line and rule ``"left"`` / ``"midpoint"`` equal IG's ``riemann_left`` /
``riemann_middle`` with the same n_steps (``"trapezoid"`` equals IG ``riemann_trapezoid`` with
n_steps + 1 points). ``rule="left", n_steps=n_anchors + 1`` is the original DIG computation.

Only the token embedding (the ``hook_embed`` output) moves; position embeddings and fixed
positions (BOS) stay as in the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

from ..baselines import build_baselines, describe
from ..errors import MethodError
from ..knn import knn_graph
from ..progress import bar
from ..contract import Context, MethodOutput, register
from ._common import (
    check_positive_int,
    check_reduce,
    completeness,
    grad_map,
    mask_fixed,
    reduce_hidden,
)

STRATEGIES = ("greedy", "maxcount")
CANDIDATES = ("word", "line")
RULES = ("left", "midpoint", "trapezoid")


@dataclass
class DiscretePath:
    """Path nodes for every baseline: node 0 is the baseline, node ``A + 1`` the input."""

    nodes: Float[Tensor, "n_baselines n_nodes pos d_model"]
    # Token id of the anchor word behind node s + 1 (input order: anchor 0 is next to the
    # input); -1 where the search found no usable neighbour or the position is not on a path.
    anchor_ids: Int[Tensor, "n_baselines n_anchors pos"]
    # Which dimensions of each anchor node were kept from the anchor word (the rest monotonized).
    kept: torch.Tensor


def _auto_baseline(ctx: Context) -> str:
    """DIG used BERT's [MASK]; causal LMs rarely have one, so: mask, else pad, else eos, else zero."""
    for name in ("mask", "pad", "eos"):
        if ctx.adapter.special_token_id(name) is not None:
            return name
    return "zero"


def _anchor_vocab(ctx: Context, anchor_vocab: Any) -> Int[Tensor, " n"]:
    V = ctx.adapter.d_vocab
    if anchor_vocab is None:
        return torch.arange(V)
    if isinstance(anchor_vocab, bool):
        raise MethodError("anchor_vocab must be None, an int or a list of token ids, not a bool.")
    if isinstance(anchor_vocab, int):
        if not 2 <= anchor_vocab <= V:
            raise MethodError(f"anchor_vocab={anchor_vocab} must lie in [2, {V}] (the first N token ids).")
        return torch.arange(anchor_vocab)
    ids = torch.as_tensor(list(anchor_vocab), dtype=torch.long).reshape(-1).unique()
    if ids.numel() < 2 or int(ids.min()) < 0 or int(ids.max()) >= V:
        raise MethodError(f"anchor_vocab token ids must be at least two ids inside [0, {V}).")
    return ids


def vocab_embeddings(ctx: Context, ids: Int[Tensor, " n"], chunk: int = 8192) -> Float[Tensor, "n d_model"]:
    """What the embedding hook emits for each token id alone (the space the path lives in)."""
    out = []
    for i in range(0, ids.numel(), chunk):
        toks = rearrange(ids[i : i + chunk].to(ctx.tokens.device), "n -> n 1")
        out.append(ctx.adapter.embed(toks)[:, 0])
    return torch.cat(out)


def discrete_path(
    ctx: Context,
    baselines: Float[Tensor, "n_baselines pos d_model"],
    *,
    strategy: str,
    n_anchors: int,
    n_neighbors: int = 50,
    anchor_vocab: Any = None,
    candidates: str = "word",
) -> DiscretePath:
    """Anchor search and monotonization for all free positions and baselines at once.

    ``candidates="word"`` (DIG): the neighbours of the current anchor word in the vocabulary kNN
    graph; ``"line"`` (UDIG): the ``n_neighbors`` vocabulary words nearest to the line point
    ``b + (A - s) / (A + 1) (x - b)`` of step ``s``. The search walks from the input word
    towards the baseline and the nodes are returned in baseline -> input order. Monotonicity of
    a candidate is judged against the current (already monotonized) point, the same point
    monotonization then uses."""
    if strategy not in STRATEGIES:
        raise MethodError(f"Unknown anchor strategy {strategy!r}; choose one of {list(STRATEGIES)}.")
    if candidates not in CANDIDATES:
        raise MethodError(f"Unknown candidate rule {candidates!r}; choose one of {list(CANDIDATES)}.")
    x = ctx.input_embed()[0]  # [pos, d]
    nb, n_pos, d = baselines.shape
    A = n_anchors
    # Positions with a path: attributed and not already at the baseline.
    moving = ctx.free[None, :].expand(nb, -1) & (baselines != x[None]).any(-1)  # [nb, pos]
    qb, qp = moving.nonzero(as_tuple=True)
    Q = int(qb.numel())
    nodes = torch.empty(nb, A + 2, n_pos, d, dtype=x.dtype, device=x.device)
    nodes[:] = x  # non-moving positions keep the input everywhere
    nodes[:, 0] = baselines
    # Filled on the input's device inside the anchor loop (no host round trip per step).
    anchor_ids = torch.full((nb, A, n_pos), -1, dtype=torch.long, device=x.device)
    kept = torch.zeros(nb, A, n_pos, d, dtype=torch.bool, device=x.device)
    if A == 0 or Q == 0:
        anchor_ids, kept = anchor_ids.cpu(), kept.cpu()
        return DiscretePath(nodes, anchor_ids, kept)

    S = _anchor_vocab(ctx, anchor_vocab)
    E = vocab_embeddings(ctx, S).to(x.dtype)  # [N, d]
    k = min(int(n_neighbors), int(S.numel()) - 1)
    graph = knn_graph(E, k)[0].to(x.device) if candidates == "word" else None
    S_dev = S.to(x.device)
    dt = torch.float64 if E.shape[0] <= 8192 else torch.float32  # as the graph's build

    x0 = x[qp]  # [Q, d]
    b = baselines[qb, qp]  # [Q, d]
    line = x0 - b
    cur = x0.clone()
    cur_node = torch.full((Q,), -1, dtype=torch.long, device=x.device)  # index into S
    visited = torch.full((Q, A + 1), -1, dtype=torch.long, device=x.device)
    visited[:, 0] = ctx.tokens[0, qp]
    m = float(A)  # the reference code's monotonization step 1/steps, steps = n_anchors
    rows = torch.arange(Q, device=x.device)
    path = [x0]
    for s in range(A):
        cand = torch.empty(Q, k, dtype=torch.long, device=x.device)
        if candidates == "line":
            # UDIG: the words nearest to the s-th evenly spaced point, walked from the input side
            pt = b + ((A - s) / (A + 1.0)) * line
            d2 = torch.cdist(pt.to(dt), E.to(dt))
            cand[:] = d2.topk(k, dim=-1, largest=False, sorted=True).indices
        else:
            # DIG: neighbours of the current word; the first step (and any position whose walk
            # has not found a word yet) asks for the input point's nearest vocabulary entries.
            need_query = cur_node < 0
            if bool((~need_query).any()):
                cand[~need_query] = graph[cur_node[~need_query]]
            if bool(need_query.any()):
                d2 = torch.cdist(cur[need_query].to(dt), E.to(dt))
                cand[need_query] = d2.topk(k, dim=-1, largest=False).indices
        ca = E[cand]  # [Q, k, d]
        lo = torch.minimum(b, cur)[:, None]
        hi = torch.maximum(b, cur)[:, None]
        mono = (ca >= lo) & (ca <= hi)
        tok = S_dev[cand]
        valid = ~(tok[:, :, None] == visited[:, None, :]).any(-1)
        valid &= ~(ca == b[:, None]).all(-1) & ~(ca == cur[:, None]).all(-1)
        fallback = cur - (cur - b) / m
        mono_pt = torch.where(mono, ca, fallback[:, None])
        dist = (mono_pt - ca).norm(dim=-1)
        if strategy == "greedy":
            score = dist
        else:  # maxcount; ties broken by the greedy distance (scaled below one count)
            score = -mono.sum(-1).to(dist.dtype) + dist / (dist.max() + 1.0)
        score = score.masked_fill(~valid, float("inf"))
        pick = score.argmin(-1)
        found = valid[rows, pick]
        pick_mono = mono[rows, pick] & found[:, None]
        new = torch.where(pick_mono, ca[rows, pick], fallback)
        new_tok = torch.where(found, tok[rows, pick], torch.full_like(pick, -1))
        cur_node = torch.where(found, cand[rows, pick], cur_node)
        visited[:, s + 1] = new_tok
        anchor_ids[qb, s, qp] = new_tok
        kept[qb, s, qp] = pick_mono
        cur = new
        path.append(new)
    # path[0] = input, path[s + 1] = anchor s; nodes run baseline -> input.
    for s, pt in enumerate(path):
        nodes[qb, A + 1 - s, qp] = pt
    anchor_ids = anchor_ids.flip(1).cpu()
    kept = kept.flip(1).cpu()
    return DiscretePath(nodes, anchor_ids, kept)


def segment_steps(n_steps: int, n_segments: int) -> list[int]:
    """Intervals per segment: as equal as possible, earlier (baseline-side) segments first."""
    base, extra = divmod(n_steps, n_segments)
    return [base + (1 if i < extra else 0) for i in range(n_segments)]


def quadrature(
    nodes: Float[Tensor, "n_nodes pos d_model"], n_steps: int, rule: str
) -> tuple[Float[Tensor, "n_points pos d_model"], Float[Tensor, "n_points pos d_model"]]:
    """Gradient points z_j and the displacement each gradient multiplies (sum_j w_j = input - baseline)."""
    left, deltas = [], []
    for s, ms in enumerate(segment_steps(n_steps, nodes.shape[0] - 1)):
        delta = (nodes[s + 1] - nodes[s]) / ms
        i = torch.arange(ms, dtype=nodes.dtype, device=nodes.device)[:, None, None]
        left.append(nodes[s] + i * delta)
        deltas.append(delta.expand(ms, *delta.shape))
    z, dz = torch.cat(left), torch.cat(deltas)  # interval starts and lengths, n_steps each
    if rule == "left":
        return z, dz
    if rule == "midpoint":
        return z + 0.5 * dz, dz
    # trapezoid: every interval end point carries half of each interval it bounds
    zero = torch.zeros_like(dz[:1])
    return torch.cat([z, nodes[-1:]]), 0.5 * (torch.cat([dz, zero]) + torch.cat([zero, dz]))


def _path_attribution(
    ctx: Context,
    *,
    strategy: str,
    n_steps: int | None,
    n_anchors: int,
    n_neighbors: int,
    rule: str,
    baseline: Any,
    reduce: str,
    anchor_vocab: Any,
    candidates: str,
) -> MethodOutput:
    if n_steps is None:
        n_steps = n_anchors + 1  # one interval per path segment, as the papers' sums
    check_positive_int("n_steps", n_steps)
    check_positive_int("n_anchors", n_anchors, minimum=0)
    check_positive_int("n_neighbors", n_neighbors)
    check_reduce(reduce)
    if rule not in RULES:
        raise MethodError(f"Unknown rule {rule!r}; choose one of {list(RULES)}.")
    if n_steps < n_anchors + 1:
        raise MethodError(
            f"n_steps={n_steps} is fewer than the {n_anchors + 1} path segments; give n_steps >= "
            "n_anchors + 1 (one gradient per segment at least) or fewer anchors."
        )
    x = ctx.input_embed()[0]
    spec = _auto_baseline(ctx) if isinstance(baseline, str) and baseline == "auto" else baseline
    B = build_baselines(ctx, spec)  # [nb, pos, d]
    nb = B.shape[0]
    path = discrete_path(
        ctx, B, strategy=strategy, n_anchors=n_anchors, n_neighbors=n_neighbors, anchor_vocab=anchor_vocab,
        candidates=candidates,
    )
    quads = [quadrature(path.nodes[i], n_steps, rule) for i in range(nb)]
    P = torch.cat([q[0] for q in quads])  # [nb * J, pos, d]
    W = torch.cat([q[1] for q in quads]).double() / nb
    acc = torch.zeros(ctx.plan.n_rows, *x.shape, dtype=torch.float64, device=x.device)

    n_points = int(P.shape[0])
    n_batches = -(-n_points // ctx.max_batch())
    points_bar = bar(total=n_points, desc="discretized IG path points", quiet=ctx.quiet, disable=n_batches < 2)

    def per_point(sl: slice, g: Tensor) -> None:
        acc.add_(einsum(g.double(), W[sl], "r b p d, b p d -> r p d"))
        points_bar.update(sl.stop - sl.start)

    try:
        grad_map(ctx, n_points, lambda sl: P[sl], per_point)
    finally:
        points_bar.close()
    scores = mask_fixed(ctx, reduce_hidden(acc, reduce)).to(x.dtype)
    f_x = ctx.values()[0]
    f_b = ctx.values(B).mean(0)
    diag = completeness(acc.sum(dim=(-1, -2)), f_x, f_b)
    diag["n_forward_points"] = int(P.shape[0])
    diag["batch_size"] = ctx.max_batch()
    diag["baseline_used"] = describe(spec)
    ids = path.anchor_ids[0]  # first baseline, [A, pos], baseline -> input order
    diag["anchors"] = [
        [ctx.adapter.str_tokens([int(t)])[0] if int(t) >= 0 else None for t in ids[:, p]]
        for p in range(ids.shape[1])
    ]
    diag["anchors_found"] = int((path.anchor_ids >= 0).sum())
    return MethodOutput(
        scores,
        params={
            "n_steps": n_steps,
            "n_anchors": n_anchors,
            "n_neighbors": n_neighbors,
            "rule": rule,
            "baseline": describe(baseline),
            "reduce": reduce,
            "anchor_vocab": anchor_vocab if anchor_vocab is None or isinstance(anchor_vocab, int) else list(map(int, anchor_vocab)),
            "strategy": strategy,
        },
        diagnostics=diag,
    )


@register(
    "discretized_integrated_gradients",
    aliases=("dig",),
    family="discrete",
    summary="IG along a monotone path through nearby vocabulary words (Sanyal & Ren 2021).",
    promises=("completeness",),
)
def discretized_integrated_gradients(
    ctx: Context,
    *,
    strategy: str = "greedy",
    n_steps: int | None = None,
    n_anchors: int = 30,
    n_neighbors: int = 50,
    rule: str = "trapezoid",
    baseline: Any = "auto",
    reduce: str = "sum",
    anchor_vocab: int | Sequence[int] | None = None,
) -> MethodOutput:
    if strategy not in ("greedy", "maxcount"):
        raise MethodError(f"Unknown DIG strategy {strategy!r}; choose 'greedy' or 'maxcount'.")
    return _path_attribution(
        ctx, strategy=strategy, n_steps=n_steps, n_anchors=n_anchors, n_neighbors=n_neighbors,
        rule=rule, baseline=baseline, reduce=reduce, anchor_vocab=anchor_vocab, candidates="word",
    )


@register(
    "uniform_discretized_integrated_gradients",
    aliases=("udig",),
    family="discrete",
    summary="DIG with anchors chosen among the words nearest to evenly spaced points of the straight path (Roy et al. 2022).",
    promises=("completeness",),
)
def uniform_discretized_integrated_gradients(
    ctx: Context,
    *,
    strategy: str = "greedy",
    n_steps: int | None = None,
    n_anchors: int = 30,
    n_neighbors: int = 30,
    rule: str = "trapezoid",
    baseline: Any = "auto",
    reduce: str = "sum",
    anchor_vocab: int | Sequence[int] | None = None,
) -> MethodOutput:
    if strategy not in STRATEGIES:
        raise MethodError(f"Unknown UDIG strategy {strategy!r}; choose 'greedy' or 'maxcount'.")
    return _path_attribution(
        ctx, strategy=strategy, n_steps=n_steps, n_anchors=n_anchors, n_neighbors=n_neighbors,
        rule=rule, baseline=baseline, reduce=reduce, anchor_vocab=anchor_vocab, candidates="line",
    )
