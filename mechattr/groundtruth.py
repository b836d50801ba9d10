"""Score an attribution method against the planted ground truth of a zoo task.

For each of ``n`` task examples (drawn with ``seed``) the method attributes the log-prob of the
correct answer (or, with ``contrast=True`` on tasks that have a foil, the logit difference answer
vs foil) to the prompt tokens. BOS is never a candidate. With ``s`` the token scores and ``T``
the ground-truth positions:

- **top1**: the highest-scoring token is in ``T`` (ties are broken against the truth);
- **mrr**: mean over examples of 1 / rank of the best-ranked token of ``T`` (rank 1 = highest
  score; a tie with a non-truth token counts as ranking below it);
- **mass**: ``sum_{i in T} |s_i| / sum_i |s_i|`` (0 when all scores are 0), the share of absolute
  attribution that lands on the truth (in the spirit of the "relevance mass" of Arras et al. 2022).

Ranking uses the signed score by default (``rank_by="abs"`` ranks by magnitude). The result also
holds what a uniformly random ranking would get on the same examples (``random_top1``,
``random_mrr``, ``random_mass``; exact expectations), so a number can be read against chance.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InputError

RANK_BY = ("score", "abs")


def rank_metrics(
    scores: Float[Tensor, " n_src"], truth: Any, rank_by: str = "score"
) -> tuple[float, float, float]:
    """(top1, reciprocal rank, mass fraction) of one example's token scores."""
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {list(RANK_BY)}, got {rank_by!r}.")
    s = scores.double()
    key = s.abs() if rank_by == "abs" else s
    is_t = torch.zeros(s.shape[0], dtype=torch.bool)
    is_t[list(truth)] = True
    # rank_i = 1 + #(strictly higher) + #(non-truth ties): ties resolved against the truth.
    higher = (key[None, :] > key[:, None]).sum(1)
    ties = ((key[None, :] == key[:, None]) & ~is_t[None, :]).sum(1)
    rank = 1 + higher + ties
    best = int(rank[is_t].min())
    total = float(s.abs().sum())
    mass = float(s.abs()[is_t].sum()) / total if total > 0 else 0.0
    return float(best == 1), 1.0 / best, mass


def random_expectation(n_src: int, n_truth: int) -> tuple[float, float, float]:
    """Exact expected (top1, reciprocal rank, mass) under a uniformly random ranking of
    ``n_src`` tokens of which ``n_truth`` are truth (mass: exchangeable scores)."""
    m, k = n_src, n_truth
    # P(best truth rank = r) = C(m - r, k - 1) / C(m, k)
    err = sum(Fraction(comb(m - r, k - 1), comb(m, k)) / r for r in range(1, m - k + 2))
    return k / m, float(err), k / m


def _run_callable(adapter: Any, plan: Any, fn: Any, params: dict[str, Any], seed: int, batch_size: int | None,
                  prompt: str) -> Any:
    """A user's method ``fn(ctx, **params) -> MethodOutput`` on one plan, as validation runs it."""
    from .api import _fixed_positions
    from .attribution import Attribution
    from .errors import MethodError
    from .contract import Context
    from .contract import MethodOutput

    ctx = Context(adapter=adapter, plan=plan, memory_mb=2048.0, batch_size=batch_size, seed=int(seed),
                  quiet=True, fixed=_fixed_positions(adapter, plan.tokens, False))
    with adapter.guard():
        out = fn(ctx, **params)
    if not isinstance(out, MethodOutput):
        raise MethodError(
            f"The method {getattr(fn, '__name__', fn)!r} must return a mechattr MethodOutput, got {type(out).__name__}."
        )
    return Attribution(
        tokens=adapter.str_tokens(plan.tokens), token_ids=plan.tokens[0].tolist(), targets=list(plan.labels),
        target_positions=list(plan.positions), scores=out.scores.detach().cpu().float(), dims=tuple(out.dims),
        method=str(getattr(fn, "__name__", "callable")), params=dict(out.params), diagnostics=dict(out.diagnostics),
        prompt=prompt, model_name=adapter.name,
    )


def score(
    model: Any,
    method: Any,
    task: Any,
    n: int = 100,
    seed: int = 0,
    *,
    contrast: bool = False,
    rank_by: str = "score",
    batch_size: int | None = None,
    params: dict[str, Any] | None = None,
    **method_params: Any,
) -> dict[str, Any]:
    """Ground-truth scores of ``method`` on ``n`` examples of a zoo ``task``.

    ``model`` is a loaded model or a name for :func:`mechattr.load_model` (default kind); use the
    zoo model of the same task (``"zoo:induction"``) or its randomized twin. Deterministic given
    ``seed`` (examples and any method randomness both derive from it). The method's own
    parameters come as keywords (``n_steps=20``) or as a dict ``params=``. ``method`` is a registered
    name or a callable ``fn(ctx, **params) -> MethodOutput`` (the contract of ``mechattr.register``)."""
    from .tl.adapter import as_adapter
    from .api import run_method
    from .tl.loading import load_model
    from .registry import get_method
    from .targets import Contrast, NextToken
    from .zoo import example_tokens, get_task

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}.")
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {list(RANK_BY)}, got {rank_by!r}.")
    t = get_task(task)
    if callable(method) and not isinstance(method, str):
        fn, method_name = method, str(getattr(method, "__name__", "callable"))
    else:
        fn, method_name = None, get_method(method).name
    method_params = {**(params or {}), **method_params}
    m = load_model(model) if isinstance(model, str) else model
    examples = t.examples(n, seed=seed)
    if contrast and any(e.foil is None for e in examples):
        raise InputError(f"The task {t.name!r} has no foil answer; use contrast=False.")
    adapter = as_adapter(m)
    rows = []
    rand = []
    for i, ex in enumerate(examples):
        toks, truth, _ = example_tokens(adapter, ex)
        target = Contrast(" " + ex.answer, " " + ex.foil) if contrast else NextToken(" " + ex.answer)
        plan = target.plan(adapter, toks)
        if fn is None:
            res = run_method(
                adapter, plan, method_name, dict(method_params), seed=seed + i, batch_size=batch_size,
                prompt=ex.prompt,
            )
        else:
            res = _run_callable(adapter, plan, fn, dict(method_params), seed + i, batch_size, ex.prompt)
        s = res.token_scores(0)
        first = int(adapter.prepend_bos)  # BOS is held fixed and is never a candidate
        cand = torch.as_tensor(s)[first:]
        tr = [p - first for p in truth]
        rows.append(rank_metrics(cand, tr, rank_by))
        rand.append(random_expectation(cand.shape[0], len(tr)))
    r = torch.tensor(rows, dtype=torch.float64).mean(0).tolist()
    q = torch.tensor(rand, dtype=torch.float64).mean(0).tolist()
    return {
        "top1": r[0],
        "mrr": r[1],
        "mass": r[2],
        "random_top1": q[0],
        "random_mrr": q[1],
        "random_mass": q[2],
        "method": method_name,
        "task": t.name,
        "model": str(getattr(m.cfg, "model_name", "")),
        "n": n,
        "seed": seed,
        "target": "logit_diff answer vs foil" if contrast else "log_prob of the answer",
        "rank_by": rank_by,
        "params": dict(method_params),
    }


__all__ = ["score", "rank_metrics", "random_expectation"]
