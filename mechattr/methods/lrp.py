"""Rule-based backward passes: AttnLRP, CP-LRP and GIM (one forward, one backward per target row).

Relevance is input x *modified* gradient, the modifications being TransformerLens hooks
(:mod:`mechattr.methods.lrp_rules`): AttnLRP (Achtibat et al., ICML 2024), CP-LRP (Ali et al.,
ICML 2022) and GIM (Edin et al. 2025). Token scores are the relevance of the token embeddings
(``hook_embed``); ``layers=True`` returns the relevance of every residual stream position at
every layer instead (``blocks.{l}.hook_resid_pre`` for l < L, the final residual for l = L), as
``layer_gradient_x_activation`` lays it out. The diagnostics always hold the conservation check:
the summed relevance at the input and at every layer against the target value (exact for CP-LRP
on a bias-free model with a logit target; the AttnLRP softmax rule and GIM's temperature are not
conservative).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..baselines import NAMED_BASELINES, build_baselines, describe
from ..tl import hooks as hk
from ..errors import HookError, MethodError
from ..contract import Context, MethodOutput, register
from ._common import check_reduce, mask_fixed, reduce_hidden
from .lrp_rules import RuleHooks, RuleSet, rule_set

FAMILY = "rule-based"


@dataclass
class RelevancePass:
    """Result of one modified backward: target values, the modified gradient at the token
    embeddings and at every tapped hook (per target row), and the activations there."""

    values: Float[Tensor, "batch rows"]
    embed_grad: Float[Tensor, "rows batch pos d_model"]
    acts: dict[str, Tensor]
    grads: dict[str, Tensor]  # name -> [rows, batch, ...]
    rules: RuleSet


def relevance_pass(
    adapter: Any,
    plan: Any,
    tokens: Tensor,
    embed: Float[Tensor, "batch pos d_model"],
    rules: RuleSet,
    taps: Sequence[str] = (),
    extra_hooks: Sequence[tuple[str, Any]] = (),
) -> RelevancePass:
    """Forward ``embed`` (the token embedding, batch) under the rule hooks and take the modified
    gradient of every target row at the embedding and at the ``taps`` hooks."""
    from ..targets import evaluate_hooked
    from ..tl.hooks import Taps

    rh = RuleHooks(adapter, rules)
    tp = Taps(list(taps))
    x = embed.detach().clone().requires_grad_(True)
    toks = tokens.expand(x.shape[0], -1)
    with torch.enable_grad(), adapter.frozen_weights():
        # Rule hooks first: taps added after them see (and differentiate) the ruled activations.
        try:
            vals = evaluate_hooked(adapter, plan, toks, x, fwd_hooks=rh.hooks() + list(extra_hooks) + tp.hooks())
        except HookError as e:
            raise MethodError(
                f"The {rules.name} rules need hook points this model does not have ({e}); this "
                "architecture is not covered. Use a gradient method instead."
            ) from e
        rh.check(until=getattr(plan, "hook", None))
        if not vals.requires_grad:
            raise MethodError("The target does not depend on the input embeddings; nothing to attribute.")
        names = [n for n in tp.names if n in tp.delta]
        leaves = [x] + [tp.delta[n] for n in names]
        rows = vals.shape[-1]
        per_row: list[Sequence[Tensor | None]] = []
        for r in range(rows):
            per_row.append(torch.autograd.grad(vals[:, r].sum(), leaves, retain_graph=r < rows - 1, allow_unused=True))
    eg = torch.stack([g[0] if g[0] is not None else torch.zeros_like(x) for g in per_row]).detach()
    grads = {
        n: torch.stack([g[i + 1] if g[i + 1] is not None else torch.zeros_like(tp.delta[n]) for g in per_row]).detach()
        for i, n in enumerate(names)
    }
    return RelevancePass(vals.detach(), eg, {n: tp.acts[n] for n in names}, grads, rules)


def _baseline(ctx: Context, spec: Any) -> Tensor | None:
    """None (plain input x gradient), or a reference embedding [pos, d] from a named baseline, a
    token id, or a one-token text such as ``" "`` (gim-explain's counterfactual)."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.lower() not in NAMED_BASELINES:
        tid = ctx.adapter.single_token(spec, what="baseline")
        spec = tid
    B = build_baselines(ctx, spec)
    if B.shape[0] != 1:
        raise MethodError("The rule-based methods take one baseline, not a list.")
    return B[0]


def _conservation(
    values: Tensor, input_sum: Tensor, layer_sums: Tensor | None
) -> dict[str, Any]:
    v = values.double()
    scale = v.abs().clamp_min(1e-12)
    out: dict[str, Any] = {
        "target_value": [float(a) for a in v],
        "input_relevance_sum": [float(a) for a in input_sum],
        "conservation_error_input": float((input_sum.double() - v).abs().max()),
        "conservation_relative_error_input": float(((input_sum.double() - v).abs() / scale).max()),
    }
    if layer_sums is not None:
        err = (layer_sums.double() - v[None]).abs()  # [layer, rows]
        out["layer_relevance_sums"] = [[float(a) for a in row] for row in layer_sums]
        out["conservation_error_per_layer"] = [float(e) for e in err.max(-1).values]
        out["conservation_relative_error_per_layer"] = [float(e) for e in (err / scale[None]).max(-1).values]
    return out


def run_rules(ctx: Context, rules: RuleSet, *, layers: bool, baseline: Any, reduce: str) -> MethodOutput:
    a = ctx.adapter
    check_reduce(reduce)
    if not isinstance(layers, bool):
        raise MethodError(f"layers must be True or False, got {layers!r}.")
    L = a.n_layers
    resid = [hk.resid_pre(l) for l in range(L)] + [a.final_resid_hook]
    x = ctx.input_embed()
    rp = relevance_pass(a, ctx.plan, ctx.tokens, x, rules, taps=resid)
    b = _baseline(ctx, baseline)
    ref = x[0] if b is None else x[0] - b
    maps = rp.embed_grad[:, 0] * ref  # rows pos d
    token = reduce_hidden(maps, reduce)  # rows pos
    reached = [n for n in resid if n in rp.grads]
    layer_rel = torch.stack([(rp.acts[n][0] * rp.grads[n][:, 0]).sum(-1) for n in reached]) if reached else None
    diag = _conservation(rp.values[0], maps.sum(dim=(-1, -2)), None if layer_rel is None else layer_rel.sum(-1))
    diag["conservation_layers"] = reached
    diag["f_input"] = [float(v) for v in rp.values[0]]
    params = {"rules": rules.name, "layers": layers, "baseline": None if baseline is None else describe(baseline),
              "reduce": reduce, "freeze_norm": rules.freeze_norm, "pattern": rules.pattern,
              "q_scale": rules.q_scale, "k_scale": rules.k_scale, "v_scale": rules.v_scale}
    if rules.pattern == "temperature":
        params["temperature"] = rules.temperature
    if layers:
        if layer_rel is None or len(reached) < len(resid):
            raise MethodError(
                "layers=True needs every residual hook; the target is read before the last layer "
                f"(reached {len(reached)} of {len(resid)}). Use layers=False."
            )
        scores = mask_fixed(ctx, layer_rel)
        return MethodOutput(scores.float(), dims=("layer", "target", "src"), params=params, diagnostics=diag)
    return MethodOutput(mask_fixed(ctx, token).float(), params=params, diagnostics=diag)


@register(
    "attnlrp",
    aliases=("attn_lrp",),
    family=FAMILY,
    summary="AttnLRP (Achtibat et al. 2024): input x gradient with LRP rules for norms, activations, "
    "attention and gated products, one backward.",
    layered=False,
)
def attnlrp(ctx: Context, *, layers: bool = False, baseline: Any = None, reduce: str = "sum") -> MethodOutput:
    """AttnLRP's rules as TransformerLens hooks (see :mod:`mechattr.methods.lrp_rules`)."""
    return run_rules(ctx, rule_set("attnlrp"), layers=layers, baseline=baseline, reduce=reduce)


@register(
    "cp_lrp",
    aliases=("cplrp", "conservative_propagation"),
    family=FAMILY,
    summary="CP-LRP (Ali et al. 2022): AttnLRP's norm and activation rules with the attention "
    "pattern held constant.",
)
def cp_lrp(ctx: Context, *, layers: bool = False, baseline: Any = None, reduce: str = "sum",
           gate: str = "uniform") -> MethodOutput:
    """CP-LRP's rules as TransformerLens hooks. ``gate`` (gated MLPs only): ``"uniform"`` (the
    product rule shared with AttnLRP) or ``"constant"`` (the gate held constant, the linear branch
    takes all; LXT's CP-LRP map for Llama-style MLPs)."""
    if gate not in ("uniform", "constant"):
        raise MethodError(f"cp_lrp: gate must be 'uniform' or 'constant', got {gate!r}.")
    rs = rule_set("cp_lrp")
    if gate == "constant":
        rs = replace(rs, gate_constant=True)
    return run_rules(ctx, rs, layers=layers, baseline=baseline, reduce=reduce)


@register(
    "gim",
    aliases=("gradient_interaction_modifications",),
    family=FAMILY,
    summary="GIM (Edin et al. 2025): norm freezing, temperature-adjusted softmax gradient and "
    "q/k/v gradient scaling, times the input.",
)
def gim(
    ctx: Context,
    *,
    temperature: float = 2.0,
    q_scale: float = 0.25,
    k_scale: float = 0.25,
    v_scale: float = 0.5,
    freeze_norm: bool = True,
    layers: bool = False,
    baseline: Any = None,
    reduce: str = "sum",
) -> MethodOutput:
    """Defaults are gim-explain's (T = 2, q/k/v scales 1/4, 1/4, 1/2, norms frozen).
    ``baseline=" "`` multiplies by (input − embedding of " ") as gim-explain's ``explain`` does;
    the default multiplies by the input."""
    if not isinstance(freeze_norm, bool):
        raise MethodError(f"freeze_norm must be True or False, got {freeze_norm!r}.")
    rs = rule_set("gim", temperature=temperature, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)
    if not freeze_norm:
        from dataclasses import replace

        rs = replace(rs, freeze_norm=False)
    return run_rules(ctx, rs, layers=layers, baseline=baseline, reduce=reduce)


__all__ = ["relevance_pass", "RelevancePass", "run_rules", "attnlrp", "cp_lrp", "gim"]
