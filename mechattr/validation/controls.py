"""Orderings that know nothing about the prompt's content, which a faithful method must beat
(issue 19, item 12). Next to random orderings and the frequency heuristic:

- ``position`` -- a position prior: positions ranked by the mean single-token ablation effect at
  that position over the *other* prompts of the run (leave-one-out, so the prompt under test never
  informs its own control). On a task whose answer sits at a fixed slot (zoo:agreement's subject
  noun is the 2nd or 3rd word) this is the best a method can do by position alone. With one prompt
  there are no other prompts: the prior is then flat and ties go to the earlier position (primacy).
- ``recency`` -- the latest tokens first (the ones nearest the prediction).

A method that ranks tokens by position alone matches one of these orderings at best, so "beats
every control" rules it out while a method that reads the prompt passes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

CONTROLS = ("frequency", "position", "recency")


def recency_scores(n_pos: int) -> Tensor:
    """Higher = removed first: the last position first."""
    return torch.arange(n_pos, dtype=torch.float64)


def position_prior_scores(
    effects: dict[int, tuple[Tensor, list[int]]], index: int, n_pos: int
) -> Tensor:
    """Scores over ``n_pos`` positions for prompt ``index``: the mean single-token ablation effect
    at each position over the other prompts (``effects[i] = ([rows, n_removable] drops, positions)``).
    Positions no other prompt has score 0 (ties: earlier first, see ``order_of``)."""
    total = torch.zeros(n_pos, dtype=torch.float64)
    count = torch.zeros(n_pos, dtype=torch.float64)
    for i, (delta, pos) in effects.items():
        if i == index:
            continue
        d = delta.double().mean(0)  # mean over target rows
        for p, v in zip(pos, d.tolist()):
            if p < n_pos:
                total[p] += v
                count[p] += 1
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def frequency_scores(token_ids: list[int], counts: Any, special: set[int]) -> Tensor:
    """Higher = rarer. From ``counts`` ({id: count} or a tensor over the vocabulary) when given,
    else the token id (BPE merge rank proxy)."""
    if counts is None:
        v = [float(t) for t in token_ids]
    elif isinstance(counts, Tensor):
        v = [-float(counts[t]) for t in token_ids]
    elif isinstance(counts, dict):
        v = [-float(counts.get(t, 0)) for t in token_ids]
    else:
        raise InputError("counts must be a dict {token_id: count} or a tensor of counts over the vocabulary.")
    v = [(-math.inf if t in special else x) for t, x in zip(token_ids, v)]
    return torch.tensor(v, dtype=torch.float64)
