"""Relevance of model components under a rule-based backward (AttnLRP, CP-LRP, GIM).

One forward and one backward per target row give, with the same modified gradient as the
``attnlrp``/``cp_lrp``/``gim`` methods:

* ``input``: relevance of each token embedding (the method's token scores);
* ``layers``: relevance of each residual stream position before every layer and after the last;
* ``heads``: relevance of each head's output ``z`` (``attn.hook_z``) at each position,
  ``Σ_d z · ∂̃target/∂z``; ``mlp``: the same at ``hook_mlp_out``;
* ``features`` (with an SAE): relevance of SAE latents at the SAE's hook,
  ``act_f · (W_dec[f] · ∂̃target/∂x)`` per position (the latent's decoder write times the
  modified gradient; the reconstruction error is not a latent and gets none).

The relevance of a component is read off the modified gradient at its activation, as LRP reads
relevance at any layer (Achtibat et al. 2024).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

from ..attribution import Attribution
from ..tl import hooks as hk
from ..errors import InputError
from ..methods.lrp import relevance_pass
from ..methods.lrp_rules import rule_set


@dataclass(frozen=True)
class Relevance:
    """Component relevance of one prompt (rows = target rows). See the module docstring."""

    tokens: list[str]
    targets: list[str]
    rules: str
    values: Float[Tensor, " rows"]
    input: Float[Tensor, "rows pos"]
    layers: Float[Tensor, "layer rows pos"]
    heads: Float[Tensor, "layer head rows pos"]
    mlp: Float[Tensor, "layer rows pos"]
    features: list[int] = field(default_factory=list)
    feature_relevance: Float[Tensor, "feature rows pos"] | None = None
    feature_hook: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def top_heads(self, k: int = 5, row: int = 0) -> list[tuple[int, int, float]]:
        """(layer, head, relevance summed over positions) of the ``k`` heads with the largest |relevance|."""
        h = self.heads[:, :, row].sum(-1)
        flat = h.reshape(-1)
        idx = torch.argsort(flat.abs(), descending=True)[:k].tolist()
        H = h.shape[1]
        return [(i // H, i % H, float(flat[i])) for i in idx]

    def heads_attribution(self) -> Attribution:
        """Head relevance as an :class:`~mechattr.Attribution` with dims
        ``("layer", "head", "target", "src")``; ``src`` is the position the head writes at."""
        return _attr(self, self.heads, ("layer", "head", "target", "src"), "heads")

    def layers_attribution(self) -> Attribution:
        """Residual-stream relevance with dims ``("layer", "target", "src")``."""
        return _attr(self, self.layers, ("layer", "target", "src"), "layers")

    def features_attribution(self) -> Attribution:
        """SAE-latent relevance per position with dims ``("feature", "target", "src")`` and
        ``params['features']``/``params['feature_acts']`` (activation at the first target row's
        read position), the layout :func:`mechattr.linking.feature_view` takes."""
        if self.feature_relevance is None:
            raise InputError("No SAE was given to lrp_relevance(..., sae=...), so there are no latents.")
        a = _attr(self, self.feature_relevance, ("feature", "target", "src"), "features")
        params = {**a.params, "features": list(self.features), "hook": self.feature_hook,
                  "feature_acts": self.diagnostics.get("feature_acts", [])}
        return replace(a, params=params)


def _attr(rel: Relevance, scores: Tensor, dims: tuple[str, ...], what: str) -> Attribution:
    return Attribution(
        tokens=rel.tokens,
        token_ids=rel.diagnostics.get("token_ids", []),
        targets=rel.targets,
        target_positions=rel.diagnostics.get("target_positions", []),
        scores=scores.float(),
        dims=dims,
        method=f"{rel.rules}_{what}",
        params={"rules": rel.rules, "component": what},
        diagnostics={k: v for k, v in rel.diagnostics.items() if k not in ("token_ids", "target_positions")},
    )


def lrp_relevance(
    model: Any,
    text: Any,
    target: Any = None,
    *,
    rules: str = "attnlrp",
    sae: Any = None,
    sae_hook: str | None = None,
    k: int = 10,
    contrast: Any = None,
    kind: str | None = None,
    **rule_params: Any,
) -> Relevance:
    """Relevance of tokens, residual positions, heads, MLPs and (with ``sae``) the ``k`` most
    relevant SAE latents, under ``rules`` (``"attnlrp"``, ``"cp_lrp"``, ``"gim"``, ``"plain"``;
    ``rule_params`` such as ``temperature`` go to :func:`~mechattr.methods.lrp_rules.rule_set`)."""
    from ..api import resolve
    from .sae import encode, sae_hook_name, sae_weights

    t0 = time.perf_counter()
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    rs = rule_set(rules, **rule_params)
    adapter, plan, _ = resolve(model, text, target, contrast=contrast, kind=kind)
    L = adapter.n_layers
    resid = [hk.resid_pre(l) for l in range(L)] + [adapter.final_resid_hook]
    z = [hk.attn_z(l) for l in range(L)]
    mlp = [hk.mlp_out(l) for l in range(L)]
    taps = resid + z + [n for n in mlp if adapter.has_hook(n)]
    hook = None
    if sae is not None:
        hook = sae_hook_name(sae, sae_hook)
        adapter.check_hook(hook)
        W_enc, W_dec = sae_weights(sae)
        if hook not in taps:
            taps.append(hook)
    with adapter.guard():
        x = adapter.embed(plan.tokens)
        rp = relevance_pass(adapter, plan, plan.tokens, x, rs, taps=taps)

    def rel(name: str) -> Tensor:  # rows pos
        if name not in rp.grads:
            return torch.zeros(plan.n_rows, plan.tokens.shape[-1], dtype=x.dtype, device=x.device)
        return (rp.acts[name][0] * rp.grads[name][:, 0]).flatten(2).sum(-1)

    H = adapter.n_heads
    heads = []
    for n in z:
        if n in rp.grads:
            heads.append(rearrange(rp.acts[n][0] * rp.grads[n][:, 0], "r p h e -> h r p e").sum(-1))
        else:
            heads.append(torch.zeros(H, plan.n_rows, plan.tokens.shape[-1], dtype=x.dtype, device=x.device))
    inp = (rp.embed_grad[:, 0] * x[0]).sum(-1)
    layers = torch.stack([rel(n) for n in resid])
    feats: list[int] = []
    f_rel = None
    if sae is not None and hook is not None:
        if hook not in rp.grads:
            raise InputError(f"The target is read before {hook!r}; an SAE there cannot affect it.")
        with torch.no_grad():
            act = rp.acts[hook][0]  # pos d_in
            lat = encode(sae, act).to(act.dtype)  # pos d_sae
            g = rp.grads[hook][:, 0]  # rows pos d_in
            dec = einsum(g, W_dec.detach().to(g.dtype), "r p d, f d -> r p f")
            full = lat[None] * dec  # rows pos d_sae
            order = torch.argsort(full.sum(1).abs().amax(0), descending=True)[: min(k, full.shape[-1])]
            feats = order.tolist()
            f_rel = rearrange(full[..., order], "r p f -> f r p")
            feature_acts = [float(a) for a in lat[plan.positions[0], order]]
    v = rp.values[0]
    diag: dict[str, Any] = {
        "seconds": time.perf_counter() - t0,
        "token_ids": plan.tokens[0].tolist(),
        "target_positions": list(plan.positions),
        "conservation_relative_error_per_layer": [
            float(e) for e in ((layers.sum(-1).double() - v.double()).abs() / v.double().abs().clamp_min(1e-12)).max(-1).values
        ],
    }
    if sae is not None:
        diag["feature_acts"] = feature_acts
    return Relevance(
        tokens=adapter.str_tokens(plan.tokens),
        targets=list(plan.labels),
        rules=rs.name,
        values=v.detach().cpu(),
        input=inp.detach().cpu(),
        layers=layers.detach().cpu(),
        heads=torch.stack(heads).detach().cpu(),
        mlp=torch.stack([rel(n) for n in mlp]).detach().cpu(),
        features=feats,
        feature_relevance=None if f_rel is None else f_rel.detach().cpu(),
        feature_hook=hook,
        diagnostics=diag,
    )


__all__ = ["Relevance", "lrp_relevance"]
