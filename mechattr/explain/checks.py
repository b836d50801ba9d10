"""The checks ``explain`` runs on the one prompt it explains, and the rule that decides which
methods it trusts there.

Deletion curves (remove the method's top tokens first and watch the target fall) are compared with
four controls that need no model insight: ``random`` orderings (mean and std over seeds),
``frequency`` (rarest token first), ``position`` (earliest token first) and ``recency`` (latest
token first — the one closest to the prediction). All four come from :func:`mechattr.validate`
(:mod:`mechattr.validation.controls`); with the one prompt explained, validate's position prior
has no other prompts to learn from and removes the earliest token first.

**Trust rule.** A method is *trusted on this prompt* when

1. its deletion AOPC beats every control: it exceeds the random mean by ``margin`` random stds,
   and is strictly higher than the frequency, position and recency AOPCs; and
2. its token scores agree with single-token ablation: Spearman(score, deletion effect of the
   token alone) ≥ ``min_ablation_corr`` (default 0.5).

Occlusion *is* single-token ablation (with the same replacement), so it meets condition 2 by
construction; its trust rests on condition 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

CONTROLS = ("random", "frequency", "position", "recency")
TIE_TOL = 1e-6


@dataclass
class Trust:
    """The trust rule's inputs and outcome for one method."""

    trusted: bool
    deletion_aopc: float
    controls: dict[str, float]  # control -> the AOPC the method must beat (random: mean + margin·std)
    beats: dict[str, bool]
    ablation_spearman: float
    agrees_with_ablation: bool
    reason: str
    notes: list[str] = field(default_factory=list)


def trust_rule(
    aopc: float,
    random_mean: float,
    random_std: float,
    others: dict[str, float],
    ablation_spearman: float,
    *,
    margin: float = 1.0,
    min_ablation_corr: float = 0.5,
) -> Trust:
    """Apply the trust rule (module docstring) to one method's numbers."""
    bar = {"random": random_mean + margin * random_std, **others}
    # Ties count as not beaten; TIE_TOL absorbs float noise between batches that evaluate the
    # same ordering (identical orderings give the same AOPC up to it).
    beats = {c: bool(aopc == aopc and v == v and aopc > v + TIE_TOL * max(1.0, abs(v))) for c, v in bar.items()}
    agrees = bool(ablation_spearman == ablation_spearman and ablation_spearman >= min_ablation_corr)
    trusted = all(beats.values()) and agrees
    lost = [c for c, ok in beats.items() if not ok]
    parts = []
    if lost:
        parts.append("deletion does not beat the " + ", ".join(lost) + " control" + ("s" if len(lost) > 1 else ""))
    else:
        parts.append("deletion beats every control")
    if math.isnan(ablation_spearman):
        parts.append("agreement with single-token ablation undefined")
    else:
        parts.append(
            f"{'agrees' if agrees else 'does not agree'} with single-token ablation "
            f"(Spearman {ablation_spearman:+.2f} {'≥' if agrees else '<'} {min_ablation_corr:g})"
        )
    return Trust(trusted, float(aopc), bar, beats, float(ablation_spearman), agrees, "; ".join(parts))
