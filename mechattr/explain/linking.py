"""Linking the answer to the model: the token × head map for the tokens that matter, the heads
that carry a counterfactual difference (EAP-IG head attribution and the circuits package's
edge attribution), and integrated gradients' baseline sensitivity."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MechattrError


def head_map(adapter: Any, plan: Any, prompt: str | None, positions: list[int], n_heads: int, seed: int) -> dict[str, Any]:
    """Token × head contributions (gradient mode) for the given token positions, and per layer."""
    from ..api import run_method

    try:
        res = run_method(adapter, plan, "token_head", {"mode": "gradient"}, attribute_bos=True, seed=seed, prompt=prompt)
    except MechattrError as e:
        return {"error": str(e), "carry": [], "source": "token × head map"}
    s = res.scores[:, :, 0]  # layer head src
    per_token = {int(p): s[:, :, p].tolist() for p in positions}
    tot = s[:, :, positions].sum(-1) if positions else s.sum(-1)
    carry = _carriers(tot, n_heads)
    return {
        "source": "token × head map (gradient mode) for the tokens that matter",
        "positions": positions, "per_token": per_token, "total": tot.tolist(),
        "by_layer": s.sum(1).tolist(),  # layer src: heads summed
        "carry": carry, "token_head_carry": carry,
        "meaning": "score: the head's contribution from these tokens to the target (gradient × attention-weighted value); "
                   "the largest positive ones are named",
    }


def _carriers(scores: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """The ``k`` heads with the largest positive scores in a ``[layer, head]`` map."""
    flat = scores.reshape(-1)
    H = scores.shape[1]
    idx = [i for i in torch.argsort(flat, descending=True)[:k].tolist() if float(flat[i]) > 0]
    return [{"layer": i // H, "head": i % H, "score": float(flat[i])} for i in idx]


# EAP-IG (Hanna et al. 2024) rather than one-point attribution patching: at a confident
# prediction the one-point gradient saturates and the head scores miss most of the effect.
CF_IG_STEPS = 5


def counterfactual_heads(adapter: Any, text: str, cf: str, target: Any, contrast: Any, kind: Any, n_heads: int) -> dict[str, Any]:
    """Heads that carry the difference between ``text`` and ``cf``: attribution patching
    (``ma.head_attribution`` with ``ig_steps=CF_IG_STEPS``, i.e. EAP-IG). The strongest edges come from
    :func:`mechattr.circuits.edge_attribution` (EAP-IG over the input embeddings)."""
    from ..linking.patching import head_attribution

    pr = head_attribution(adapter, text, cf, target, contrast=contrast, kind=kind, ig_steps=CF_IG_STEPS)
    heads = _carriers(pr.heads, n_heads)
    out: dict[str, Any] = {
        "prompt": cf, "tokens": pr.corrupt_tokens, "metric_clean": pr.metric_clean,
        "metric_corrupt": pr.metric_corrupt, "heads": heads, "all_heads": pr.heads.tolist(),
        "source": f"EAP-IG head attribution, {text!r} vs {cf!r} (ma.head_attribution, {CF_IG_STEPS} steps)", "edges": None,
    }
    from ..circuits import edge_attribution

    try:
        er = edge_attribution(adapter.model, text, cf, target, contrast=contrast, kind=kind)
        out["edges"] = [f"{w}->{r} {float(sc):+.3g}" for w, r, sc in er.top_edges(10)]
    except MechattrError as e:  # e.g. attention that is not a sum of heads: the head scores above stand
        out["edges_note"] = f"edge attribution failed: {type(e).__name__}: {e}"
    return out


def baseline_sensitivity(adapter: Any, plan: Any, ig: Any, seed: int, prompt: Any, model: Any, text: str, target: Any, contrast: Any) -> dict[str, Any]:
    """How much IG's ranking depends on its baseline: Spearman between IG with the default
    baseline and IG with the mean embedding, or :func:`mechattr.baseline_sensitivity`'s verdict."""
    from ..sensitivity import baseline_sensitivity as fn

    try:
        r = fn(model, text, target, contrast=contrast)
        summary = getattr(r, "verdict", None) or (r.summary() if hasattr(r, "summary") else r)
        return {"source": "ma.baseline_sensitivity", "result": str(summary)[:2000]}
    except MechattrError as e:  # e.g. fewer than two usable baselines for this tokenizer
        note = f"ma.baseline_sensitivity failed ({type(e).__name__}: {e}); "
    from ..api import run_method
    from ..validation.stats import spearman

    other = run_method(adapter, plan, "integrated_gradients", {"baseline": "mean"}, seed=seed, prompt=prompt)
    a, b = ig.token_scores(0).double(), other.token_scores(0).double()
    free = [i for i in range(a.shape[0]) if float(a[i]) != 0 or float(b[i]) != 0]
    return {
        "source": note + "two baselines",
        "baselines": [str(ig.params.get("baseline")), "mean"],
        "spearman": float(spearman(a[free], b[free])) if len(free) > 1 else float("nan"),
        "scores_mean_baseline": b.tolist(),
    }
