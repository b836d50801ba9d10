"""Check 1: model parameter randomization (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A faithful explanation depends on what the model learned, so re-initialising the weights must
change it. Two schedules on a deep copy of the model (the user's model is never touched):

- cascading: randomize the output (unembedding + final norm), then the blocks from the top down,
  then the embeddings, cumulatively; step s has the top s groups random.
- independent: randomize one group at a time, all others as trained.

Re-initialisation keeps each tensor's scale: a matrix gets N(0, std(W)) entries (the model's
``initializer_range`` if the tensor is constant), a vector gets N(mean(v), std(v)) so norms with
unit gains stay unit. Similarity to the original attribution: Spearman rank correlation of signed
scores and of |scores|, and top-k intersection, averaged over prompts and target rows. Criterion:
after full randomization both Spearman correlations fall below ``threshold``.

Tied weights (GPT-2 ties W_E and W_U) are randomized with the first group that holds them, which
the report notes; "independent" output randomization then also changes the embeddings.
"""

from __future__ import annotations


import torch
from torch import Tensor

from ..tl.adapter import ModelAdapter
from ..tl.params import copy_model, param_groups, tied_note
from ..progress import progress
from ._context import VContext
from ._result import CheckResult, Verdict
from .stats import nanmean, spearman, top_k_intersection


def new_values(p: Tensor, g: torch.Generator, init_std: float) -> Tensor:
    x = p.detach().double().cpu()
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    if x.dim() >= 2:
        sd = float(x.std()) if x.numel() > 1 else 0.0
        sd = sd if sd > 0 and sd == sd else init_std
        out = noise * sd
    else:
        sd = float(x.std()) if x.numel() > 1 else 0.0
        out = float(x.mean()) + noise * (sd if sd == sd else 0.0)
    return out.to(dtype=p.dtype, device=p.device)


def randomize_(params: list[torch.nn.Parameter], seed: int, init_std: float) -> None:
    """Re-initialise ``params`` in place (only ever called on the copy)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for p in params:
            p.copy_(new_values(p, g, init_std))


def similarity(orig: Tensor, new: Tensor, free: Tensor, k: int) -> dict[str, float]:
    """Similarity of two [rows, pos] score maps over the attributed positions, averaged over rows."""
    a, b = orig[:, free], new[:, free]
    sp = spearman(a, b).tolist()
    spa = spearman(a.abs(), b.abs()).tolist()
    tk = [top_k_intersection(a[r], b[r], k) for r in range(a.shape[0])]
    return {"spearman": nanmean(sp), "spearman_abs": nanmean(spa), "top_k_intersection": nanmean(tk)}


def _measure(vc: VContext, adapter: ModelAdapter, res: CheckResult, mode: str, step: int, group: str) -> dict[str, dict[str, float]]:
    k = vc.options["top_k"]
    per_method: dict[str, dict[str, float]] = {}
    for m in vc.methods:
        sims: dict[str, list[float]] = {}
        for item in vc.items:
            orig = vc.scores(item, m)
            new = orig if adapter is vc.adapter else vc.scores(item, m, adapter=adapter)
            s = similarity(orig, new, item.free.cpu(), k)
            for name, v in s.items():
                res.add(m.label, name, v, mode=mode, step=step, group=group, prompt=item.index)
                sims.setdefault(name, []).append(v)
        per_method[m.label] = {n: nanmean(v) for n, v in sims.items()}
    return per_method


def run(vc: VContext) -> CheckResult:
    res = CheckResult("randomization")
    model = vc.model
    init_std = float(getattr(vc.adapter.cfg, "initializer_range", 0.02) or 0.02)
    note = tied_note(model)
    if note:
        res.notes.append(note)
    clone = copy_model(model)
    adapter = ModelAdapter(clone, name=vc.adapter.name + " (randomized copy)", prepend_bos=vc.adapter.prepend_bos)
    groups = param_groups(clone)
    stride = max(1, int(vc.options["randomization_stride"]))
    curves: dict[str, list[tuple[str, dict[str, dict[str, float]]]]] = {}
    final: dict[str, dict[str, float]] = {}
    if "cascading" in vc.options["randomization"]:
        curve = [("original", _measure(vc, vc.adapter, res, "cascading", 0, "original"))]
        done = 0
        for gi, (name, ps) in progress(
            list(enumerate(groups)), desc="randomization (cascading)", quiet=vc.quiet
        ):
            randomize_(ps, vc.seed * 1009 + gi, init_std)
            done += 1
            last = gi == len(groups) - 1
            # A coarser curve for deep models; the fully random end point is always measured.
            if gi % stride == stride - 1 or last:
                curve.append((f"+{name}", _measure(vc, adapter, res, "cascading", gi + 1, name)))
        curves["cascading"] = curve
        final = curve[-1][1]
        # Restore the copy for the independent schedule from the untouched original.
        if "independent" in vc.options["randomization"]:
            clone = copy_model(model)
            adapter = ModelAdapter(clone, name=adapter.name, prepend_bos=vc.adapter.prepend_bos)
            groups = param_groups(clone)
    if "independent" in vc.options["randomization"]:
        curve = []
        for gi, (name, ps) in progress(
            list(enumerate(groups)), desc="randomization (independent)", quiet=vc.quiet
        ):
            if gi % stride != 0 and gi != len(groups) - 1:
                continue
            saved = [p.detach().clone() for p in ps]
            randomize_(ps, vc.seed * 1009 + gi, init_std)
            curve.append((name, _measure(vc, adapter, res, "independent", gi + 1, name)))
            with torch.no_grad():
                for p, s in zip(ps, saved):
                    p.copy_(s)
        curves["independent"] = curve
    del clone
    thr = float(vc.options["threshold"])
    for m in vc.methods:
        if not final:
            res.verdicts[m.label] = Verdict(None, None, thr, "cascading schedule not run")
            continue
        f = final[m.label]
        worst = max(f["spearman"], f["spearman_abs"]) if f["spearman"] == f["spearman"] and f["spearman_abs"] == f["spearman_abs"] else float("nan")
        ok = bool(worst == worst and worst < thr)
        res.verdicts[m.label] = Verdict(
            worst,
            ok,
            thr,
            f"Spearman (signed and |.|) to the original after full randomization < {thr}",
            "" if worst == worst else "similarity undefined (constant scores): counted as a failure",
        )
    res.data["curves"] = curves
    return res
