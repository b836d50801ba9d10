"""Perturbation methods: switch tokens (or user spans) off and watch the target move.

Every method here evaluates many perturbed copies of the input through
:func:`mechattr.perturb.perturbed_values` (batched, no gradients, under the memory cap) and
explains every target row. Scores are signed, in units of the target, with axes
``("target", "src")``. A "feature" is one free token, or one user span when ``spans=[(start,
end), ...]`` is given (end exclusive, positions of the full input including BOS); the score of a
span is spread evenly over its tokens (each token gets the span's score divided by its length),
so sums over tokens equal sums over spans, and tokens outside every span are never perturbed and
score 0. The span-level scores are kept in ``diagnostics['feature_scores']``.

``replacement`` says what a removed token becomes (see :mod:`mechattr.perturb`): ``"auto"``
(default: the tokenizer's own unknown token when it has one that is not BOS/EOS, else a zero
token embedding), ``"delete"``, ``"zero"``, ``"mean"``, ``"unk"``/``"mask"``/``"pad"``/``"eos"``/
``"bos"``, a token id, or ``"plausible"`` (a token sampled from the model's own prediction).
Random choices use ``seed`` (the ``seed=`` argument of :func:`mechattr.attribute`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import MethodError
from ..perturb import Features, Replacement, make_features, perturbed_values, resolve_replacement
from ..progress import progress
from ..tl import prefix
from ..contract import Context, MethodOutput, register
from ._common import check_positive_int, completeness

DISTANCES = ("cosine", "hamming")


# ----- shared helpers -------------------------------------------------------------------------


def _batched_values(ctx: Context, masks: Bool[Tensor, "n pos"], rep: Replacement, desc: str) -> Float[Tensor, "n rows"]:
    """:func:`perturbed_values` one memory-capped batch at a time, under a progress bar when
    there is more than one batch. ``rep`` is resolved once, so the values do not depend on the
    split (perturbed_values batches the same way inside)."""
    n = masks.shape[0]
    chunks = list(ctx.batches(n, with_grad=False)) if n else [slice(0, 0)]
    if len(chunks) == 1:
        return perturbed_values(ctx, masks, rep)
    order = prefix.sort_order(masks) if prefix.enabled() else None  # batches share long prefixes
    m = masks if order is None else masks[order]
    vals = torch.cat([perturbed_values(ctx, m[sl], rep) for sl in progress(chunks, desc=desc, quiet=ctx.quiet)], dim=0)
    return vals if order is None else torch.empty_like(vals).index_copy_(0, order, vals)


def _values(
    ctx: Context, feats: Features, rep: Replacement, absent: Bool[Tensor, "n F"], desc: str = "perturbations"
) -> Float[Tensor, "n rows"]:
    """Target values (float64) of feature coalitions; each distinct coalition is evaluated once."""
    uniq, inverse = torch.unique(absent.bool(), dim=0, return_inverse=True)
    vals = _batched_values(ctx, feats.masks(uniq), rep, desc).double()
    return vals[inverse]


def _params(feats: Features, spans: Any, rep: Replacement, ctx: Context, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "spans": None if spans is None else [list(s) for s in feats.spans],
        "replacement": rep.name,
        "seed": ctx.seed,
    }


def _empty_output(ctx: Context, params: dict[str, Any]) -> MethodOutput:
    rows = ctx.plan.n_rows
    scores = torch.zeros(rows, ctx.n_pos, dtype=ctx.input_embed().dtype)
    return MethodOutput(scores, params=params, diagnostics={"note": "no attributable tokens"})


def _check_replacement_arg(replacement: Any) -> None:
    if replacement is None:
        raise MethodError("replacement cannot be None; use 'auto' for the default.")


def _shapley_diagnostics(
    ctx: Context, feats: Features, phi: Tensor, f_x: Tensor, f_empty: Tensor, n_forward: int
) -> dict[str, Any]:
    """Efficiency gap sum(phi) - (f(x) - f(empty)) and the span-level scores."""
    gap = phi.sum(-1) - (f_x - f_empty)
    diag = completeness(phi.sum(-1), f_x, f_empty)
    diag.update(
        {
            "f_empty": [float(v) for v in f_empty],
            "efficiency_gap": float(gap.abs().max()) if gap.numel() else 0.0,
            "efficiency_gap_per_target": [float(v) for v in gap],
            "feature_scores": phi.tolist(),
            "features": [list(s) for s in feats.spans],
            "n_forward": int(n_forward),
            "batch_size": ctx.max_batch(with_grad=False),
        }
    )
    return diag


# ----- occlusion ------------------------------------------------------------------------------


@register(
    "occlusion",
    aliases=("ablation", "feature_ablation"),
    family="perturbation",
    summary="f(x) - f(x with token(s) replaced), sliding windows or spans (Zeiler & Fergus 2014).",
)
def occlusion(
    ctx: Context,
    *,
    window: int = 1,
    spans: Sequence[Sequence[int]] | None = None,
    replacement: Any = "auto",
) -> MethodOutput:
    """With ``window=k`` every run of ``k`` consecutive free tokens is occluded together and a
    token's score is the mean drop over the windows that contain it (``k=1``: plain leave-one-out).
    With ``spans`` each span is occluded as one unit and its drop is spread over its tokens."""
    check_positive_int("window", window)
    _check_replacement_arg(replacement)
    if spans is not None and window != 1:
        raise MethodError("Give either spans= or window= (> 1) for occlusion, not both.")
    rep = resolve_replacement(ctx, replacement)
    P = ctx.n_pos
    if spans is not None:
        feats = make_features(ctx, spans)
        units = feats.membership
    else:
        feats = make_features(ctx)
        free_idx = torch.nonzero(ctx.free).flatten()
        nf = len(free_idx)
        if nf and window > nf:
            raise MethodError(f"window={window} is longer than the {nf} attributable tokens; use a smaller window.")
        nw = max(nf - window + 1, 0)
        units = torch.zeros(nw, P, dtype=torch.bool, device=ctx.tokens.device)
        if nw:
            # Window w covers free positions w .. w+window-1.
            dev = free_idx.device
            cols = free_idx[torch.arange(nw, device=dev)[:, None] + torch.arange(window, device=dev)[None, :]]
            units[torch.arange(nw, device=dev)[:, None], cols] = True
    params = _params(feats, spans, rep, ctx, window=window)
    if units.shape[0] == 0:
        return _empty_output(ctx, params)
    masks = torch.cat([torch.zeros(1, P, dtype=torch.bool, device=units.device), units], dim=0)
    vals = _batched_values(ctx, masks, rep, "occlusion").double()
    f_x, drop = vals[0], vals[0] - vals[1:]  # drop: [units, rows]
    if spans is not None:
        scores = feats.spread(drop.T)
    else:
        u = units.double()
        scores = (drop.T @ u) / u.sum(0).clamp_min(1)
    diag = {
        "f_input": [float(v) for v in f_x],
        "unit_drops": drop.T.tolist(),
        "units": [torch.nonzero(r).flatten().tolist() for r in units],
        "n_forward": int(masks.shape[0]),
        "batch_size": ctx.max_batch(with_grad=False),
    }
    return MethodOutput(scores.to(ctx.input_embed().dtype), params=params, diagnostics=diag)


# ----- LIME -----------------------------------------------------------------------------------


def weighted_ridge(
    X: Float[Tensor, "n F"], y: Float[Tensor, "n rows"], w: Float[Tensor, " n"], alpha: float
) -> tuple[Float[Tensor, "F rows"], Float[Tensor, " rows"], Float[Tensor, " rows"]]:
    """Weighted ridge regression with an unpenalised intercept (closed form, float64).

    Minimises sum_i w_i (y_i - b - X_i beta)^2 + alpha |beta|^2; centring X and y on their
    weighted means removes the intercept from the penalty (as scikit-learn's Ridge does).
    Returns (beta, b, weighted R^2)."""
    X, y, w = X.double(), y.double(), w.double()
    sw = w.sum()
    xm = (w[:, None] * X).sum(0) / sw
    ym = (w[:, None] * y).sum(0) / sw
    Xc, yc = X - xm, y - ym
    A = Xc.T @ (w[:, None] * Xc) + alpha * torch.eye(X.shape[1], dtype=torch.float64)
    rhs = Xc.T @ (w[:, None] * yc)
    beta = torch.linalg.lstsq(A, rhs).solution if alpha == 0 else torch.linalg.solve(A, rhs)
    b = ym - xm @ beta
    resid = y - (X @ beta + b)
    ss_res = (w[:, None] * resid**2).sum(0)
    ss_tot = (w[:, None] * yc**2).sum(0)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res <= 1e-24).double())
    return beta, b, r2


def lime_kernel(
    present: Bool[Tensor, "n F"], kernel_width: float, distance: str
) -> Float[Tensor, " n"]:
    """LIME's sample weights sqrt(exp(-d^2 / width^2)) (Ribeiro et al. 2016; the text explainer's
    kernel), with d the cosine or Hamming distance between a sample's on/off vector and the
    all-on original."""
    z = present.double()
    F = z.shape[1]
    on = z.sum(-1)
    if distance == "cosine":
        d = 1 - torch.sqrt(on / F)
    elif distance == "hamming":
        d = (F - on) / F
    else:
        raise MethodError(f"Unknown distance {distance!r}; choose one of {list(DISTANCES)}.")
    return torch.sqrt(torch.exp(-(d**2) / kernel_width**2))


FEATURE_SELECTIONS = ("none", "auto", "forward_selection", "highest_weights")


def lime_select(
    X: Float[Tensor, "n F"], y: Float[Tensor, " n"], w: Float[Tensor, " n"], num_features: int, how: str
) -> list[int]:
    """LIME's feature selection for one output (lime_base.LimeBase.feature_selection): which
    ``num_features`` columns of ``X`` the final ridge fit may use.

    ``"forward_selection"``: greedy; each step adds the column whose unpenalised weighted least
    squares fit (with intercept) on the chosen columns has the highest weighted R^2.
    ``"highest_weights"``: one weighted ridge fit (alpha 0.01) on all columns, keep the largest
    |coefficient| (LIME multiplies by the original's row, all ones here). ``"auto"``: forward
    selection for ``num_features <= 6``, else highest weights (LIME's rule). ``"none"``: all."""
    F = X.shape[1]
    k = min(int(num_features), F)
    if how == "none" or k >= F:
        return list(range(F))
    if how == "auto":
        how = "forward_selection" if k <= 6 else "highest_weights"
    y2 = y.reshape(-1, 1)
    if how == "highest_weights":
        beta, _, _ = weighted_ridge(X, y2, w, 0.01)
        order = torch.argsort(beta[:, 0].abs(), descending=True, stable=True)
        return sorted(order[:k].tolist())
    if how == "forward_selection":
        used: list[int] = []
        for _ in range(k):
            best, best_score = -1, -float("inf")
            for f in range(F):
                if f in used:
                    continue
                _, _, r2 = weighted_ridge(X[:, used + [f]], y2, w, 0.0)
                if float(r2[0]) > best_score:
                    best, best_score = f, float(r2[0])
            used.append(best)
        return sorted(used)
    raise MethodError(f"Unknown feature_selection {how!r}; choose one of {list(FEATURE_SELECTIONS)}.")


@register(
    "lime",
    family="perturbation",
    summary="Weighted ridge fit on random token masks (Ribeiro et al. 2016).",
)
def lime(
    ctx: Context,
    *,
    n_samples: int = 5000,
    kernel_width: float = 0.25,
    distance: str = "cosine",
    alpha: float = 1.0,
    spans: Sequence[Sequence[int]] | None = None,
    replacement: Any = "auto",
    feature_selection: str = "none",
    num_features: int | None = None,
) -> MethodOutput:
    """Samples as LIME's text explainer: the original plus ``n_samples - 1`` masks that remove a
    uniformly drawn number 1..F of uniformly chosen features. Defaults follow LimeTextExplainer
    (5000 samples, cosine distance, width 25 on a x100 scale = 0.25 here, Ridge alpha 1); the
    sample count was chosen by measurement on the zoo (docs/methods/perturbation.md: rank
    agreement with exact Shapley values is only stable across seeds from about 5000 samples).
    Each distinct mask is evaluated once. Scores are the fitted coefficients;
    ``diagnostics['weighted_r2']`` tells how well the linear surrogate fits.

    ``feature_selection`` (LIME's options; default ``"none"``: every feature, an attribution
    for every token): ``"forward_selection"``, ``"highest_weights"`` or ``"auto"`` keep
    ``num_features`` features (default 10, as ``explain_instance``) per target row before the
    final ridge fit; the others score 0 (see :func:`lime_select`)."""
    check_positive_int("n_samples", n_samples, minimum=2)
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or not kernel_width > 0:
        raise MethodError(f"kernel_width must be a positive number, got {kernel_width!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise MethodError(f"alpha (ridge penalty) must be a number >= 0, got {alpha!r}.")
    if distance not in DISTANCES:
        raise MethodError(f"Unknown distance {distance!r}; choose one of {list(DISTANCES)}.")
    if feature_selection not in FEATURE_SELECTIONS:
        raise MethodError(
            f"Unknown feature_selection {feature_selection!r}; choose one of {list(FEATURE_SELECTIONS)}."
        )
    if num_features is not None:
        check_positive_int("num_features", num_features)
    elif feature_selection != "none":
        num_features = 10  # LimeTextExplainer.explain_instance's default
    _check_replacement_arg(replacement)
    feats = make_features(ctx, spans)
    rep = resolve_replacement(ctx, replacement)
    params = _params(
        feats, spans, rep, ctx, n_samples=n_samples, kernel_width=kernel_width, distance=distance, alpha=alpha,
        feature_selection=feature_selection, num_features=num_features,
    )
    F = feats.n
    if F == 0:
        return _empty_output(ctx, params)
    g = ctx.generator(11)
    k = torch.randint(1, F + 1, (n_samples - 1,), generator=g)
    rank = torch.rand(n_samples - 1, F, generator=g).argsort(-1).argsort(-1)
    absent = torch.cat([torch.zeros(1, F, dtype=torch.bool), rank < k[:, None]], dim=0)
    y = _values(ctx, feats, rep, absent.to(ctx.tokens.device), "LIME").cpu()
    w = lime_kernel(~absent, float(kernel_width), distance)
    X = (~absent).double()
    if feature_selection == "none" or num_features is None or num_features >= F:
        beta, b, r2 = weighted_ridge(X, y, w, float(alpha))
        selected = [list(range(F))] * y.shape[1]
    else:  # LIME selects per explained output, then fits the ridge on the chosen columns only
        beta = torch.zeros(F, y.shape[1], dtype=torch.float64)
        b = torch.zeros(y.shape[1], dtype=torch.float64)
        r2 = torch.zeros(y.shape[1], dtype=torch.float64)
        selected = []
        for r in range(y.shape[1]):
            cols = lime_select(X, y[:, r].double(), w, num_features, feature_selection)
            br, br_b, br_r2 = weighted_ridge(X[:, cols], y[:, r : r + 1], w, float(alpha))
            beta[cols, r], b[r], r2[r] = br[:, 0], br_b[0], br_r2[0]
            selected.append(cols)
    phi = beta.T  # [rows, F]
    scores = feats.spread(phi)
    diag = {
        "f_input": [float(v) for v in y[0]],
        "weighted_r2": [float(v) for v in r2],
        "selected_features": selected,
        "intercept": [float(v) for v in b],
        "feature_scores": phi.tolist(),
        "features": [list(s) for s in feats.spans],
        "n_forward": int(torch.unique(absent, dim=0).shape[0]),
        "batch_size": ctx.max_batch(with_grad=False),
    }
    return MethodOutput(scores.to(ctx.input_embed().dtype).to(ctx.tokens.device), params=params, diagnostics=diag)


# ----- Shapley values -------------------------------------------------------------------------


def _ends(ctx: Context, feats: Features, rep: Replacement) -> tuple[Tensor, Tensor]:
    """f(x) (nothing removed) and f(empty) (every feature removed), float64 [rows]."""
    F = feats.n
    absent = torch.stack([torch.zeros(F, dtype=torch.bool), torch.ones(F, dtype=torch.bool)])
    v = _values(ctx, feats, rep, absent.to(ctx.tokens.device)).cpu()
    return v[0], v[1]


def shapley_kernel_sizes(F: int) -> Float[Tensor, " sizes"]:
    """Probability of each coalition size 1..F-1 under the Shapley kernel: the kernel weight
    (F-1) / (C(F,s) s (F-s)) summed over the C(F,s) coalitions of size s (Lundberg & Lee 2017)."""
    s = torch.arange(1, F, dtype=torch.float64)
    p = (F - 1) / (s * (F - s))
    return p / p.sum()


def constrained_least_squares(
    Z: Float[Tensor, "n F"], y: Float[Tensor, "n rows"], total: Float[Tensor, " rows"]
) -> Float[Tensor, "rows F"]:
    """argmin_phi |Z phi - y|^2 subject to sum(phi) = total, via the KKT system (minimum-norm
    solution when few coalitions leave it singular)."""
    Z, y = Z.double(), y.double()
    F = Z.shape[1]
    K = torch.zeros(F + 1, F + 1, dtype=torch.float64)
    K[:F, :F] = 2 * Z.T @ Z
    K[:F, F] = 1
    K[F, :F] = 1
    rhs = torch.cat([2 * Z.T @ y, total.double()[None]], dim=0)
    sol = torch.linalg.lstsq(K, rhs, driver="gelsd").solution
    return sol[:F].T


@register(
    "kernel_shap",
    aliases=("kernelshap",),
    family="perturbation",
    summary="Shapley values by Shapley-kernel weighted regression on sampled coalitions (Lundberg & Lee 2017).",
    promises=("completeness",),
)
def kernel_shap(
    ctx: Context,
    *,
    n_samples: int = 512,
    paired: bool = True,
    spans: Sequence[Sequence[int]] | None = None,
    replacement: Any = "auto",
) -> MethodOutput:
    """Coalitions are drawn with the Shapley kernel as their distribution (size s with probability
    proportional to (F-1)/(s(F-s)), then a uniform subset of that size), so the regression is
    unweighted; the empty and full coalitions enter as constraints: phi_0 = f(empty) and
    sum(phi) = f(x) - f(empty) (efficiency). ``paired`` adds each coalition's complement
    (Covert & Lee 2021), which cuts the variance."""
    check_positive_int("n_samples", n_samples)
    if not isinstance(paired, bool):
        raise MethodError(f"paired must be True or False, got {paired!r}.")
    _check_replacement_arg(replacement)
    feats = make_features(ctx, spans)
    rep = resolve_replacement(ctx, replacement)
    params = _params(feats, spans, rep, ctx, n_samples=n_samples, paired=paired)
    F = feats.n
    if F == 0:
        return _empty_output(ctx, params)
    f_x, f_empty = _ends(ctx, feats, rep)
    if F == 1:
        phi = (f_x - f_empty)[:, None]
        n_forward = 2
    else:
        g = ctx.generator(23)
        n_draw = math.ceil(n_samples / 2) if paired else n_samples
        sizes = torch.multinomial(shapley_kernel_sizes(F), n_draw, replacement=True, generator=g) + 1
        rank = torch.rand(n_draw, F, generator=g).argsort(-1).argsort(-1)
        present = rank < sizes[:, None]
        if paired:
            present = torch.stack([present, ~present], dim=1).reshape(-1, F)[:n_samples]
        y = _values(ctx, feats, rep, (~present).to(ctx.tokens.device), "kernel SHAP").cpu()
        phi = constrained_least_squares(present.double(), y - f_empty, f_x - f_empty)
        n_forward = 2 + int(torch.unique(present, dim=0).shape[0])
    scores = feats.spread(phi)
    diag = _shapley_diagnostics(ctx, feats, phi, f_x, f_empty, n_forward)
    return MethodOutput(scores.to(ctx.input_embed().dtype).to(ctx.tokens.device), params=params, diagnostics=diag)


@register(
    "shapley_sampling",
    aliases=("shapley_value_sampling", "permutation_shap"),
    family="perturbation",
    summary="Shapley values by averaging marginal contributions over random permutations (Castro et al. 2009).",
    promises=("completeness",),
)
def shapley_sampling(
    ctx: Context,
    *,
    n_permutations: int = 25,
    antithetic: bool = True,
    spans: Sequence[Sequence[int]] | None = None,
    replacement: Any = "auto",
) -> MethodOutput:
    """Each permutation adds the features one by one to the empty input; a feature's score is its
    mean marginal contribution. Every permutation telescopes to f(x) - f(empty), so efficiency
    holds exactly. ``antithetic`` pairs every permutation with its reverse (Mitchell et al. 2022);
    then ``n_permutations`` is rounded up to an even number."""
    check_positive_int("n_permutations", n_permutations)
    if not isinstance(antithetic, bool):
        raise MethodError(f"antithetic must be True or False, got {antithetic!r}.")
    _check_replacement_arg(replacement)
    feats = make_features(ctx, spans)
    rep = resolve_replacement(ctx, replacement)
    params = _params(feats, spans, rep, ctx, n_permutations=n_permutations, antithetic=antithetic)
    F = feats.n
    if F == 0:
        return _empty_output(ctx, params)
    g = ctx.generator(37)
    n_draw = math.ceil(n_permutations / 2) if antithetic else n_permutations
    perms = torch.rand(n_draw, F, generator=g).argsort(-1)
    if antithetic:
        perms = torch.cat([perms, perms.flip(-1)], dim=0)
    rank = perms.argsort(-1)  # rank[p, f]: step at which feature f joins in permutation p
    steps = torch.arange(F + 1)
    # present[p, k, f]: feature f is in after k steps of permutation p (k = 0 .. F).
    present = rank[:, None, :] < steps[None, :, None]
    n_p = perms.shape[0]
    vals = _values(ctx, feats, rep, (~present).reshape(-1, F).to(ctx.tokens.device), "Shapley sampling").cpu()
    vals = vals.reshape(n_p, F + 1, -1)
    marg = vals[:, 1:] - vals[:, :-1]  # [p, step, rows]
    per_feature = marg.gather(1, rank[..., None].expand(-1, -1, marg.shape[-1]))  # [p, F, rows]
    phi = per_feature.mean(0).T
    f_x, f_empty = vals[0, F], vals[0, 0]
    n_forward = int(torch.unique(present.reshape(-1, F), dim=0).shape[0])
    diag = _shapley_diagnostics(ctx, feats, phi, f_x, f_empty, n_forward)
    diag["n_permutations_used"] = int(n_p)
    scores = feats.spread(phi)
    return MethodOutput(scores.to(ctx.input_embed().dtype).to(ctx.tokens.device), params=params, diagnostics=diag)


def shapley_coefficients(F: int) -> Float[Tensor, "F coalitions"]:
    """C with phi = C @ v for v indexed by coalition bitmask: C[i, S] = w(|S|-1) if i in S, else
    -w(|S|), where w(s) = s! (F-s-1)! / F! (Shapley 1953)."""
    S = torch.arange(2**F)
    member = ((S[None, :] >> torch.arange(F)[:, None]) & 1).bool()  # [F, 2^F]
    size = member.sum(0).double()

    def w(s: Tensor) -> Tensor:
        return torch.exp(torch.lgamma(s + 1) + torch.lgamma(F - s) - math.lgamma(F + 1))

    return torch.where(member, w((size - 1).clamp_min(0)), -w(size.clamp_max(F - 1)))


@register(
    "shapley",
    aliases=("exact_shapley", "shapley_exact"),
    family="perturbation",
    summary="Exact Shapley values by enumerating all coalitions of up to max_features tokens/spans.",
    promises=("completeness",),
)
def shapley(
    ctx: Context,
    *,
    max_features: int = 12,
    spans: Sequence[Sequence[int]] | None = None,
    replacement: Any = "auto",
) -> MethodOutput:
    """2^F forward passes for F features; refused above ``max_features``."""
    check_positive_int("max_features", max_features)
    if max_features > 24:
        raise MethodError("max_features above 24 means more than 16 million forward passes; use kernel_shap.")
    _check_replacement_arg(replacement)
    feats = make_features(ctx, spans)
    rep = resolve_replacement(ctx, replacement)
    params = _params(feats, spans, rep, ctx, max_features=max_features)
    F = feats.n
    if F > max_features:
        raise MethodError(
            f"Exact Shapley values over {F} features need 2^{F} = {2**F} forward passes, more than "
            f"max_features={max_features} allows. Use method='kernel_shap' or 'shapley_sampling', "
            "group tokens with spans=[(start, end), ...], or raise max_features."
        )
    if F == 0:
        return _empty_output(ctx, params)
    S = torch.arange(2**F)
    present = ((S[:, None] >> torch.arange(F)[None, :]) & 1).bool()  # [2^F, F]
    vals = _batched_values(ctx, feats.masks(~present.to(ctx.tokens.device)), rep, "exact Shapley").double().cpu()
    phi = (shapley_coefficients(F) @ vals).T  # [rows, F]
    diag = _shapley_diagnostics(ctx, feats, phi, vals[-1], vals[0], 2**F)
    scores = feats.spread(phi)
    return MethodOutput(scores.to(ctx.input_embed().dtype).to(ctx.tokens.device), params=params, diagnostics=diag)


__all__ = [
    "occlusion",
    "lime",
    "kernel_shap",
    "shapley_sampling",
    "shapley",
    "weighted_ridge",
    "lime_kernel",
    "constrained_least_squares",
    "shapley_coefficients",
    "shapley_kernel_sizes",
]
