"""Gradient methods with respect to the token embeddings (the ``hook_embed`` output).

Position embeddings are held fixed: only the token embedding is perturbed or interpolated, so
IG's completeness is relative to a baseline that keeps the positions. Scores per token are the
signed sum over d_model unless ``reduce`` asks for a norm (``"l2"``, ``"l1"``); saliency is a
magnitude by definition (Simonyan et al. 2014) and defaults to ``"l2"``.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import einsum, repeat

from ..baselines import build_baselines, describe, is_multi
from ..errors import MethodError
from ..registry import MethodOutput, register
from ._common import (
    Context,
    check_positive_int,
    check_reduce,
    completeness,
    grad_map,
    mask_fixed,
    reduce_hidden,
    rule_points,
)


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
    rule: str = "gausslegendre",
    baseline: Any = "zero",
    reduce: str = "sum",
) -> MethodOutput:
    check_positive_int("n_steps", n_steps)
    check_reduce(reduce)
    alphas, weights = rule_points(n_steps, rule)
    x = ctx.input_embed()[0]
    B = build_baselines(ctx, baseline)  # [nb, pos, d]
    nb, rows = B.shape[0], ctx.plan.n_rows
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
    scores = mask_fixed(ctx, reduce_hidden(acc, reduce)).to(x.dtype)
    ends = ctx.values(torch.cat([x[None], B]))  # f(x) and f(baselines) in one batched pass
    f_x, f_b = ends[0], ends[1:].mean(0)
    diag = completeness(acc.sum(dim=(-1, -2)), f_x, f_b)
    diag["n_forward_points"] = nb * n_steps
    diag["batch_size"] = ctx.max_batch()
    return MethodOutput(
        scores,
        params={"n_steps": n_steps, "rule": rule, "baseline": describe(baseline), "reduce": reduce},
        diagnostics=diag,
    )


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
    baseline: Any = ("zero", "gaussian"),
    stdev: float = 0.0,
    reduce: str = "sum",
) -> MethodOutput:
    check_positive_int("n_samples", n_samples)
    check_reduce(reduce)
    if not stdev >= 0:
        raise MethodError(f"stdev must be >= 0, got {stdev!r}.")
    x = ctx.input_embed()[0]
    spec = list(baseline) if isinstance(baseline, tuple) else baseline
    B = build_baselines(ctx, spec if is_multi(spec) or not isinstance(spec, list) else spec)
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
        diff = (x - B[pick[sl]]).double()
        acc.add_(einsum(grads.double(), diff, "r b p d, b p d -> r p d"))

    grad_map(ctx, n_samples, make, per_point)
    acc /= n_samples
    scores = mask_fixed(ctx, reduce_hidden(acc, reduce)).to(x.dtype)
    f_x = ctx.values()[0]
    f_b = ctx.values(B[pick]).mean(0)
    diag = completeness(acc.sum(dim=(-1, -2)), f_x, f_b)
    diag["note"] = "GradientSHAP is complete only in expectation; the error shrinks with n_samples."
    return MethodOutput(
        scores,
        params={
            "n_samples": n_samples,
            "baseline": describe(baseline),
            "stdev": stdev,
            "reduce": reduce,
            "seed": ctx.seed,
        },
        diagnostics=diag,
    )


