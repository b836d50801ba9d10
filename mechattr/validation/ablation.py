"""Check 6: attribution versus ablation effect. For every attributable token, its score against
the drop of the target when that token alone is removed (the chosen replacement strategy):
Δ_i = f(x) - f(x without token i). Correlation (Spearman and Pearson) per prompt and target row,
averaged per method. Criterion: the mean Spearman correlation exceeds ``ablation_min_corr`` and
the mean Spearman correlation of every content-blind control (:mod:`.controls`: ``frequency``,
``position`` -- a leave-one-out position prior --, ``recency``), computed the same way.

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
    from .controls import CONTROLS, frequency_scores, position_prior_scores, recency_scores

    special = {
        int(t) for t in (vc.adapter.special_token_id(s) for s in ("bos", "eos", "pad", "unk")) if t is not None
    }
    effects = {item.index: ablation_effects(vc, item) for item in vc.items}
    per_c: dict[str, list[float]] = {c: [] for c in CONTROLS}
    for item in progress(vc.items, desc="ablation (prompts)", quiet=vc.quiet):
        delta, pos = effects[item.index]
        n_pos = int(item.plan.tokens.shape[1])
        control_scores = {
            "frequency": frequency_scores(item.plan.tokens[0].tolist(), vc.options["counts"], special),
            "position": position_prior_scores(effects, item.index, n_pos),
            "recency": recency_scores(n_pos),
        }
        for c, sc in control_scores.items():
            sc = sc[pos].clamp(-1e30, 1e30)  # special tokens score -inf as "most frequent"
            for r in range(delta.shape[0]):
                v = float(spearman(sc, delta[r]))
                per_c[c].append(v)
                res.add(c, "spearman", v, prompt=item.index, row=r)
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
    bars = {"min_corr": thr}
    for c, vals in per_c.items():
        cv = nanmean(vals)
        res.add(c, "mean_spearman", cv)
        bars[c] = cv
    bar = max(v for v in bars.values() if v == v)
    for m in vc.methods:
        v = nanmean(per[m.label])
        res.add(m.label, "mean_spearman", v)
        res.add(m.label, "mean_pearson", nanmean(per_p[m.label]))
        beaten = [c for c, b in bars.items() if b == b and not (v > b)]
        res.verdicts[m.label] = Verdict(
            v, bool(v == v and v > bar), bar,
            f"mean Spearman(score, single-token ablation effect) > {thr} and > every control's "
            f"(" + ", ".join(f"{c} {bars[c]:.3g}" for c in CONTROLS) + ")",
            ("" if v == v else "correlation undefined (constant scores or effects): counted as a failure")
            + (f"; not above: {', '.join(beaten)}" if beaten and v == v else ""),
        )
    res.data["scatter"] = scatter
    return res
