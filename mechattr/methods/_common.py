"""Small helpers the method families share (private to ``mechattr.methods``): gradients with
respect to the token embeddings batched under the memory cap, reductions, completeness.

The call context is :class:`mechattr.contract.Context`; the quadrature rules are in
:mod:`mechattr.quadrature`. Both names are re-exported here for code written against the older
layout."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..contract import Context
from ..errors import MethodError
from ..progress import progress
from ..quadrature import rule_points

REDUCTIONS = ("sum", "l2", "l1")


def reduce_hidden(x: Float[Tensor, "... d_model"], how: str) -> Float[Tensor, "..."]:
    """Token score from a per-dimension map: signed sum (keeps completeness) or a norm."""
    if how == "sum":
        return x.sum(-1)
    if how == "l2":
        return x.norm(dim=-1)
    if how == "l1":
        return x.abs().sum(-1)
    raise MethodError(f"Unknown reduction {how!r}; choose one of {list(REDUCTIONS)}.")


def check_reduce(how: str) -> str:
    if how not in REDUCTIONS:
        raise MethodError(f"Unknown reduction {how!r}; choose one of {list(REDUCTIONS)}.")
    return how


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def grad_map(
    ctx: Context,
    n_points: int,
    make_points: Callable[[slice], Float[Tensor, "b pos d_model"]],
    per_point: Callable[[slice, Float[Tensor, "rows b pos d_model"]], None],
) -> Float[Tensor, "n rows"]:
    """Forward ``n_points`` embedding inputs in batches (``make_points(slice)`` builds each batch,
    so long paths are never materialised whole) and hand ``per_point(slice, grads)`` the gradient
    of every target row at those points. One forward per batch is shared by all rows (one
    backward each). Returns the target values at the points."""
    rows = ctx.plan.n_rows
    vals = []
    chunks = list(ctx.batches(n_points))
    for sl in progress(chunks, desc="gradient points (batches)", quiet=ctx.quiet or len(chunks) < 2):
        emb = make_points(sl).detach().clone().requires_grad_(True)
        toks = ctx.tokens.expand(emb.shape[0], -1)
        with torch.enable_grad(), ctx.adapter.frozen_weights():
            v = ctx.plan.evaluate(ctx.adapter, toks, emb)
            grads = []
            for r in range(rows):
                (g,) = torch.autograd.grad(v[:, r].sum(), emb, retain_graph=r < rows - 1)
                grads.append(g)
        per_point(sl, torch.stack(grads))
        vals.append(v.detach())
        del v, emb, grads
    return torch.cat(vals, dim=0)


def mask_fixed(ctx: Context, scores: Tensor) -> Tensor:
    """Zero the scores of positions that are not attributed (their 'src' axis is last)."""
    if ctx.fixed is None or not bool(ctx.fixed.any()):
        return scores
    return scores.masked_fill(ctx.fixed.to(scores.device), 0.0)


def completeness(
    attr_sum: Float[Tensor, " rows"], f_x: Float[Tensor, " rows"], f_b: Float[Tensor, " rows"]
) -> dict[str, Any]:
    """|sum of attributions - (f(x) - f(baseline))|, absolute and relative to |f(x) - f(b)|."""
    delta = (f_x - f_b).double()
    err = (attr_sum.double() - delta).abs()
    rel = err / delta.abs().clamp_min(1e-12)
    return {
        "completeness_error": float(err.max()),
        "completeness_error_per_target": [float(e) for e in err],
        "completeness_relative_error": float(rel.max()),
        "f_input": [float(v) for v in f_x],
        "f_baseline": [float(v) for v in f_b],
    }


__all__: Sequence[str] = [
    "Context",
    "grad_map",
    "reduce_hidden",
    "rule_points",
    "completeness",
    "mask_fixed",
]
