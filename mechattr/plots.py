"""Matplotlib figures of attribution results (optional dependency, imported only when called).

Every function returns a ``matplotlib.figure.Figure`` (never shows it), so callers decide whether
to display, save as PDF/PNG or embed. Diverging data use a colour map centred on zero; magnitudes
(``reduce='norm'`` results, saliency) use a sequential one.

>>> from mechattr import plots
>>> fig = plots.token_heatmap(res); fig.savefig("ig.pdf")
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InputError


def _mpl() -> Any:
    try:
        # Figures are built without pyplot: no global backend or figure registry is touched, so
        # this works headless and never leaks open figures.
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "mechattr.plots needs matplotlib, an optional dependency: pip install matplotlib"
        ) from e
    return Figure


def _tok_labels(tokens: Sequence[str]) -> list[str]:
    # repr shows leading spaces and newlines that would otherwise be invisible on an axis.
    return [repr(t)[1:-1] if t.strip() == t else repr(t) for t in tokens]


def _norm_args(values: Tensor, signed: bool) -> dict[str, Any]:
    finite = values[torch.isfinite(values)]
    m = float(finite.abs().max()) if finite.numel() else 1.0
    m = m if m > 0 else 1.0
    if signed:
        return {"cmap": "RdBu_r", "vmin": -m, "vmax": m}
    return {"cmap": "viridis", "vmin": 0.0, "vmax": m}


def _heat(ax: Any, values: Tensor, xlabels: Sequence[str], ylabels: Sequence[str], signed: bool, annotate: bool) -> Any:
    v = values.detach().float().cpu()
    im = ax.imshow(v.numpy(), aspect="auto", interpolation="nearest", **_norm_args(v, signed))
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=8)
    if annotate and v.numel() <= 400:
        lim = float(v.abs().max()) or 1.0
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                x = float(v[i, j])
                ax.text(j, i, f"{x:.2g}", ha="center", va="center", fontsize=6,
                        color="white" if abs(x) > 0.6 * lim else "black")
    return im


def token_heatmap(res: Any, annotate: bool = True, title: str | None = None) -> Any:
    """Target × source-token heatmap of a result (final layer, heads summed)."""
    Figure = _mpl()
    final = res.final()
    s = final.scores
    for _ in final.dims[:-2]:
        s = s.sum(0)
    n_t, n_s = s.shape
    fig = Figure(figsize=(max(4.0, 0.45 * n_s + 2), max(1.6, 0.4 * n_t + 1.3)), layout="constrained")
    ax = fig.add_subplot()
    im = _heat(ax, s, _tok_labels(res.tokens), [repr(t) for t in res.targets], res.is_signed, annotate)
    ax.set_xlabel("source token")
    ax.set_ylabel("target")
    ax.set_title(title or f"{res.method}", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attribution")
    return fig


def layer_heatmap(res: Any, target: int | str = 0, annotate: bool = False, title: str | None = None) -> Any:
    """Layer × source-token heatmap of a layered result (heads summed) for one target."""
    if "layer" not in res.dims:
        raise InputError(
            f"layer_heatmap needs a layered result (dims with 'layer'); {res.method!r} has dims {res.dims}. "
            "Use token_heatmap instead."
        )
    Figure = _mpl()
    t = res._target_index(target)
    dims = list(res.dims)
    s = res.scores
    for d in list(dims):
        if d not in ("layer", "target", "src"):
            s = s.sum(dims.index(d))
            dims.remove(d)
    s = s[:, t]
    n_l, n_s = s.shape
    fig = Figure(figsize=(max(4.0, 0.45 * n_s + 2), max(2.0, 0.25 * n_l + 1.3)), layout="constrained")
    ax = fig.add_subplot()
    im = _heat(ax, s, _tok_labels(res.tokens), [str(i) for i in range(n_l)], res.is_signed, annotate)
    ax.set_xlabel("source token")
    ax.set_ylabel("layer")
    ax.set_title(title or f"{res.method}: target {res.targets[t]!r} by layer", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def agreement_matrix(
    matrix: Float[Tensor, "m m"] | Sequence[Sequence[float]] | Sequence[Any],
    labels: Sequence[str] | None = None,
    title: str = "Spearman correlation between methods",
    target: int | str = 0,
) -> Any:
    """Method × method correlation heatmap. Pass a square matrix with ``labels``, or a list of
    results (their Spearman matrix over ``target`` is computed with :func:`rank_agreement`)."""
    Figure = _mpl()
    if len(matrix) and hasattr(matrix[0], "token_scores"):
        labels = list(labels) if labels is not None else [r.method for r in matrix]
        m = rank_agreement(matrix, target=target)
    else:
        m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise InputError(f"agreement_matrix needs a square matrix, got shape {tuple(m.shape)}.")
    labels = list(labels) if labels is not None else [str(i) for i in range(m.shape[0])]
    if len(labels) != m.shape[0]:
        raise InputError(f"{len(labels)} labels for a {m.shape[0]}×{m.shape[0]} matrix.")
    k = m.shape[0]
    fig = Figure(figsize=(1.0 * k + 2.5, 0.9 * k + 1.5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m.float().numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(range(k))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(k):
        for j in range(k):
            x = float(m[i, j])
            ax.text(j, i, "nan" if math.isnan(x) else f"{x:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(x) > 0.6 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def rank_agreement(results: Sequence[Any], target: int | str = 0) -> Float[Tensor, "m m"]:
    """Spearman correlation between the token scores of every pair of results (same tokens).
    Positions every result scores exactly 0 (fixed tokens such as BOS) are left out, since their
    shared zero would inflate agreement. NaN where a method's scores are constant."""
    from .validation.stats import spearman

    if not results:
        raise InputError("Give at least one result.")
    toks = results[0].tokens
    if any(r.tokens != toks for r in results[1:]):
        raise InputError("Agreement needs results over the same tokens (same prompt and model).")
    s = torch.stack([r.token_scores(target).double().cpu() for r in results])
    keep = (s != 0).any(0)
    s = s[:, keep] if int(keep.sum()) >= 2 else s
    return spearman(s[:, None, :], s[None, :, :])


def deletion_curves(
    curves: Mapping[str, Sequence[float]],
    x: Sequence[float] | None = None,
    title: str = "deletion",
    ylabel: str = "target (mean change)",
    band: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Any:
    """Lines of the target against the fraction of tokens removed, one per ordering (e.g. the
    ``mean_curves`` of a validation ``perturbation`` check). ``band`` = (low, high) shades a range,
    e.g. random orderings' mean ± std."""
    Figure = _mpl()
    if not curves:
        raise InputError("deletion_curves needs at least one curve.")
    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ys = list(ys)
        xs = list(x) if x is not None else [i / max(1, len(ys) - 1) for i in range(len(ys))]
        if len(xs) != len(ys):
            raise InputError(f"curve {name!r} has {len(ys)} points but x has {len(xs)}.")
        ax.plot(xs, ys, marker="o", markersize=3, label=name, linestyle="--" if "random" in name else "-")
    if band is not None:
        lo, hi = band
        xs = list(x) if x is not None else [i / max(1, len(lo) - 1) for i in range(len(lo))]
        ax.fill_between(xs, list(lo), list(hi), color="grey", alpha=0.25, linewidth=0)
    ax.set_xlabel("fraction of tokens removed")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


def ablation_scatter(
    scores: Sequence[float] | Tensor,
    effects: Sequence[float] | Tensor,
    labels: Sequence[str] | None = None,
    title: str = "attribution vs ablation effect",
) -> Any:
    """Each token's attribution score against the target drop when that token alone is removed,
    with the Spearman correlation in the title. ``labels`` annotate the points (token strings)."""
    from .validation.stats import spearman

    Figure = _mpl()
    a = torch.as_tensor(scores, dtype=torch.float64).flatten()
    b = torch.as_tensor(effects, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise InputError(f"{a.numel()} scores but {b.numel()} effects.")
    fig = Figure(figsize=(4.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(a.numpy(), b.numpy(), s=18)
    if labels is not None:
        for x, y, lab in zip(a.tolist(), b.tolist(), _tok_labels(labels)):
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    rho = float(spearman(a, b)) if a.numel() >= 2 else float("nan")
    ax.axhline(0, color="#999", linewidth=0.6)
    ax.axvline(0, color="#999", linewidth=0.6)
    ax.set_xlabel("attribution score")
    ax.set_ylabel("f(x) − f(x without token)")
    ax.set_title(f"{title} (Spearman {rho:.2f})", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def to_png_base64(fig: Any, dpi: int = 110) -> str:
    """The figure as a base64 PNG string (for ``<img src="data:image/png;base64,...">``)."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")
