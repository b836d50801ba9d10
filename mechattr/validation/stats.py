"""Rank statistics written out (no scipy dependency): average ranks, Spearman, Kendall tau-b,
top-k overlap. All work on the last axis and broadcast over the leading ones.

Sizes here are token counts (tens to hundreds), so the O(n^2) pairwise forms are cheap and keep
tie handling exact and obvious.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def rankdata(x: Float[Tensor, "... n"]) -> Float[Tensor, "... n"]:
    """Ranks 1..n with ties given their average rank (scipy's ``method='average'``)."""
    x = x.double()
    less = (x[..., None, :] < x[..., :, None]).sum(-1).double()
    equal = (x[..., None, :] == x[..., :, None]).sum(-1).double()
    # Tied values occupy ranks less+1 .. less+equal; their average is less + (equal + 1) / 2.
    return less + (equal + 1.0) / 2.0


def pearson(a: Float[Tensor, "... n"], b: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Pearson correlation; NaN where either side is constant (undefined, never silently 0)."""
    a, b = a.double(), b.double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    num = (a * b).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def spearman(a: Float[Tensor, "... n"], b: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Spearman rank correlation: Pearson correlation of average ranks (Spearman 1904)."""
    return pearson(rankdata(a), rankdata(b))


def kendall(a: Float[Tensor, "... n"], b: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Kendall's tau-b (Kendall 1945): (concordant - discordant) / sqrt((n0 - t_a)(n0 - t_b)),
    where t_a, t_b count pairs tied in a, in b. NaN when one side is constant."""
    a, b = a.double(), b.double()
    sa = torch.sign(a[..., :, None] - a[..., None, :])
    sb = torch.sign(b[..., :, None] - b[..., None, :])
    # Each unordered pair appears twice in the full matrices; the factors of 2 cancel.
    num = (sa * sb).sum((-1, -2))
    den = (sa.abs().sum((-1, -2)) * sb.abs().sum((-1, -2))).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def top_k_indices(x: Float[Tensor, " n"], k: int, by_abs: bool = True) -> Tensor:
    """Indices of the k largest entries (by magnitude unless ``by_abs=False``); ties go to the
    earlier position so the result never depends on the sort implementation."""
    key = x.abs() if by_abs else x
    n = key.shape[-1]
    k = max(0, min(int(k), n))
    order = sorted(range(n), key=lambda i: (-float(key[i]), i))
    return torch.tensor(order[:k], dtype=torch.long)


def top_k_intersection(a: Float[Tensor, " n"], b: Float[Tensor, " n"], k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k (Adebayo et al. 2018 report this next to rank correlations)."""
    k = max(1, min(int(k), a.shape[-1]))
    sa = set(top_k_indices(a, k).tolist())
    sb = set(top_k_indices(b, k).tolist())
    return len(sa & sb) / k


def top_k_jaccard(a: Float[Tensor, " n"], b: Float[Tensor, " n"], k: int) -> float:
    """|A ∩ B| / |A ∪ B| for the top-k sets (by magnitude)."""
    k = max(1, min(int(k), a.shape[-1]))
    sa = set(top_k_indices(a, k).tolist())
    sb = set(top_k_indices(b, k).tolist())
    return len(sa & sb) / len(sa | sb)


def nanmean(values: list[float]) -> float:
    v = [x for x in values if x == x]
    return float(sum(v) / len(v)) if v else float("nan")


def nanstd(values: list[float]) -> float:
    v = [x for x in values if x == x]
    if len(v) < 2:
        return 0.0 if v else float("nan")
    m = sum(v) / len(v)
    return float((sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5)
