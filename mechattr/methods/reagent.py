"""ReAGent: Replace-with-Alternatives Generative Explanations (Zhao & Shan 2024, "ReAGent: a
model-agnostic feature attribution method for generative language models").

What is implemented (the paper's loop, with the choices we made written down):

1. Replacement proposals come from a language model: the explained model itself, or a second
   TransformerLens model with the same tokenizer vocabulary (``replacer_model=``). The paper uses
   RoBERTa's masked-LM predictions; a causal model offers its next-token distribution at the
   previous position instead, computed once on the original input (the original token excluded,
   so a replacement always changes the input). Each probe draws fresh tokens from it.
2. One step = ``num_probes`` probes evaluated in one batched forward pass. A probe replaces a
   random subset R of ``round(replacing_ratio * n_free)`` (at least 1) free tokens and measures
   the drop of the target, delta = f(x) - f(x with R replaced). The paper uses the target
   probability; here the target is whatever was asked for (log-prob by default), as for every
   method in mechattr.
3. Importance: the paper raises the importance of the replaced tokens by the drop after each
   probe. We estimate the same quantity in closed form over all probes so far: the least-squares
   fit delta ~ sum_{i in R} s_i (minimum-norm solution), so s_i is what replacing token i costs
   with the co-replaced tokens' share taken out, and the result does not depend on the order of
   the probes. For a target that is additive over tokens the fit recovers each token's effect
   exactly once the probes span all tokens.
4. Stopping (per target row): keep the ``keep_top_n`` most important tokens, replace all other
   free tokens with one fresh draw; stop when the target token is still among the model's
   ``stop_top_k`` most likely next tokens there (the paper's top-k condition). Scores are only
   used for this after ``min_probe_steps`` steps and once the probes determine every token's
   score (the fit has full rank). A target the
   model does not rank in its top ``stop_top_k`` on the full input needs only to reach its
   original rank (otherwise the condition could never hold). A row that has
   stopped keeps its scores; the loop ends when all rows have stopped or after
   ``max_probe_steps`` steps. Targets without a target token (function, probe or SAE targets) have
   no top-k condition and run all ``max_probe_steps`` steps.

Scores are signed: positive = replacing the token lowers the target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..tl.adapter import as_adapter
from ..errors import MethodError
from ..perturb import next_token_probs, sample_tokens
from ..progress import bar
from ..contract import Context, MethodOutput, register
from ._common import check_positive_int


def _replacer_probs(ctx: Context, replacer_model: Any) -> tuple[Tensor, str]:
    if replacer_model is None:
        return next_token_probs(ctx.adapter, ctx.tokens), "self"
    try:
        rep = as_adapter(replacer_model)
    except Exception as e:
        raise MethodError(
            f"replacer_model must be a TransformerLens model (HookedTransformer or TransformerBridge): {e}"
        ) from e
    if rep.tokenizer.get_vocab() != ctx.adapter.tokenizer.get_vocab():
        raise MethodError(
            "replacer_model uses a different tokenizer vocabulary than the explained model; its token "
            "ids would mean other tokens. Use a replacer from the same model family (same tokenizer)."
        )
    probs = next_token_probs(rep, ctx.tokens.to(rep.device))
    vocab = ctx.adapter.d_vocab
    if probs.shape[-1] < vocab:
        probs = torch.nn.functional.pad(probs, (0, vocab - probs.shape[-1]))
    probs = probs[:, :vocab]
    return probs / probs.sum(-1, keepdim=True), rep.name


def _token_rows(ctx: Context) -> list[int] | None:
    ids = getattr(ctx.plan, "token_ids", None)
    if not ids or any(i is None for i in ids):
        return None
    return [int(i) for i in ids]


def _ranks(ctx: Context, tokens: Tensor, rows: list[int], target_ids: list[int]) -> list[int]:
    """Rank (0 = most likely) of row ``rows[j]``'s target token in the model's prediction at the
    row's read position, on sequence ``tokens[j]`` (a single sequence is shared by all rows)."""
    out = []
    with torch.no_grad():
        for sl in ctx.batches(len(rows), with_grad=False):
            rs = rows[sl]
            toks = tokens[sl] if tokens.shape[0] > 1 else tokens
            uniq = sorted({ctx.plan.positions[r] for r in rs})
            logits = ctx.adapter.logits(toks, positions=uniq)
            for j, r in enumerate(rs):
                lg = logits[min(j, logits.shape[0] - 1), uniq.index(ctx.plan.positions[r])]
                out.append(int((lg > lg[target_ids[r]]).sum()))
    return out


@register(
    "reagent",
    aliases=("re_agent",),
    family="perturbation",
    summary="Replace random tokens with LM-proposed alternatives until the top tokens alone keep the prediction (Zhao & Shan 2024).",
)
def reagent(
    ctx: Context,
    *,
    keep_top_n: int = 5,
    replacing_ratio: float = 0.3,
    max_probe_steps: int = 1000,
    num_probes: int = 16,
    min_probe_steps: int = 10,
    stop_top_k: int = 3,
    replacer_model: Any = None,
) -> MethodOutput:
    check_positive_int("keep_top_n", keep_top_n)
    check_positive_int("max_probe_steps", max_probe_steps)
    check_positive_int("num_probes", num_probes)
    check_positive_int("stop_top_k", stop_top_k)
    check_positive_int("min_probe_steps", min_probe_steps)
    if min_probe_steps > max_probe_steps:
        raise MethodError(f"min_probe_steps ({min_probe_steps}) exceeds max_probe_steps ({max_probe_steps}).")
    if isinstance(replacing_ratio, bool) or not isinstance(replacing_ratio, (int, float)) or not 0 < replacing_ratio <= 1:
        raise MethodError(f"replacing_ratio must be a number in (0, 1], got {replacing_ratio!r}.")
    dev = ctx.tokens.device
    rows, P = ctx.plan.n_rows, ctx.n_pos
    free_idx = torch.nonzero(ctx.free).flatten().cpu()
    nf = len(free_idx)
    params = {
        "keep_top_n": keep_top_n,
        "replacing_ratio": replacing_ratio,
        "max_probe_steps": max_probe_steps,
        "num_probes": num_probes,
        "min_probe_steps": min_probe_steps,
        "stop_top_k": stop_top_k,
        "seed": ctx.seed,
    }
    dtype = ctx.input_embed().dtype
    if nf == 0:
        params["replacer_model"] = "self" if replacer_model is None else "other"
        return MethodOutput(torch.zeros(rows, P, dtype=dtype), params=params, diagnostics={"note": "no attributable tokens"})
    probs, replacer_name = _replacer_probs(ctx, replacer_model)
    params["replacer_model"] = replacer_name
    base = ctx.tokens[0].cpu()
    f_x = ctx.values()[0].double().cpu()
    n_rep = min(nf, max(1, round(replacing_ratio * nf)))
    n_keep = min(keep_top_n, nf)
    target_ids = _token_rows(ctx)
    if target_ids is not None:
        # A target the model does not rank in its top k even on the full input could never meet
        # the top-k condition; for it the kept tokens need only reach its original rank.
        limit = [max(stop_top_k, r + 1) for r in _ranks(ctx, ctx.tokens, list(range(rows)), target_ids)]
    g = ctx.generator(53)

    A = torch.zeros(P, P, dtype=torch.float64)  # sum over probes of R^T R
    b = torch.zeros(P, rows, dtype=torch.float64)  # sum over probes of R^T delta
    cnt = torch.zeros(P, dtype=torch.float64)
    active = torch.ones(rows, dtype=torch.bool)
    steps = torch.zeros(rows, dtype=torch.long)
    frozen = torch.zeros(rows, P, dtype=torch.float64)
    n_forward = 1
    fi = free_idx

    def estimate() -> Tensor:
        s = torch.zeros(rows, P, dtype=torch.float64)
        sol = torch.linalg.lstsq(A[fi][:, fi], b[fi], driver="gelsd").solution  # [nf, rows]
        s[:, fi] = sol.T
        return s

    # A bar over the probe steps (the loop may stop early once every row meets its condition).
    steps_bar = bar(total=max_probe_steps, desc="ReAGent probe steps", quiet=ctx.quiet)
    for step in range(max_probe_steps):
        steps_bar.update(1)
        # Probes: a random subset of n_rep free tokens each, replaced by fresh draws.
        pick = torch.rand(num_probes, nf, generator=g).argsort(-1)[:, :n_rep]
        R = torch.zeros(num_probes, P, dtype=torch.bool)
        R[torch.arange(num_probes)[:, None], free_idx[pick]] = True
        draws = sample_tokens(probs, num_probes, g)
        toks = torch.where(R, draws, base[None])
        delta = f_x[None] - ctx.values(tokens=toks.to(dev)).double().cpu()  # [probes, rows]
        n_forward += num_probes
        Rd = R.double()
        A += Rd.T @ Rd
        b += Rd.T @ delta
        cnt += Rd.sum(0)
        steps[active] += 1
        s = estimate()
        frozen[active] = s[active]
        if n_rep == nf:
            seen = True
        else:
            seen = int(torch.linalg.matrix_rank(A[fi][:, fi])) == nf
        if target_ids is None or not seen or step + 1 < min_probe_steps:
            continue
        # Stopping check: per active row keep its top-n tokens, replace the rest.
        act = torch.nonzero(active).flatten()
        top = s[act][:, free_idx].topk(n_keep, dim=-1).indices  # [a, n_keep] into free_idx
        keep = torch.zeros(len(act), P, dtype=torch.bool)
        keep[torch.arange(len(act))[:, None], free_idx[top]] = True
        replace = ctx.free.cpu()[None] & ~keep
        fill = sample_tokens(probs, len(act), g)
        stoks = torch.where(replace, fill, base[None]).to(dev)
        ranks = _ranks(ctx, stoks, act.tolist(), target_ids)
        ok = [rk < limit[r] for rk, r in zip(ranks, act.tolist())]
        n_forward += len(act)
        active[act[torch.tensor(ok, dtype=torch.bool)]] = False
        if not bool(active.any()):
            break
    steps_bar.close()
    diag = {
        "f_input": [float(v) for v in f_x],
        "steps": steps.tolist(),
        "stopped": (~active).tolist() if target_ids is not None else [False] * rows,
        "stopping_condition": "top-k" if target_ids is not None else "none (target has no token)",
        "replaced_per_probe": int(n_rep),
        "n_forward": int(n_forward),
        "batch_size": ctx.max_batch(with_grad=False),
    }
    return MethodOutput(frozen.to(dtype).to(dev), params=params, diagnostics=diag)


__all__ = ["reagent"]
