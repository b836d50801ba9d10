"""Attribution patching of heads, MLPs and residual positions, and its integrated-gradients form.

Attribution patching (Nanda 2023; Syed et al. 2023, "Attribution Patching Outperforms Automated
Circuit Discovery") replaces one forward per patched component by one backward. The sign
convention is named by ``direction`` (the project-wide convention, shared with
``mechattr.circuits``) and recorded in every result:

* ``direction="denoise"`` (default; TransformerLens 4's ``tools.analysis.attribution_patching``):
  gradient at the corrupt run, ``score = (a_clean − a_corrupt) · ∂m/∂a |corrupt``
  ``≈ m(corrupt with the node set to clean) − m(corrupt)``;
* ``direction="noise"`` (the EAP-IG paper's ``(corrupt − clean)·∇`` form): gradient at the clean
  run, ``score = (a_corrupt − a_clean) · ∂m/∂a |clean ≈ m(clean with the node set to corrupt) −
  m(clean)``.

The old ``grad_at`` argument is deprecated: ``grad_at="corrupt"`` is ``direction="denoise"``
(identical scores); ``grad_at="clean"`` maps to ``direction="noise"``, whose scores are the
NEGATIVE of what ``grad_at="clean"`` returned before (it multiplied by clean − corrupt).

``ig_steps > 1`` is EAP-IG (Hanna et al. 2024, "Have Faith in Faithfulness"): the gradient is
averaged over ``ig_steps`` points on the straight path from the corrupt to the clean token
embeddings (Gauss–Legendre nodes), which undoes the saturation that makes the one-point estimate
unfaithful; ``direction`` then only sets the sign (denoise: ``(a_clean − a_corrupt)·∇̄``, noise:
``(a_corrupt − a_clean)·∇̄``). At the model input the estimate is complete: the residual scores
of layer 0, summed over positions, equal ``m(clean) − m(corrupt)`` (denoise) or
``m(corrupt) − m(clean)`` (noise) up to quadrature error.

Nodes: heads (``attn.hook_z``), MLPs (``hook_mlp_out``) and residual stream positions
(``hook_resid_pre`` of each layer). The metric is the sum of the target rows (a
:class:`~mechattr.Target` or anything :func:`mechattr.attribute` accepts, resolved on the clean
prompt and evaluated identically on the corrupt one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from ..errors import InputError, MethodError
from ..quadrature import rule_points
from ..targets import LogitPlan, Plan, evaluate_hooked
from ..tl.adapter import ModelAdapter
from ..tl import attribution_patching as tl_patching
from ..tl.attribution_patching import tl_attribution_patching_available
from ..tl.hooks import Taps

BACKENDS = ("mechattr", "transformer_lens")
DIRECTIONS = ("denoise", "noise")
_GRAD_AT_TO_DIRECTION = {"corrupt": "denoise", "clean": "noise"}


@dataclass(frozen=True)
class PatchingResult:
    """Scores per node. ``heads [layer, head]``, ``mlp [layer]``, ``resid [layer, pos]`` are
    summed over positions where the node has one; ``*_by_pos`` keep the positions."""

    heads: Float[Tensor, "layer head"]
    mlp: Float[Tensor, " layer"]
    resid: Float[Tensor, "layer pos"]
    heads_by_pos: Float[Tensor, "layer pos head"]
    mlp_by_pos: Float[Tensor, "layer pos"]
    tokens: list[str]
    corrupt_tokens: list[str]
    metric_clean: float
    metric_corrupt: float
    ig_steps: int
    grad_at: str  # where the gradient was taken: "clean", "corrupt" or "path" (EAP-IG)
    backend: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # Sign convention (docs/circuits.md, sign convention: "denoise" = (clean − corrupt)·∇|corrupt, "noise" =
    # (corrupt − clean)·∇|clean); see the module docstring.
    direction: str = "denoise"

    @property
    def method(self) -> str:
        if self.diagnostics.get("gradient", "plain") != "plain":
            return f"relp_{self.diagnostics['gradient']}"
        return "eap_ig" if self.ig_steps > 1 else "attribution_patching"

    def to_records(self) -> list[dict[str, Any]]:
        """One row per node: kind, layer, head (or None), position (or None), score, and the
        sign convention (``direction``) the score follows."""
        recs: list[dict[str, Any]] = []
        L, H = self.heads.shape
        d = self.direction
        for layer in range(L):
            for h in range(H):
                recs.append({"kind": "head", "layer": layer, "head": h, "position": None,
                             "score": float(self.heads[layer, h]), "direction": d})
            recs.append({"kind": "mlp", "layer": layer, "head": None, "position": None,
                         "score": float(self.mlp[layer]), "direction": d})
            for p in range(self.resid.shape[1]):
                recs.append({"kind": "resid_pre", "layer": layer, "head": None, "position": p,
                             "score": float(self.resid[layer, p]), "direction": d})
        return recs

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary: method, sign convention, metrics and the per-node records."""
        return {
            "method": self.method,
            "direction": self.direction,
            "grad_at": self.grad_at,
            "ig_steps": self.ig_steps,
            "backend": self.backend,
            "tokens": list(self.tokens),
            "corrupt_tokens": list(self.corrupt_tokens),
            "metric_clean": self.metric_clean,
            "metric_corrupt": self.metric_corrupt,
            "records": self.to_records(),
            "diagnostics": {k: v for k, v in self.diagnostics.items() if isinstance(v, (int, float, str, bool))},
        }

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.to_records())

    def top_heads(self, k: int = 5) -> list[tuple[int, int, float]]:
        """(layer, head, score) of the ``k`` heads with the largest |score|."""
        flat = self.heads.reshape(-1)
        idx = torch.argsort(flat.abs(), descending=True)[:k].tolist()
        H = self.heads.shape[1]
        return [(i // H, i % H, float(flat[i])) for i in idx]


def _names(adapter: ModelAdapter) -> dict[str, list[str]]:
    layers = range(adapter.n_layers)
    return {
        "z": [adapter.attn_z(layer) for layer in layers],
        "mlp": [adapter.mlp_out(layer) for layer in layers],
        "resid": [adapter.resid_pre(layer) for layer in layers],
    }


def _acts_grads(
    adapter: ModelAdapter, plan: Plan, tokens: Tensor, embed: Tensor, names: list[str], grad: bool,
    rules: Any = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, Tensor]:
    """Activations at ``names`` (batch of embeddings) and, if ``grad``, the gradient of the metric
    (sum of target rows, per batch element) at each of them; ``rules`` (a
    :class:`~mechattr.methods.lrp_rules.RuleHooks`) modifies that gradient (RelP)."""
    taps = Taps(names)
    # Rule hooks before the taps: they keep every forward value, so the activations are unchanged.
    ruled = rules.hooks() if (grad and rules is not None) else []
    with torch.enable_grad() if grad else torch.no_grad():
        vals = evaluate_hooked(adapter, plan, tokens.expand(embed.shape[0], -1), embed, fwd_hooks=ruled + taps.hooks())
        if ruled:
            rules.check(until=getattr(plan, "hook", None))
        metric = vals.sum(-1)
        grads = taps.grads(metric.sum(), retain_graph=False) if grad else None
    return taps.acts, grads, metric.detach()


def head_attribution(
    model: Any,
    clean: Any,
    corrupt: Any,
    target: Any = None,
    *,
    ig_steps: int = 1,
    direction: str | None = None,
    grad_at: str | None = None,
    backend: str = "mechattr",
    batch_size: int = 8,
    contrast: Any = None,
    kind: str | None = None,
    gradient: str = "plain",
) -> PatchingResult:
    """Attribution patching (``ig_steps=1``) or EAP-IG (``ig_steps>1``) between a clean and a
    corrupted prompt of the same token length; see the module docstring.

    ``direction``: ``"denoise"`` (default) or ``"noise"`` (docs/circuits.md, sign convention). ``grad_at`` is
    deprecated (``"corrupt"`` = denoise, ``"clean"`` = noise, with the noise sign).

    ``backend="transformer_lens"`` computes heads and MLPs with TL 4's
    ``tools.analysis.attribution_patching.attribution_patch`` (bridge models, logit targets,
    ``grad_at="corrupt"``, ``ig_steps=1`` — what that tool implements); residual positions then
    still come from mechattr's own hooks.

    ``gradient`` picks the backward: ``"plain"`` (attribution patching), or the modified backward
    of ``"attnlrp"``, ``"cp_lrp"`` or ``"gim"`` (:mod:`mechattr.methods.lrp_rules`): Relevance
    Patching (RelP, Jafari et al. 2025, arXiv 2508.21258) scores ``(a_clean − a_corrupt) ·``
    the LRP-modified gradient."""
    from ..api import prompt_tokens, resolve
    from ..methods.lrp_rules import RuleHooks, rule_set

    t0 = time.perf_counter()
    direction = _resolve_direction(direction, grad_at)
    grad_at = "corrupt" if direction == "denoise" else "clean"
    if backend not in BACKENDS:
        raise MethodError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise MethodError(f"ig_steps must be an integer >= 1, got {ig_steps!r}.")
    rs = rule_set(gradient)
    if rs.name != "plain" and backend != "mechattr":
        raise MethodError(f"gradient={gradient!r} needs backend='mechattr' (TransformerLens' tool has plain gradients only).")
    adapter, plan, _ = resolve(model, clean, target, contrast=contrast, kind=kind)
    rules = RuleHooks(adapter, rs) if rs.name != "plain" else None
    n_prompt = prompt_tokens(adapter, clean)[0].shape[-1]
    corr = prompt_tokens(adapter, corrupt)[0]
    if corr.shape[-1] != n_prompt:
        raise InputError(
            f"The clean prompt has {n_prompt} tokens and the corrupted one {corr.shape[-1]}; "
            "attribution patching compares activations position by position, so give prompts of "
            "the same token length."
        )
    clean_toks = plan.tokens
    corr_toks = torch.cat([corr, clean_toks[:, n_prompt:]], dim=-1)  # same forced continuation
    L = adapter.n_layers
    names = _names(adapter)
    all_names = names["z"] + names["mlp"] + names["resid"]
    with adapter.guard():
        e_clean, e_corr = adapter.embed(clean_toks), adapter.embed(corr_toks)
        # hook_embed is the only token-dependent input (positions are shared), so the corrupted
        # run is the clean tokens with corrupted token embeddings; the IG path then interpolates
        # one tensor.
        a_clean, g_clean, m_clean = _acts_grads(adapter, plan, clean_toks, e_clean, all_names, ig_steps == 1 and grad_at == "clean", rules)
        a_corr, g_corr, m_corr = _acts_grads(adapter, plan, clean_toks, e_corr, all_names, ig_steps == 1 and grad_at == "corrupt", rules)
        if ig_steps == 1:
            g = g_clean if grad_at == "clean" else g_corr
            assert g is not None
            grads = {n: g[n][0] for n in all_names}
        else:
            alphas, weights = rule_points(ig_steps, "gausslegendre")
            grads = {n: torch.zeros_like(a_clean[n][0], dtype=torch.float64) for n in all_names}
            for i in range(0, ig_steps, batch_size):
                al = alphas[i : i + batch_size].to(e_clean)[:, None, None]
                pts = e_corr + al * (e_clean - e_corr)
                _, gs, _ = _acts_grads(adapter, plan, clean_toks, pts, all_names, True, rules)
                w = weights[i : i + batch_size].to(e_clean.device)
                for n in all_names:
                    grads[n] += einsum(gs[n].double(), w, "b ..., b -> ...")
        # denoise: (a_clean − a_corrupt)·∇; noise: (a_corrupt − a_clean)·∇ (docs/circuits.md, sign convention)
        sign = 1.0 if direction == "denoise" else -1.0
        delta = {n: sign * (a_clean[n][0] - a_corr[n][0]).double() for n in all_names}
        heads_by_pos = torch.stack([(delta[n] * grads[n]).sum(-1) for n in names["z"]])  # l p h
        mlp_by_pos = torch.stack([(delta[n] * grads[n]).sum(-1) for n in names["mlp"]])  # l p
        resid = torch.stack([(delta[n] * grads[n]).sum(-1) for n in names["resid"]])  # l p
        diagnostics: dict[str, Any] = {}
        used = "mechattr"
        if backend == "transformer_lens":
            heads_by_pos, mlp_by_pos = _tl_node_scores(adapter, plan, clean_toks, corr_toks, ig_steps, grad_at)
            used = "transformer_lens"
    delta_m = float(m_clean[0] - m_corr[0]) * (1.0 if direction == "denoise" else -1.0)
    diagnostics.update(
        {
            "seconds": time.perf_counter() - t0,
            "metric_delta": delta_m,
            # At the input the IG path is the true straight line, so this is IG's completeness.
            "resid0_sum": float(resid[0].sum()),
            "completeness_error_resid0": abs(float(resid[0].sum()) - delta_m),
            "gradient": rs.name,
        }
    )
    return PatchingResult(
        heads=heads_by_pos.sum(1).float(),
        mlp=mlp_by_pos.sum(1).float(),
        resid=resid.float(),
        heads_by_pos=heads_by_pos.float(),
        mlp_by_pos=mlp_by_pos.float(),
        tokens=adapter.str_tokens(clean_toks),
        corrupt_tokens=adapter.str_tokens(corr_toks),
        metric_clean=float(m_clean[0]),
        metric_corrupt=float(m_corr[0]),
        ig_steps=ig_steps,
        grad_at=grad_at if ig_steps == 1 else "path",
        backend=used,
        diagnostics=diagnostics,
        direction=direction,
    )


def _resolve_direction(direction: Any, grad_at: Any) -> str:
    if grad_at is not None:
        if grad_at not in _GRAD_AT_TO_DIRECTION:
            raise MethodError(f"grad_at must be 'clean' or 'corrupt', got {grad_at!r}; it is deprecated, use direction.")
        mapped = _GRAD_AT_TO_DIRECTION[grad_at]
        if direction is not None and direction != mapped:
            raise MethodError(
                f"grad_at={grad_at!r} means direction={mapped!r} but direction={direction!r} was given; "
                "pass only direction (grad_at is deprecated)."
            )
        import warnings

        msg = (
            f"head_attribution(grad_at={grad_at!r}) is deprecated; use direction={mapped!r}. "
        )
        if grad_at == "clean":
            msg += (
                "Scores now follow the noise convention (a_corrupt − a_clean)·∂m/∂a|clean: the "
                "NEGATIVE of what grad_at='clean' returned before."
            )
        else:
            msg += "The scores are unchanged."
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
        return mapped
    if direction is None:
        return "denoise"
    if direction not in DIRECTIONS:
        raise MethodError(f"direction must be 'denoise' or 'noise', got {direction!r}.")
    return direction


def _tl_node_scores(
    adapter: ModelAdapter, plan: Plan, clean: Tensor, corrupt: Tensor, ig_steps: int, grad_at: str
) -> tuple[Tensor, Tensor]:
    if not tl_attribution_patching_available() or adapter.kind != "bridge":
        raise MethodError(
            "backend='transformer_lens' needs TransformerLens 4 (tools.analysis.attribution_patching) "
            "and a TransformerBridge; use backend='mechattr' (same scores, our own hooks)."
        )
    if ig_steps != 1 or grad_at != "corrupt":
        raise MethodError(
            "TransformerLens' attribution_patch implements ig_steps=1 with the gradient at the "
            "corrupt run only (direction='denoise'); pass direction='denoise', ig_steps=1, or use "
            "backend='mechattr'."
        )
    if not isinstance(plan, LogitPlan):
        raise MethodError("backend='transformer_lens' takes targets read from the logits only.")
    return tl_patching.tl_node_scores(adapter, clean, corrupt, lambda logits: plan.score(logits).sum())


__all__ = [
    "head_attribution",
    "PatchingResult",
    "tl_attribution_patching_available",
]
