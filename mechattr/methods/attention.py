"""Attention-based attribution: raw attention, rollout, flow, attention x gradient, value-weighted
attention norms, and layer-wise gradient x activation.

Every score is read at each target row's read position ``t = plan.positions[r]``: the row ``t`` of an
attention pattern says how much position ``t`` (where the prediction is made) reads each source.
The BOS token is an ordinary position here (attention sinks on it are part of what these methods
show), so unlike the gradient family these methods never zero it; ``layer_gradient_x_activation``
is a gradient method and follows ``attribute_bos`` like ``input_x_gradient``.

Patterns come from ``blocks.{l}.attn.hook_pattern`` (``[batch, head, dst, src]``, softmax output,
causal). Some TransformerBridge models only run that hook in compatibility mode; this is detected
(the hook never fires) and reported with what to do.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from einops import einsum, reduce, repeat
from jaxtyping import Float
from torch import Tensor

from ..errors import HookError, MethodError, ModelError
from ..contract import Context, MethodOutput, register
from ..tl import hooks as hooknames
from ..tl.hooks import Recorder
from ._common import mask_fixed
from .flow import DEFAULT_SCALE, layered_max_flow

HEAD_AGGS = ("mean", "max", "min")


def pattern_hook(layer: int) -> str:
    return hooknames.attn_pattern(layer)


def _compat_error(layer: int, cause: str) -> ModelError:
    return ModelError(
        f"The attention pattern hook {pattern_hook(layer)!r} {cause}: this model exposes attention "
        "patterns only in compatibility mode. Call `model.enable_compatibility_mode()` on the "
        "TransformerBridge (or load it as a HookedTransformer on TransformerLens 3) and run the "
        "attention method again."
    )


def _resolve_layer(ctx: Context, layer: Any) -> int:
    n = ctx.adapter.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise MethodError(f"layer must be an int in [{-n}, {n - 1}] or None (all layers), got {layer!r}.")
    return layer % n


def _check_agg(name: str, agg: Any, allow_none: bool = False) -> None:
    ok = HEAD_AGGS + ((None,) if allow_none else ())
    if agg not in ok:
        raise MethodError(f"{name} must be one of {list(ok)}, got {agg!r}.")


def _check_weight(w: Any) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        raise MethodError(f"residual_weight must be a number in [0, 1], got {w!r}.")
    return float(w)


def aggregate_heads(
    x: Float[Tensor, "... head dst src"], how: str
) -> Float[Tensor, "... dst src"]:
    _check_agg("head aggregation", how)
    return reduce(x, "... h i j -> ... i j", how)


def record_attention(
    ctx: Context,
    layers: Sequence[int],
    extra: Callable[[int], Sequence[str]] = lambda l: (),
    keep_graph: bool = False,
    embed: Tensor | None = None,
) -> tuple[dict[int, Tensor], dict[tuple[int, str], Tensor], Tensor | None]:
    """Patterns ``{layer: [1, head, pos, pos]}`` and extra activations ``{(layer, hook): x}``.

    Without ``keep_graph`` the pass runs under no_grad and stops after the last layer needed. With
    it, the target is evaluated through ``plan.evaluate`` and the captured tensors stay in the
    autograd graph (each hook stores its input and hands it on unchanged), so gradients with
    respect to them can be taken; the target values are returned as the third element."""
    rec_p, rec_a = Recorder(detach=False), Recorder(detach=False)
    hooks: list[tuple[str, Callable]] = []
    for l in layers:
        hooks.append(rec_p.hook(pattern_hook(l), key=l))
        for name in extra(l):
            hooks.append(rec_a.hook(name, key=(l, name)))
    pats: dict[int, Tensor] = rec_p.acts
    acts: dict[tuple[int, str], Tensor] = rec_a.acts
    a = ctx.adapter
    values = None
    try:
        if keep_graph:
            with torch.enable_grad():
                values = ctx.plan.evaluate(a, ctx.tokens, embed, fwd_hooks=hooks)
        else:
            with torch.no_grad():
                a.run_until(ctx.tokens, a.resid_post(max(layers)), embed=embed, fwd_hooks=hooks)
    except HookError as e:
        if "hook_pattern" in str(e):
            raise _compat_error(min(layers), "does not exist") from e
        raise
    missing = [l for l in layers if l not in pats]
    if missing:
        raise _compat_error(missing[0], "never fired during the forward pass")
    for (l, name) in [(l, n) for l in layers for n in extra(l)]:
        if (l, name) not in acts:
            raise ModelError(f"The hook {name!r} never fired during the forward pass.")
    return pats, acts, values


def _patterns(ctx: Context, layers: Sequence[int]) -> Float[Tensor, "layer head pos pos"]:
    pats, _, _ = record_attention(ctx, layers)
    return torch.stack([pats[l][0] for l in layers]).detach()


def _rows(ctx: Context, x: Float[Tensor, "... pos src"]) -> Float[Tensor, "... target src"]:
    """Each target row's read position of a [..., dst, src] matrix."""
    return x[..., list(ctx.plan.positions), :]


# ----- pure functions ---------------------------------------------------------------------------
def mixing_matrices(
    patterns: Float[Tensor, "layer head pos pos"],
    residual_weight: float = 0.5,
    head_agg: str = "mean",
) -> Float[Tensor, "layer pos pos"]:
    """Per-layer token mixing of Abnar & Zuidema (2020): ``Â_l = (1 - w) A_l + w I`` with ``A_l``
    the head-aggregated attention and ``w = residual_weight`` the share of the residual
    connection, rows renormalised to sum to 1 (they already do for ``head_agg='mean'``)."""
    w = _check_weight(residual_weight)
    a = aggregate_heads(patterns.double(), head_agg)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    m = (1.0 - w) * a + w * eye
    return m / m.sum(-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)


def rollout_matrices(
    patterns: Float[Tensor, "layer head pos pos"],
    residual_weight: float = 0.5,
    head_agg: str = "mean",
) -> Float[Tensor, "layer pos pos"]:
    """Attention rollout after every layer: ``J_1 = Â_1`` and ``J_l = Â_l J_{l-1}`` (Abnar &
    Zuidema 2020), ``J_l[i, j]`` the share of input token ``j`` in position ``i`` after layer ``l``.
    Every row is a probability distribution over the inputs."""
    mix = mixing_matrices(patterns, residual_weight, head_agg)
    out = []
    j = None
    for m in mix:  # a product along depth: the only loop, over layers
        j = m if j is None else m @ j
        out.append(j)
    return torch.stack(out)


# ----- methods ----------------------------------------------------------------------------------
@register(
    "attention",
    aliases=("raw_attention", "attention_weights"),
    family="attention",
    summary="Raw attention weights of the target position over the inputs, per layer / head.",
    layered=True,
)
def attention(ctx: Context, *, layer: int | None = None, heads: str | None = "mean") -> MethodOutput:
    """``heads``: aggregate over heads with mean/max/min, or None to keep a ``head`` axis.
    ``layer``: one layer (no layer axis) or None (all layers, a ``layer`` axis)."""
    _check_agg("heads", heads, allow_none=True)
    layers = list(range(ctx.adapter.n_layers)) if layer is None else [_resolve_layer(ctx, layer)]
    pats = _rows(ctx, _patterns(ctx, layers))  # [layer, head, target, src]
    dims: tuple[str, ...] = ("layer", "head", "target", "src")
    if heads is not None:
        pats = aggregate_heads(pats, heads)
        dims = ("layer", "target", "src")
    if layer is not None:
        pats = pats[0]
        dims = dims[1:]
    return MethodOutput(
        pats.float(),
        dims=dims,
        params={"layer": None if layer is None else layers[0], "heads": heads},
    )


@register(
    "attention_rollout",
    aliases=("rollout",),
    family="attention",
    summary="Attention rollout: product of residual-augmented attention over layers (Abnar & Zuidema 2020).",
    layered=True,
)
def attention_rollout(
    ctx: Context, *, residual_weight: float = 0.5, head_agg: str = "mean"
) -> MethodOutput:
    _check_weight(residual_weight)
    _check_agg("head_agg", head_agg)
    pats = _patterns(ctx, list(range(ctx.adapter.n_layers)))
    roll = rollout_matrices(pats, residual_weight, head_agg)
    return MethodOutput(
        _rows(ctx, roll).float(),
        dims=("layer", "target", "src"),
        params={"residual_weight": residual_weight, "head_agg": head_agg},
    )


@register(
    "attention_flow",
    aliases=("flow",),
    family="attention",
    summary="Maximum flow from each token to the target through the layered attention graph (Abnar & Zuidema 2020).",
    layered=True,
)
def attention_flow(
    ctx: Context, *, residual_weight: float = 0.5, head_agg: str = "mean", normalize: bool = True
) -> MethodOutput:
    """Graph (see :mod:`mechattr.methods.flow`): nodes ``(k, i)`` for ``k = 0 .. L`` and positions
    ``i``; an edge ``(k-1, j) -> (k, i)`` with capacity ``Â_k[i, j]`` (:func:`mixing_matrices`);
    the raw score of token ``j`` at layer axis index ``l`` is the maximum flow from source
    ``(0, j)`` to sink ``(l + 1, t)``, ``t`` the target's read position.

    ``normalize=True`` (default, as Abnar & Zuidema's code does for every output node) divides
    each (layer, target) row of flows by its sum over the input tokens, so the scores of one
    output form a distribution over the inputs; ``normalize=False`` keeps the raw max-flow
    values (each at most 1, their sum is not 1)."""
    _check_weight(residual_weight)
    _check_agg("head_agg", head_agg)
    if not isinstance(normalize, bool):
        raise MethodError(f"normalize must be True or False, got {normalize!r}.")
    pats = _patterns(ctx, list(range(ctx.adapter.n_layers)))
    caps = mixing_matrices(pats, residual_weight, head_agg).cpu().numpy()
    res = layered_max_flow(caps, list(ctx.plan.positions), scale=DEFAULT_SCALE)
    values = torch.as_tensor(res.values, dtype=torch.float64)
    raw_sum = values.sum(-1)
    if normalize:
        values = values / raw_sum[..., None].clamp_min(torch.finfo(torch.float64).tiny)
    return MethodOutput(
        values.float(),
        dims=("layer", "target", "src"),
        params={"residual_weight": residual_weight, "head_agg": head_agg, "normalize": normalize},
        diagnostics={
            "flow_max_gap": res.max_gap,
            "flow_problems": res.n_problems,
            "flow_solver_calls": res.n_solver_calls,
            # the raw flows' sum per (layer, target) row, before any normalisation
            "flow_raw_sum": raw_sum.tolist(),
        },
    )


@register(
    "attention_x_gradient",
    aliases=("attention_gradient", "attn_x_grad"),
    family="attention",
    summary="Attention weight times the gradient of the target w.r.t. it, per layer and head.",
    layered=True,
)
def attention_x_gradient(ctx: Context) -> MethodOutput:
    """``A[l, h, t, j] * d target / d A[l, h, t, j]`` at the target's row ``t``. The gradient is the
    total derivative through every later layer (the pattern of each layer is the tensor the
    model goes on to use, kept in the autograd graph)."""
    L = ctx.adapter.n_layers
    layers = list(range(L))
    embed = ctx.input_embed().clone().requires_grad_(True)
    pats, _, values = record_attention(ctx, layers, keep_graph=True, embed=embed)
    plist = [pats[l] for l in layers]
    rows = []
    with torch.enable_grad():
        for r, t in enumerate(ctx.plan.positions):
            grads = torch.autograd.grad(
                values[:, r].sum(), plist, retain_graph=r < ctx.plan.n_rows - 1, allow_unused=True
            )
            g = torch.stack([torch.zeros_like(p) if gr is None else gr for p, gr in zip(plist, grads)])
            p = torch.stack(plist).detach()
            rows.append((p * g)[:, 0, :, t, :])  # [layer, head, src]
    scores = torch.stack(rows, dim=2)
    return MethodOutput(
        scores.detach().float(),
        dims=("layer", "head", "target", "src"),
        diagnostics={"f_input": [float(v) for v in values[0].detach()]},
    )


def _w_o(ctx: Context, layer: int) -> Float[Tensor, "head d_head d_model"]:
    return ctx.adapter.W_O(layer)


VWA_HEADS = ("combined", "per_head")


@register(
    "value_weighted_attention",
    aliases=("attention_norm", "value_norm"),
    family="attention",
    summary="Norm of what each source writes through a layer's attention, ||sum_h a_ij v_j W_O|| (Kobayashi et al. 2020).",
    layered=True,
)
def value_weighted_attention(ctx: Context, *, heads: str = "combined") -> MethodOutput:
    """Kobayashi et al. 2020 ("Attention is not only a weight"): with
    ``f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h`` the transformed value of source ``j`` in head ``h``,
    ``heads="combined"`` (default, the paper's layer-level norm) scores
    ``||Σ_h α_{h,t,j} f_h(x_j)||`` per layer, what source ``j`` writes into the residual stream at
    ``t`` through the whole attention layer (dims ``layer, target, src``); ``heads="per_head"``
    keeps ``||α_{h,t,j} f_h(x_j)||`` per head (dims ``layer, head, target, src``; summing those
    over heads is an upper bound of the combined norm, not the paper's score). Grouped-query
    models share a key/value head among ``n_heads / n_kv_heads`` query heads; values are
    repeated to the query heads."""
    if heads not in VWA_HEADS:
        raise MethodError(f"heads must be one of {list(VWA_HEADS)}, got {heads!r}.")
    a = ctx.adapter
    layers = list(range(a.n_layers))
    v_name = lambda l: (a.attn_v(l),)  # noqa: E731
    pats, acts, _ = record_attention(ctx, layers, extra=v_name)
    H = a.n_heads
    out = []
    for l in layers:
        v = acts[(l, a.attn_v(l))][0].detach()  # [pos, kv_head, d_head]
        if v.shape[-2] != H:
            if H % v.shape[-2]:
                raise ModelError(f"{H} attention heads cannot share {v.shape[-2]} key/value heads evenly.")
            # head h reads key/value head h // (H / n_kv), as in TransformerLens and HF repeat_kv
            v = repeat(v, "p kv d -> p (kv g) d", g=H // v.shape[-2])
        vo = einsum(v, _w_o(ctx, l).detach().to(v.dtype), "p h d, h d m -> h p m")
        p = _rows(ctx, pats[l][0].detach())  # [head, target, src]
        if heads == "per_head":
            out.append(p * vo.norm(dim=-1)[:, None, :])
        else:  # the vector sum over heads first, then the norm
            out.append(einsum(p, vo, "h t p, h p m -> t p m").norm(dim=-1))
    dims = ("layer", "head", "target", "src") if heads == "per_head" else ("layer", "target", "src")
    return MethodOutput(torch.stack(out).float(), dims=dims, params={"heads": heads})


@register(
    "layer_gradient_x_activation",
    aliases=("layer_ixg", "layer_gxa"),
    family="attention",
    summary="Gradient x activation on the residual stream before every layer and after the last.",
    layered=True,
)
def layer_gradient_x_activation(ctx: Context) -> MethodOutput:
    """Layer axis ``l = 0 .. L-1``: ``blocks.{l}.hook_resid_pre``; ``l = L``: the final residual
    (``blocks.{L-1}.hook_resid_post``). Score = ``sum_d x[t', d] * d target / d x[t', d]`` per source
    position ``t'``.

    Layer 0's residual is the token embedding plus the position embedding (for models with
    absolute positions, e.g. GPT-2; rotary models add nothing), so its score equals
    ``input_x_gradient`` plus ``position_embedding · gradient``. Fixed positions (BOS unless
    ``attribute_bos=True``) score 0, as in the gradient family."""
    a = ctx.adapter
    L = a.n_layers
    names = [a.resid_pre(l) for l in range(L)] + [a.final_resid_hook]
    rec = Recorder(detach=False)
    store = rec.acts

    embed = ctx.input_embed().clone().requires_grad_(True)
    with torch.enable_grad():
        values = ctx.plan.evaluate(
            a, ctx.tokens, embed, fwd_hooks=[rec.hook(n, key=i) for i, n in enumerate(names)]
        )
        missing = [names[i] for i in range(L + 1) if i not in store]
        if missing:
            raise ModelError(f"The residual hook {missing[0]!r} never fired during the forward pass.")
        acts = [store[i] for i in range(L + 1)]
        rows = []
        for r in range(ctx.plan.n_rows):
            grads = torch.autograd.grad(
                values[:, r].sum(), acts, retain_graph=r < ctx.plan.n_rows - 1, allow_unused=True
            )
            rows.append(
                torch.stack(
                    [
                        (x.detach() * (torch.zeros_like(x) if g is None else g)).sum(-1)[0]
                        for x, g in zip(acts, grads)
                    ]
                )
            )
    scores = mask_fixed(ctx, torch.stack(rows, dim=1))  # [layer, target, src]
    return MethodOutput(
        scores.detach().float(),
        dims=("layer", "target", "src"),
        params={"hooks": names},
        diagnostics={"f_input": [float(v) for v in values[0].detach()]},
    )
