"""Check 5: agreement between methods — pairwise Spearman, Kendall tau-b and top-k Jaccard of the
token scores, per prompt (and target row) and averaged, as method × method matrices.

Agreement is descriptive, not a criterion: methods can agree and all be wrong (Krishna et al.
2022, "The Disagreement Problem"), so no pass/fail is attached."""

from __future__ import annotations

from ._context import VContext
from ._result import CheckResult, Verdict
from .stats import kendall, nanmean, spearman, top_k_jaccard

METRICS = ("spearman", "kendall", "top_k_jaccard")


def run(vc: VContext) -> CheckResult:
    res = CheckResult("agreement")
    k = vc.options["top_k"]
    labels = [m.label for m in vc.methods]
    acc = {name: {(a, b): [] for a in labels for b in labels} for name in METRICS}
    for item in vc.items:
        free = item.free.cpu()
        maps = {m.label: vc.scores(item, m)[:, free] for m in vc.methods}
        for a in labels:
            for b in labels:
                for r in range(item.plan.n_rows):
                    x, y = maps[a][r], maps[b][r]
                    vals = {
                        "spearman": float(spearman(x, y)),
                        "kendall": float(kendall(x, y)),
                        "top_k_jaccard": top_k_jaccard(x, y, k),
                    }
                    for name, v in vals.items():
                        acc[name][(a, b)].append(v)
                        if a < b:
                            res.add(a, name, v, other=b, prompt=item.index, row=r)
    matrices = {
        name: [[nanmean(acc[name][(a, b)]) for b in labels] for a in labels] for name in METRICS
    }
    for name in METRICS:
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                if i < j:
                    res.add(a, "mean_" + name, matrices[name][i][j], other=b)
    for i, a in enumerate(labels):
        others = [matrices["spearman"][i][j] for j in range(len(labels)) if j != i]
        res.verdicts[a] = Verdict(nanmean(others) if others else None, None, None, "mean Spearman with the other methods")
    res.data["labels"] = labels
    res.data["matrices"] = matrices
    return res
