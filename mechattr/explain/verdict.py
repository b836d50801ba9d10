"""The answer card's logic: which tokens matter according to the trusted methods, and a one-line
verdict on whether those methods agree.

- Each trusted method's token scores are scaled by their largest |score| (so methods on different
  scales weigh the same) and averaged: the *consensus*. The tokens that matter are the ``top_k``
  tokens with the highest positive consensus.
- Verdict: ``agree`` when at least two methods are trusted and each one's own top-``k`` tokens are
  the consensus tokens (as a set); ``disagree`` when two or more are trusted and some method's
  top-``k`` differ; ``single`` when exactly one is trusted (nothing to confirm it); ``none`` when no
  method passed this prompt's checks. Only ``agree`` and ``single`` name tokens on the card.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Verdict:
    status: str  # "agree" | "disagree" | "single" | "none"
    text: str
    tokens: list[int]  # positions of the tokens that matter (empty unless agree/single)


def _q(tok: str) -> str:
    return repr(tok) if tok.strip() != tok or not tok else f"'{tok}'"


def _names(toks: list[str]) -> str:
    q = [_q(t) for t in toks]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def top_positions(scores: torch.Tensor, free: list[int], k: int) -> list[int]:
    """The ``k`` free positions with the highest positive scores (ties: earlier position)."""
    cand = sorted((p for p in free if float(scores[p]) > 0), key=lambda p: (-float(scores[p]), p))
    return cand[:k]


def consensus(score_maps: dict[str, torch.Tensor], free: list[int]) -> torch.Tensor:
    n = next(iter(score_maps.values())).shape[0]
    acc = torch.zeros(n, dtype=torch.float64)
    for s in score_maps.values():
        s = s.double()
        m = float(s[free].abs().max()) if free else 0.0
        if m > 0:
            acc += s / m
    return acc / max(len(score_maps), 1)


def decide(
    trusted: dict[str, torch.Tensor], tokens: list[str], free: list[int], top_k: int, n_methods: int
) -> Verdict:
    """The verdict for the trusted methods' ``[pos]`` score maps (see the module docstring)."""
    names = list(trusted)
    if not names:
        return Verdict(
            "none",
            f"no method passed this prompt's checks (0 of {n_methods}): no confident answer, see the evidence below",
            [],
        )
    cons = consensus(trusted, free)
    top = top_positions(cons, free, top_k)
    if not top:
        return Verdict("none", "the trusted methods give no token a positive score: no confident answer", [])
    own = {m: set(top_positions(trusted[m], free, len(top))) for m in names}
    words = _names([tokens[p] for p in top])
    if len(names) == 1:
        return Verdict(
            "single",
            f"only {names[0]} passed this prompt's checks ({1} of {n_methods}); it names {words} "
            "(no second trusted method to confirm)",
            top,
        )
    differ = [m for m in names if own[m] != set(top)]
    if differ:
        return Verdict(
            "disagree",
            f"methods disagree: the {len(names)} trusted methods rank different tokens on top "
            f"({', '.join(differ)} differ{'s' if len(differ) == 1 else ''}); see below",
            [],
        )
    return Verdict("agree", f"all trusted methods ({', '.join(names)}) agree on {words}", top)
