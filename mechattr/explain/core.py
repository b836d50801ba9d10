"""``ma.explain``: the answer first — which tokens matter, how sure we are, and which heads carry it.

>>> ex = ma.explain(model, "The capital of France is", " Paris", counterfactual="The capital of Italy is")
>>> print(ex.summary()); ex.to_html("paris.html"); ex.to_dataframe()

One call runs a budget's methods (:mod:`.methods`), checks each on this very prompt against the
deletion controls and single-token ablation (:mod:`.checks`, where the trust rule is stated),
decides which tokens matter and whether the trusted methods agree (:mod:`.verdict`), links the
answer to attention heads (token × head map; with a counterfactual prompt, attribution patching
between the two), and returns an :class:`Explanation` that holds all of it as data.
"""

from __future__ import annotations

import platform
import time
from typing import Any

import torch

from ..errors import InputError, MechattrError
from ..contract import MethodOutput
from .checks import CONTROLS, trust_rule
from ..registry import get_method
from .methods import MethodChoice, select_methods, user_methods
from .linking import baseline_sensitivity, counterfactual_heads, head_map
from .result import Explanation, MethodResult
from .verdict import decide


def _unit(plan: Any) -> str:
    kind = getattr(plan, "kind", None)
    if type(plan).__name__.lower().startswith("probe") or "probe" in str(getattr(plan, "description", "")):
        return "probe logit"
    if kind in ("log_prob", "logit_diff", "log_prob_diff"):
        return "nats"
    if kind in ("prob", "prob_diff"):
        return "probability"
    if kind == "logit":
        return "logit"
    return "target units"


def _prediction(adapter: Any, plan: Any) -> dict[str, Any]:
    from ..targets import LogitPlan

    with torch.no_grad():
        value = float(plan.evaluate(adapter, plan.tokens)[0, 0])
    out: dict[str, Any] = {"value": value, "kind": getattr(plan, "kind", None)}
    if not isinstance(plan, LogitPlan):
        return out
    pos = plan.positions[0]
    with torch.no_grad():
        logp = torch.log_softmax(adapter.logits(plan.tokens, positions=[pos])[0, 0].double(), -1)
    top = int(logp.argmax())
    tid = plan.token_ids[0]
    out.update({
        "position": pos,
        "token": None if tid is None else adapter.str_tokens([tid])[0],
        "prob": None if tid is None else float(logp[tid].exp()),
        "top_token": adapter.str_tokens([top])[0],
        "top_prob": float(logp[top].exp()),
    })
    foil = plan.foil_ids[0]
    if foil is not None:
        out["foil"] = adapter.str_tokens([foil])[0]
        out["foil_prob"] = float(logp[foil].exp())
    return out


def _precomputed(res: Any):
    def fn(ctx: Any) -> MethodOutput:
        return MethodOutput(res.scores.clone(), dims=tuple(res.dims), params=dict(res.params))

    return fn


def explain(
    model: Any,
    text: str,
    target: Any = None,
    *,
    contrast: Any = None,
    counterfactual: str | None = None,
    budget: str = "fast",
    methods: Any = None,
    top_k: int = 2,
    kind: str | None = None,
    replacement: str | None = None,
    margin: float = 1.0,
    min_ablation_corr: float = 0.5,
    n_random: int = 5,
    n_heads: int = 5,
    seed: int = 0,
    quiet: bool = True,
) -> Explanation:
    """Explain one prediction: which input tokens matter, which methods can be trusted on this
    prompt, whether they agree, and which attention heads carry it.

    Args:
        model: a loaded TransformerLens model (left as it came).
        text: the prompt.
        target: the next token to explain (``None``: the model's own prediction), or any single-row
            target :func:`mechattr.attribute` accepts (a probe, an SAE feature, a function).
        contrast: a foil token: explain target vs foil (logit difference).
        counterfactual: a prompt of the same token length that changes the answer (France → Italy);
            the heads that carry the difference come from attribution patching between the two.
        budget: ``"fast"`` (input × gradient, occlusion, modified-backward methods when registered)
            or ``"thorough"`` (adds integrated gradients with a baseline-sensitivity check, SHAP,
            attention rollout and flow). See :mod:`mechattr.explain.methods`.
        methods: run these instead of the budget's set: names, ``(name, params)`` or ``(label,
            callable)`` pairs (callables as for :func:`mechattr.validate`).
        top_k: how many tokens the answer names at most.
        kind: the target kind (``log_prob`` default; ``logit_diff`` for contrasts ...).
        replacement: how a token is removed in the checks and the perturbation methods
            (default ``"delete"`` for next-token targets — the token is cut out of the prompt —
            else the validation default).
        margin: the trust rule's margin over the random orderings, in their std
            (:mod:`mechattr.explain.checks`).
        min_ablation_corr: the trust rule's minimum Spearman with single-token deletion.
        n_random: random orderings for the random control.
        n_heads: how many heads the card names.
        seed: every random choice.
        quiet: no progress output.
    """
    from ..api import fixed_positions, resolve, run_method
    from ..targets import LogitPlan
    from ..tl.adapter import as_adapter, tl_version
    from ..validation import validate

    if not isinstance(text, str):
        raise InputError("explain() explains one prompt: give text as a single string.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}.")
    if counterfactual is not None and not isinstance(counterfactual, str):
        raise InputError("counterfactual is a prompt (a string) of the same token length as text.")
    t_start = time.perf_counter()
    adapter = as_adapter(model)
    with adapter.guard():
        adapter, plan, prompt = resolve(adapter, text, target, contrast=contrast, kind=kind)
        if plan.n_rows != 1:
            raise InputError(
                f"explain() explains one target; this one has {plan.n_rows} rows {plan.labels}. "
                "Give a single next token (or one probe class), or use ma.report for several."
            )
        if replacement is None:
            replacement = "delete" if isinstance(plan, LogitPlan) and min(plan.positions) >= 3 else "auto"
        fixed = fixed_positions(adapter, plan.tokens, False)
        removable = ~fixed
        if replacement == "delete":
            removable[min(plan.positions):] = False
        free = torch.nonzero(removable.cpu())[:, 0].tolist()
        if len(free) < 2:
            raise InputError(
                f"The prompt has {len(free)} token(s) that can be removed before the prediction; "
                "explain() needs at least 2 to rank them. Give a longer prompt."
            )
        choices = user_methods(methods) if methods is not None else select_methods(budget, len(free), replacement)
        for c in choices:
            # A perturbation method removes tokens the way this prompt's checks do, unless told otherwise.
            if c.name is not None and "replacement" in get_method(c.name).parameters():
                c.params.setdefault("replacement", replacement)
        tokens = adapter.str_tokens(plan.tokens)
        pred = _prediction(adapter, plan)

        # 1. the methods
        results: dict[str, Any] = {}
        mres: list[MethodResult] = []
        for c in choices:
            try:
                if c.fn is None:
                    res = run_method(adapter, plan, c.name, dict(c.params), seed=seed, quiet=quiet, prompt=prompt)
                else:
                    res = _run_callable(adapter, plan, c, fixed, seed, prompt)
            except MechattrError as e:
                mres.append(MethodResult(c.label, c.name or c.label, [], None, c.why, dict(c.params), error=str(e)))
                continue
            results[c.label] = res
            by_layer = None
            if "layer" in res.dims:
                from ..display import collapse

                by_layer = collapse(res.scores, res.dims, keep=("layer", "target", "src"))[:, 0].tolist()
            diag = {k: v for k, v in res.diagnostics.items() if isinstance(v, (int, float, str, bool)) or v is None}
            mres.append(MethodResult(
                c.label, res.method, res.token_scores(0).double().tolist(), None, c.why, dict(res.params), diag,
                by_layer=by_layer,
            ))
        if not results:
            raise MechattrError("Every method failed on this prompt: " + "; ".join(f"{m.label}: {m.error}" for m in mres))

        # 2. the checks, through the validation API, on the results just computed
        labels = list(results)
        rep = validate(
            adapter, text, target, methods=[(lab, _precomputed(results[lab])) for lab in labels],
            checks=["perturbation", "ablation", "agreement"], seed=seed, quiet=True,
            replacement=replacement, n_random=n_random, margin=margin, ablation_min_corr=min_ablation_corr,
            contrast=contrast, kind=kind,
        )
        pert, abl, agr = rep.checks["perturbation"], rep.checks["ablation"], rep.checks["agreement"]
        summ = pert.data["summary"]
        # validate's content-blind controls; with one prompt its position prior is flat, so the
        # position control removes the earliest token first (mechattr.validation.controls).
        controls = {
            "random": {"aopc": summ["random"]["aopc"], "std": summ["random ± std"]["aopc"],
                       "curve": pert.data["mean_curves"]["random"]["deletion"]},
            **{c: {"aopc": summ[c]["aopc"], "curve": pert.data["mean_curves"][c]["deletion"]}
               for c in CONTROLS if c != "random"},
        }
        spear = {r["method"]: r["value"] for r in abl.records if r["metric"] == "mean_spearman"}
        effects: list[float | None] = [None] * len(tokens)
        for r in abl.records:
            if r["method"] == "ablation" and r["metric"] == "effect":
                effects[r["position"]] = r["value"]
        for m in mres:
            if m.label not in results:
                continue
            m.trust = trust_rule(
                summ[m.label]["aopc"], controls["random"]["aopc"], controls["random"]["std"],
                {c: controls[c]["aopc"] for c in CONTROLS if c != "random"}, spear.get(m.label, float("nan")),
                margin=margin, min_ablation_corr=min_ablation_corr,
            )
        curves = {lab: pert.data["mean_curves"][lab]["deletion"] for lab in labels}

        # 3. the answer
        trusted = {m.label: torch.tensor(m.scores) for m in mres if m.trust is not None and m.trust.trusted}
        verdict = decide(trusted, tokens, free, top_k, len(results))
        from .verdict import consensus

        cons = consensus(trusted, free) if trusted else torch.zeros(len(tokens), dtype=torch.float64)
        matter = [
            {"position": p, "token": tokens[p], "consensus": float(cons[p]), "deletion_effect": effects[p]}
            for p in verdict.tokens
        ]

        # 4. link to the model
        heads = head_map(adapter, plan, prompt, [t["position"] for t in matter] or _top_effects(effects, top_k), n_heads, seed)
        cf = None
        if counterfactual is not None:
            cf = counterfactual_heads(adapter, text, counterfactual, target, contrast, kind, n_heads)
            heads["carry"], heads["source"] = cf["heads"], cf["source"]
            heads["meaning"] = (
                "score ≈ target(prompt) − target(prompt with that head's output taken from the counterfactual): "
                "positive = the head carries the difference; the largest positive ones are named"
            )

        vmeta = dict(rep.meta)
    p = {
        "budget": budget, "methods": {m.label: {"method": m.method, "params": m.params, "why": m.why} for m in mres},
        "replacement": replacement, "top_k": top_k, "margin": margin, "min_ablation_corr": min_ablation_corr,
        "n_random": n_random, "seed": seed, "contrast": contrast, "kind": kind, "counterfactual": counterfactual,
        "transformer_lens": tl_version(), "torch": torch.__version__, "python": platform.python_version(),
    }
    diag = {
        "seconds": round(time.perf_counter() - t_start, 3),
        "seconds per method": {m.label: round(float(m.diagnostics.get("seconds", 0.0)), 3) for m in mres},
        "validation seconds": vmeta.get("seconds"),
        "unknown words": adapter.unknown_words(text),
        "failed methods": {m.label: m.error for m in mres if m.error},
    }
    agreement = {"labels": agr.data["labels"], "spearman": agr.data["matrices"]["spearman"]}
    if budget == "thorough" and "integrated_gradients" in results and methods is None:
        diag["baseline sensitivity"] = baseline_sensitivity(adapter, plan, results["integrated_gradients"], seed, prompt, model, text, target, contrast)
    return Explanation(
        model_name=adapter.name, prompt=text, tokens=tokens, free=free, target=plan.labels[0],
        target_description=plan.description, unit=_unit(plan), prediction=pred, budget=budget,
        replacement=replacement, methods=mres, verdict=verdict, matter=matter, deletion_effects=effects,
        controls=controls, curves=curves, agreement=agreement, heads=heads, counterfactual=cf,
        rule={"margin": margin, "min_ablation_corr": min_ablation_corr, "controls": list(CONTROLS),
              "text": RULE_TEXT.format(margin=margin, corr=min_ablation_corr)},
        params=p, diagnostics=diag,
    )


RULE_TEXT = (
    "A method is trusted on this prompt when (1) deleting tokens in its order lowers the target faster "
    "than every control — its deletion AOPC exceeds the random orderings' mean by {margin:g} std and is "
    "higher than the frequency (rarest first), position (earliest first) and recency (latest first) "
    "orderings — and (2) its scores agree with single-token deletion (Spearman ≥ {corr:g})."
)


def _run_callable(adapter: Any, plan: Any, c: MethodChoice, fixed: Any, seed: int, prompt: str | None) -> Any:
    from ..attribution import Attribution
    from ..errors import MethodError
    from ..contract import Context

    ctx = Context(adapter=adapter, plan=plan, memory_mb=2048.0, batch_size=None, seed=seed, fixed=fixed, quiet=True)
    t0 = time.perf_counter()
    out = c.fn(ctx)
    if not isinstance(out, MethodOutput):
        raise MethodError(f"The method {c.label!r} must return a mechattr MethodOutput, got {type(out).__name__}.")
    return Attribution(
        tokens=adapter.str_tokens(plan.tokens), token_ids=plan.tokens[0].tolist(), targets=list(plan.labels),
        target_positions=list(plan.positions), scores=out.scores.detach().cpu().float(), dims=tuple(out.dims),
        method=c.label, params=dict(out.params), diagnostics={**out.diagnostics, "seconds": time.perf_counter() - t0},
        prompt=prompt, model_name=adapter.name,
    )


def _top_effects(effects: list[float | None], k: int) -> list[int]:
    cand = [(e, p) for p, e in enumerate(effects) if e is not None]
    return [p for e, p in sorted(cand, key=lambda x: (-x[0], x[1]))[:k]]
