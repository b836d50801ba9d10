"""Check 3: completeness for methods that promise it (IG: Sundararajan et al. 2017; SHAP's
efficiency, Lundberg & Lee 2017): the token scores of each target row sum to f(x) - f(baseline).

f(x) is recomputed here from the plan, independently of the method; f(baseline) can only come
from the method (it chose the baseline), via ``diagnostics['f_baseline']``. Criterion: relative
error |Σ scores - (f(x) - f(b))| / |f(x) - f(b)| below ``completeness_tol``. Methods promising
completeness only in expectation (GradientSHAP) are reported without a verdict."""

from __future__ import annotations

import torch

from ..errors import MethodError
from ._context import VContext
from ._result import CheckResult, Verdict
from .stats import nanmean


def run(vc: VContext) -> CheckResult:
    res = CheckResult("completeness")
    tol = float(vc.options["completeness_tol"])
    for m in vc.methods:
        strict = "completeness" in m.promises
        loose = "completeness_in_expectation" in m.promises
        if not (strict or loose):
            res.verdicts[m.label] = Verdict(None, None, None, "", "does not promise completeness")
            continue
        rels, abss = [], []
        for item in vc.items:
            att = vc.original(item, m)
            if "f_baseline" not in att.diagnostics:
                raise MethodError(
                    f"Method {m.label!r} promises completeness but reports no diagnostics['f_baseline']; "
                    "the completeness check cannot verify it. Return f_baseline in its diagnostics."
                )
            with torch.no_grad(), vc.adapter.guard():
                f_x = item.plan.evaluate(vc.adapter, item.plan.tokens)[0].double().cpu()
            f_b = torch.tensor([float(v) for v in att.diagnostics["f_baseline"]], dtype=torch.float64)
            total = torch.stack([att.token_scores(r).double() for r in range(len(att.targets))]).sum(-1)
            delta = f_x - f_b
            err = (total - delta).abs()
            rel = err / delta.abs().clamp_min(1e-12)
            for r in range(err.shape[0]):
                res.add(m.label, "abs_error", float(err[r]), prompt=item.index, row=r)
                res.add(m.label, "rel_error", float(rel[r]), prompt=item.index, row=r)
                if "completeness_error_per_target" in att.diagnostics:
                    res.add(m.label, "reported_abs_error", float(att.diagnostics["completeness_error_per_target"][r]), prompt=item.index, row=r)
            rels.extend(rel.tolist())
            abss.extend(err.tolist())
        worst = max(rels)
        res.add(m.label, "max_rel_error", worst)
        res.add(m.label, "mean_abs_error", nanmean(abss))
        if strict:
            res.verdicts[m.label] = Verdict(worst, bool(worst < tol), tol, f"max relative completeness error < {tol}")
        else:
            res.verdicts[m.label] = Verdict(worst, None, None, "", "promises completeness only in expectation")
    return res
