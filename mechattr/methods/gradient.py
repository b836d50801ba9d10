"""Gradient methods with respect to the token embeddings (the ``hook_embed`` output).

Position embeddings are held fixed: only the token embedding is perturbed or interpolated, so
IG's completeness is relative to a baseline that keeps the positions. Scores per token are the
signed sum over d_model unless ``reduce`` asks for a norm (``"l2"``, ``"l1"``); saliency is a
magnitude by definition (Simonyan et al. 2014) and defaults to ``"l2"``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from einops import einsum, repeat

from ..baselines import auto_baseline, build_baselines, data_baselines, describe, is_multi
from ..errors import MethodError
from ..contract import Context, MethodOutput, register
from ._common import (
    check_positive_int,
    check_reduce,
    completeness,
    grad_map,
    mask_fixed,
    reduce_hidden,
)
from ..quadrature import rule_points


def _gradient_at_input(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    x = ctx.input_embed()
    box: dict[str, torch.Tensor] = {}

    def keep(sl: slice, g: torch.Tensor) -> None:
        box["g"] = g[:, 0]

    vals = grad_map(ctx, 1, lambda sl: x, keep)
    return box["g"], vals[0]


@register(
    "saliency",
    family="gradient",
    summary="|gradient| of the target w.r.t. each token embedding (Simonyan et al. 2014).",
)
def saliency(ctx: Context, *, reduce: str = "l2") -> MethodOutput:
    check_reduce(reduce)
    g, f_x = _gradient_at_input(ctx)
    scores = mask_fixed(ctx, reduce_hidden(g, reduce))
    return MethodOutput(scores, params={"reduce": reduce}, diagnostics={"f_input": f_x.tolist()})


@register(
    "input_x_gradient",
    aliases=("ixg", "gradient_x_input", "input_times_gradient"),
    family="gradient",
    summary="Token embedding times the gradient, summed over d_model (Shrikumar et al. 2016).",
)
def input_x_gradient(ctx: Context, *, reduce: str = "sum") -> MethodOutput:
    check_reduce(reduce)
    g, f_x = _gradient_at_input(ctx)
    x = ctx.input_embed()[0]
    scores = mask_fixed(ctx, reduce_hidden(x * g, reduce))
    return MethodOutput(scores, params={"reduce": reduce}, diagnostics={"f_input": f_x.tolist()})


def _path_point_maps(
    ctx: Context, x: torch.Tensor, b: torch.Tensor, alphas: torch.Tensor, keep_dims: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target values [n, rows] and gradient x (x - b) maps [rows, n, pos(, d)] at ``b + a (x - b)``
    for each ``a`` in ``alphas`` (float64), batched under the memory cap."""
    diff = (x - b).double()
    maps: list[torch.Tensor] = []

    def make(sl: slice) -> torch.Tensor:
        return b + alphas[sl].to(x)[:, None, None] * (x - b)

    def per_point(sl: slice, g: torch.Tensor) -> None:
        m = g.double() * diff
        maps.append(m if keep_dims else m.sum(-1))

    vals = grad_map(ctx, int(alphas.shape[0]), make, per_point)
    maps_all = torch.cat(maps, dim=1)
    if not (bool(torch.isfinite(vals).all()) and bool(torch.isfinite(maps_all).all())):
        bad = (~torch.isfinite(vals).all(-1)) | (~torch.isfinite(maps_all.flatten(2)).all(-1).all(0))
        where = [round(float(a), 6) for a in alphas[bad.cpu()][:3]]
        raise MethodError(
            f"The target or its gradient is not finite on the path at alpha = {where}: the "
            "baseline sits on a singular point of the model (e.g. an all-zero residual stream "
            "under RMSNorm). Use baseline='auto', 'pad', 'eos' or 'mean', or a fixed rule such as "
            "rule='gausslegendre' (it never evaluates the path's end points)."
        )
    return vals.double(), maps_all


# Intervals narrower than this are not split further: below it, float32 inputs at the two ends
# are hardly distinct and the target's change is rounding, not signal.
_MIN_WIDTH = 2.0**-20
# Share of the remaining error whose intervals are split in one round.
_MARK_SHARE = 0.6


def _adaptive_path(
    ctx: Context,
    x: torch.Tensor,
    b: torch.Tensor,
    *,
    n_steps: int,
    max_points: int,
    tol: float,
    keep_dims: bool,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """IG along one straight path by adaptive trapezoid quadrature.

    Every point gives both f(alpha) and its derivative f'(alpha) = grad . (x - b), so the
    trapezoid rule's error on each interval is *known*, not estimated: err_i = (f(a_{i+1}) -
    f(a_i)) - h_i (f'(a_i) + f'(a_{i+1})) / 2, and the completeness error of the result is
    exactly sum_i err_i. Intervals are bisected, largest |err_i| first, until |sum_i err_i| <=
    tol |f(x) - f(b)| for every target row (tol x a tenth of the range of f along the path where
    that is larger: f(x) ~ f(b)) or ``max_points`` is spent. sum_i |err_i| (the error
    if nothing cancelled) is reported as ``error_bound``; in float32 it has a floor from rounding
    noise in f that no refinement removes, which is why it is not the stopping rule. Returns the attribution map [rows, pos(, d)] (the
    trapezoid weights applied to every point's gradient x (x - b)) and diagnostics.
    """
    alphas = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    f, maps = _path_point_maps(ctx, x, b, alphas, keep_dims)
    history: list[dict[str, float]] = []
    while True:
        fp = maps.flatten(2).sum(-1).T  # [n, rows]: derivative of f along the path
        h = alphas.diff()
        err = (f[1:] - f[:-1]) - h[:, None] * (fp[:-1] + fp[1:]) / 2  # [n - 1, rows]
        # tol is relative to |f(x) - f(b)|, except where the two ends nearly agree while f moves
        # a lot in between: then 1% of their difference can sit below float noise, and a tenth of
        # the range of f along the path is the scale instead.
        span = (f.amax(0) - f.amin(0)) / 10
        scale = torch.maximum((f[-1] - f[0]).abs(), span).clamp_min(1e-6)
        rel = err.abs() / scale  # [n - 1, rows]
        achieved = float((err.sum(0).abs() / scale).max())  # the completeness error, exactly, / scale
        bound = float(rel.sum(0).max())  # no cancellation between intervals assumed
        history.append({"points": int(alphas.shape[0]), "error": achieved, "bound": bound})
        budget = max_points - int(alphas.shape[0])
        if achieved <= tol or budget <= 0:
            break
        # An interval whose error is within the rounding noise of f cannot be improved by
        # splitting it: its "error" is the noise. Neither can one narrower than _MIN_WIDTH.
        noise = 4 * torch.finfo(x.dtype).eps * f.abs().amax(0).clamp_min(1.0)  # [rows]
        above = (err.abs() > noise).any(-1) & (h > _MIN_WIDTH)
        priority = torch.where(above, rel.max(-1).values, 0.0)
        if not bool((priority > 0).any()):
            break
        # Dörfler (1996) bulk marking: split the fewest intervals that together carry a fixed
        # share of the error, worst first. The batch size plays no part in the choice (only in
        # float rounding, which can tip an interval sitting exactly at the threshold).
        order = torch.argsort(priority, descending=True, stable=True)
        carried = priority[order].cumsum(0)
        k = int((carried < _MARK_SHARE * carried[-1]).sum()) + 1
        k = min(k, int((priority > 0).sum()), budget)
        pick = order[:k]
        mids = (alphas[pick] + alphas[pick + 1]) / 2
        f_new, maps_new = _path_point_maps(ctx, x, b, mids, keep_dims)
        alphas = torch.cat([alphas, mids])
        srt = torch.argsort(alphas)
        alphas, f = alphas[srt], torch.cat([f, f_new])[srt]
        maps = torch.cat([maps, maps_new], dim=1)[:, srt]
    h = alphas.diff()
    w = torch.zeros_like(alphas)
    w[:-1] += h / 2
    w[1:] += h / 2
    acc = einsum(maps, w, "r n ..., n -> r ...")
    diag = {
        "n_forward_points": int(alphas.shape[0]),
        "rounds": len(history),
        "error_bound": bound,
        "converged": achieved <= tol,
        "history": history,
        "smallest_interval": float(h.min()),
        "alphas": [float(a) for a in alphas],
        "f_ends": (f[-1], f[0]),  # f(x), f(b): the path's end points, already computed
    }
    return acc, diag


class _IGRun(NamedTuple):
    """What either IG variant hands the shared finish: the attribution ``acc`` ([rows, pos, d],
    or [rows, pos] when already summed over d_model), f(x), the mean f(baseline), diagnostics."""

    acc: torch.Tensor
    summed: bool
    f_x: torch.Tensor
    f_b: torch.Tensor
    extra: dict[str, Any]


def ig_adaptive(
    ctx: Context, x: torch.Tensor, B: torch.Tensor, *, n_steps: int, max_steps: int, tol: float, reduce: str
) -> _IGRun:
    """IG from each baseline in ``B`` by adaptive trapezoid quadrature (:func:`_adaptive_path`),
    averaged over the baselines."""
    nb = B.shape[0]
    runs = [
        _adaptive_path(ctx, x, B[i], n_steps=n_steps, max_points=max_steps, tol=float(tol),
                       keep_dims=reduce != "sum")
        for i in range(nb)
    ]
    # With reduce="sum" the maps are already summed over d_model ([rows, pos]).
    acc = sum(p for p, _ in runs) / nb
    extra = {
        "n_forward_points": sum(d["n_forward_points"] for _, d in runs),
        "rounds": max(d["rounds"] for _, d in runs),
        "converged": all(d["converged"] for _, d in runs),
        "smallest_interval": min(d["smallest_interval"] for _, d in runs),
        "error_bound": max(d["error_bound"] for _, d in runs),
        "alphas": [d["alphas"] for _, d in runs],
        "history": [d["history"] for _, d in runs],
    }
    # the adaptive grid holds alpha = 1 and 0 already
    f_x = runs[0][1]["f_ends"][0].to(x.dtype)
    f_b = torch.stack([d["f_ends"][1] for _, d in runs]).mean(0).to(x.dtype)
    return _IGRun(acc, reduce == "sum", f_x, f_b, extra)


def ig_fixed(ctx: Context, x: torch.Tensor, B: torch.Tensor, *, n_steps: int, rule: str) -> _IGRun:
    """IG from each baseline in ``B`` with the fixed quadrature ``rule`` of ``n_steps`` points
    (:mod:`mechattr.quadrature`); all (baseline, step) points share one batched gradient pass."""
    nb, rows = B.shape[0], ctx.plan.n_rows
    alphas, weights = rule_points(n_steps, rule)
    alphas = alphas.to(x.device)
    # Point i is baseline i // n_steps at step i % n_steps; its weight folds in 1/nb.
    w = (repeat(weights, "s -> (b s)", b=nb) / nb).to(x.device)
    acc = torch.zeros(rows, *x.shape, dtype=torch.float64, device=x.device)

    def make(sl: slice) -> torch.Tensor:
        idx = torch.arange(sl.start, sl.stop, device=x.device)
        b = B[idx // n_steps]
        a = alphas[idx % n_steps].to(x.dtype)[:, None, None]
        return b + a * (x - b)

    def per_point(sl: slice, g: torch.Tensor) -> None:
        idx = torch.arange(sl.start, sl.stop, device=x.device)
        diff = (x - B[idx // n_steps]).double()
        acc.add_(einsum(g.double(), diff, w[sl], "r b p d, b p d, b -> r p d"))

    grad_map(ctx, nb * n_steps, make, per_point)
    ends = ctx.values(torch.cat([x[None], B]))  # f(x) and f(baselines) in one batched pass
    return _IGRun(acc, False, ends[0], ends[1:].mean(0), {"n_forward_points": nb * n_steps})


def _check_ig_options(n_steps: int, rule: str, tol: Any, max_steps: Any, reduce: str) -> tuple[float, int | None]:
    check_positive_int("n_steps", n_steps)
    check_reduce(reduce)
    adaptive = rule == "adaptive"
    if not adaptive and (max_steps is not None or tol is not None):
        raise MethodError("tol and max_steps apply to rule='adaptive' only; use n_steps for fixed rules.")
    tol = 0.01 if tol is None else tol
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0):
        raise MethodError(f"tol must be a number > 0, got {tol!r}.")
    if adaptive:
        max_steps = 8 * n_steps if max_steps is None else check_positive_int("max_steps", max_steps)
        if max_steps < n_steps + 1:
            raise MethodError(f"max_steps ({max_steps}) must be at least n_steps + 1 ({n_steps + 1}).")
    return float(tol), max_steps


@register(
    "integrated_gradients",
    aliases=("ig",),
    family="gradient",
    summary="Path integral of gradients from a baseline to the input (Sundararajan et al. 2017).",
    promises=("completeness",),
)
def integrated_gradients(
    ctx: Context,
    *,
    n_steps: int = 50,
    rule: str = "adaptive",
    baseline: Any = "auto",
    reduce: str = "sum",
    tol: float | None = None,
    max_steps: int | None = None,
) -> MethodOutput:
    """``rule="adaptive"`` (the default) starts from ``n_steps`` equal intervals and bisects
    where the trapezoid rule's (exactly known) error is largest until the completeness error is
    at most ``tol`` (default 0.01) of |f(x) - f(b)| or ``max_steps`` points (default 8 x
    n_steps) are spent; the fixed rules (``"gausslegendre"``, ``"riemann_*"``) use exactly
    ``n_steps`` points. ``baseline="auto"`` is the zero embedding unless that is a degenerate
    point of the model (see :func:`mechattr.baselines.auto_baseline`)."""
    adaptive = rule == "adaptive"
    tol_used, max_used = _check_ig_options(n_steps, rule, tol, max_steps, reduce)
    x = ctx.input_embed()[0]
    used = auto_baseline(ctx) if isinstance(baseline, str) and baseline == "auto" else baseline
    B = build_baselines(ctx, used)  # [nb, pos, d]
    if adaptive:
        assert max_used is not None
        run = ig_adaptive(ctx, x, B, n_steps=n_steps, max_steps=max_used, tol=tol_used, reduce=reduce)
    else:
        run = ig_fixed(ctx, x, B, n_steps=n_steps, rule=rule)
    per_token = run.acc if run.summed else reduce_hidden(run.acc, reduce)
    scores = mask_fixed(ctx, per_token).to(x.dtype)
    attr_sum = run.acc.sum(-1) if run.summed else run.acc.sum(dim=(-1, -2))
    diag = completeness(attr_sum, run.f_x, run.f_b)
    diag.update(run.extra)
    diag["batch_size"] = ctx.max_batch()
    params = {"n_steps": n_steps, "rule": rule, "baseline": describe(used), "reduce": reduce}
    if used is not baseline:
        params["baseline_requested"] = "auto"
    if adaptive:
        params.update(tol=tol_used, max_steps=max_used)
    return MethodOutput(scores, params=params, diagnostics=diag)


@register(
    "smoothgrad",
    aliases=("smooth_grad",),
    family="gradient",
    summary="Saliency averaged over Gaussian-noised embeddings (Smilkov et al. 2017).",
)
def smoothgrad(
    ctx: Context,
    *,
    n_samples: int = 20,
    noise_level: float = 0.1,
    multiply_by_inputs: bool = False,
    reduce: str | None = None,
) -> MethodOutput:
    check_positive_int("n_samples", n_samples)
    if not noise_level >= 0:
        raise MethodError(f"noise_level must be >= 0, got {noise_level!r}.")
    reduce = check_reduce(reduce or ("sum" if multiply_by_inputs else "l2"))
    x = ctx.input_embed()[0]
    free = ctx.free
    # Smilkov et al.: sigma = noise_level * (max - min) of the input.
    sigma = float(noise_level) * float(x[free].max() - x[free].min()) if bool(free.any()) else 0.0
    noise = torch.randn(n_samples, *x.shape, generator=ctx.generator(), dtype=torch.float64)
    noise = (noise * sigma).to(x) * free[None, :, None].to(x)
    maps = torch.zeros(ctx.plan.n_rows, x.shape[0], dtype=torch.float64, device=x.device)

    def per_point(sl: slice, g: torch.Tensor) -> None:
        m = (x + noise[sl]) * g if multiply_by_inputs else g
        maps.add_(reduce_hidden(m.double(), reduce).sum(1))

    grad_map(ctx, n_samples, lambda sl: x + noise[sl], per_point)
    scores = mask_fixed(ctx, maps / n_samples).to(x.dtype)
    return MethodOutput(
        scores,
        params={
            "n_samples": n_samples,
            "noise_level": noise_level,
            "sigma": sigma,
            "multiply_by_inputs": multiply_by_inputs,
            "reduce": reduce,
            "seed": ctx.seed,
        },
    )


@register(
    "gradient_shap",
    aliases=("gradshap", "expected_gradients"),
    family="gradient",
    summary="Expected gradients over random baselines and path points (Lundberg & Lee 2017).",
    promises=("completeness_in_expectation",),
)
def gradient_shap(
    ctx: Context,
    *,
    n_samples: int = 50,
    baseline: Any = None,
    data: Any = None,
    n_baselines: int = 20,
    stdev: float = 0.0,
    reduce: str = "sum",
) -> MethodOutput:
    """GradientSHAP as Captum defines it (Lundberg & Lee 2017; expected gradients, Erion et al.
    2021): for sample ``k`` a baseline ``b_k`` drawn from data, ``alpha_k ~ U(0, 1)`` and noise
    ``eps_k ~ N(0, stdev^2)`` on the input; the attribution is the mean over samples of
    ``(x + eps_k - b_k) * grad f(b_k + alpha_k (x + eps_k - b_k))``.

    Baselines (default): ``n_baselines`` embeddings of real token sequences, windows of
    ``data`` (texts or token ids; see :func:`mechattr.baselines.data_baselines`) or, without
    ``data``, uniformly drawn vocabulary tokens. ``baseline=`` any spec of
    :mod:`mechattr.baselines` (e.g. ``["zero", "gaussian"]``, the former default) replaces them."""
    check_positive_int("n_samples", n_samples)
    check_reduce(reduce)
    if not stdev >= 0:
        raise MethodError(f"stdev must be >= 0, got {stdev!r}.")
    if baseline is not None and data is not None:
        raise MethodError("Give either baseline= (a fixed spec) or data= (sequences to draw baselines from), not both.")
    x = ctx.input_embed()[0]
    if baseline is None:
        B, _ = data_baselines(ctx, data, n_baselines, ctx.generator(3000))
        B = B.to(x)
        used: Any = "data" if data is not None else "random_tokens"
    else:
        spec = list(baseline) if isinstance(baseline, tuple) else baseline
        B = build_baselines(ctx, spec if is_multi(spec) or not isinstance(spec, list) else spec)
        used = describe(baseline)
    g = ctx.generator()
    pick = torch.randint(0, B.shape[0], (n_samples,), generator=g)
    alpha = torch.rand(n_samples, generator=g, dtype=torch.float64).to(x)
    noise = (torch.randn(n_samples, *x.shape, generator=g, dtype=torch.float64) * stdev).to(x)
    noise = noise * ctx.free[None, :, None].to(x)
    acc = torch.zeros(ctx.plan.n_rows, *x.shape, dtype=torch.float64, device=x.device)

    def make(sl: slice) -> torch.Tensor:
        b = B[pick[sl]]
        return b + alpha[sl, None, None] * (x + noise[sl] - b)

    def per_point(sl: slice, grads: torch.Tensor) -> None:
        # Captum multiplies by the noised input minus the baseline, the path actually taken
        diff = (x + noise[sl] - B[pick[sl]]).double()
        acc.add_(einsum(grads.double(), diff, "r b p d, b p d -> r p d"))

    grad_map(ctx, n_samples, make, per_point)
    acc /= n_samples
    scores = mask_fixed(ctx, reduce_hidden(acc, reduce)).to(x.dtype)
    f_x = ctx.values()[0]
    f_b = ctx.values(B[pick]).mean(0)
    diag = completeness(acc.sum(dim=(-1, -2)), f_x, f_b)
    diag["note"] = "GradientSHAP is complete only in expectation; the error shrinks with n_samples."
    diag["n_baselines"] = int(B.shape[0])
    return MethodOutput(
        scores,
        params={
            "n_samples": n_samples,
            "baseline": used,
            "n_baselines": int(B.shape[0]),
            "stdev": stdev,
            "reduce": reduce,
            "seed": ctx.seed,
        },
        diagnostics=diag,
    )


