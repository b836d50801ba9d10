"""Check 6: attribution versus ablation effect. For every attributable token, its score against
the drop of the target when that token alone is removed (the chosen replacement strategy):
Δ_i = f(x) - f(x without token i). Correlation (Spearman and Pearson) per prompt and target row,
averaged per method. Criterion: the mean Spearman correlation exceeds ``ablation_min_corr``.

Single-token ablation is itself one explanation (occlusion, Zeiler & Fergus 2014), so this
measures agreement with a first-order, non-interacting view of the model, not the truth."""

from __future__ import annotations

import torch

from ..progress import progress
from ._context import VContext
from ._replace import Remover
from ._result import CheckResult, Verdict
from .stats import nanmean, pearson, spearman


def ablation_effects(vc: VContext, item) -> tuple[torch.Tensor, list[int]]:
    """``[rows, n_removable]`` target drops and the positions they belong to (one batch)."""
    o = vc.options
    remover = Remover(
        vc.adapter, item.plan, item.fixed, o["replacement"], seed=vc.seed + 31 * item.index,
        memory_mb=o["memory_mb"], batch_size=o["batch_size"],
    )
    pos = torch.nonzero(remover.removable.cpu())[:, 0].tolist()
    masks = torch.zeros(len(pos) + 1, remover.n_pos, dtype=torch.bool)
    for i, p in enumerate(pos):
        masks[i + 1, p] = True
    vals = remover.evaluate(masks)  # row 0: the full input
    return (vals[0:1] - vals[1:]).T.contiguous(), pos


def run(vc: VContext) -> CheckResult:
    res = CheckResult("ablation")
    thr = float(vc.options["ablation_min_corr"])
    res.notes.append(f"replacement={vc.options['replacement']!r}")
    per: dict[str, list[float]] = {m.label: [] for m in vc.methods}
    per_p: dict[str, list[float]] = {m.label: [] for m in vc.methods}
    scatter: dict[str, list[tuple[float, float]]] = {m.label: [] for m in vc.methods}
    for item in progress(vc.items, desc="ablation (prompts)", quiet=vc.quiet):
        delta, pos = ablation_effects(vc, item)
        for r in range(delta.shape[0]):
            for p, d in zip(pos, delta[r].tolist()):
                res.add("ablation", "effect", d, prompt=item.index, row=r, position=p)
        for m in vc.methods:
            s = vc.scores(item, m)[:, pos]
            for r in range(delta.shape[0]):
                sp, pe = float(spearman(s[r], delta[r])), float(pearson(s[r], delta[r]))
                per[m.label].append(sp)
                per_p[m.label].append(pe)
                scatter[m.label].extend(zip(s[r].tolist(), delta[r].tolist()))
                res.add(m.label, "spearman", sp, prompt=item.index, row=r)
                res.add(m.label, "pearson", pe, prompt=item.index, row=r)
    for m in vc.methods:
        v = nanmean(per[m.label])
        res.add(m.label, "mean_spearman", v)
        res.add(m.label, "mean_pearson", nanmean(per_p[m.label]))
        res.verdicts[m.label] = Verdict(
            v, bool(v == v and v > thr), thr, f"mean Spearman(score, single-token ablation effect) > {thr}",
            "" if v == v else "correlation undefined (constant scores or effects): counted as a failure",
        )
    res.data["scatter"] = scatter
    return res
