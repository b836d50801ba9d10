"""ROAR and KAR sweeps as Hooker et al. 2019 run them, on a zoo task (issue 19, item 15).

ROAR (RemOve And Retrain): for each fraction t of the tokens (default 10, 30, 50, 70, 90 %), the
t most important tokens of every training and test example (by the method, on the validated
model) are replaced by ``<unk>``, a fresh model is trained on the masked training set and scored
on the masked test set; every point is retrained ``repeats`` times (>= 3; different training seeds)
and averaged. KAR (Keep And Retrain) replaces the t *least* important tokens instead. A random
ranking, drawn afresh for each repeat, is the reference at every point.

A faithful ranking makes the task harder than random removal under ROAR (lower accuracy) and
keeps it easier under KAR (higher accuracy). Summaries (means over the fractions):
``roar_gap`` = random accuracy - method accuracy under ROAR, ``kar_gap`` = method accuracy -
random accuracy under KAR; each with its noise ``se`` (standard error of the difference of the two
means over repeats and fractions, at least the binomial standard error of the test accuracy).
Criterion of the sweep (``roar_mode="sweep"``): ``roar_gap`` > 2 se. KAR is reported, with its own
``kar_gap`` and se, but decides nothing: Hooker et al. found random removal competitive under KAR.

Token counts per example: ceil(t x n) of its n attributable tokens, at least 1 and at most n. The
zoo's training loop and the lite configuration (:data:`mechattr.zoo.train.ROAR_OVERRIDES`) are
used, and accuracies are cached exactly as for ROAR-lite (:func:`.roar.cached_accuracy`).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..progress import progress
from ._context import MethodSpec, VContext
from ._result import CheckResult, Verdict
from .stats import nanmean, nanstd

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # Hooker et al. 2019, section 4


def n_masked(t: float, n: int) -> int:
    return min(n, max(1, math.ceil(t * n - 1e-9)))


def ranked(scores: Tensor, free: Tensor) -> list[int]:
    """Free positions, most important (highest signed score) first; ties: earlier position."""
    cand = torch.nonzero(free)[:, 0].tolist()
    return sorted(cand, key=lambda p: (-float(scores[p]), p))


def check_sweep_options(fractions: Any, repeats: Any) -> tuple[tuple[float, ...], int]:
    fr = tuple(fractions)
    if not fr or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1 for t in fr):
        raise InputError(f"roar_fractions are fractions of the tokens in (0, 1), e.g. (0.1, 0.3, 0.5); got {fractions!r}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise InputError(f"roar_repeats must be an integer >= 2 (Hooker et al. retrain >= 3 times), got {repeats!r}.")
    return tuple(float(t) for t in fr), repeats


def run_sweep(vc: VContext) -> CheckResult:
    from . import roar

    with roar._one_thread():
        return _run(vc, roar)


def _run(vc: VContext, roar: Any) -> CheckResult:
    res = CheckResult("roar")
    zt, ztr = roar._zoo()
    task = zt.get_task(roar.task_name(vc))
    rc, tc, cache = roar.configs(task.name, vc.options["roar_config"], vc.seed)
    fractions, repeats = check_sweep_options(vc.options["roar_fractions"], vc.options["roar_repeats"])
    quiet = bool(getattr(vc, "quiet", False))
    toks, last, ans, items, n_tr = roar.encoded_items(vc, task, rc, tc)
    split = lambda masked: ((masked[:n_tr], last[:n_tr], ans[:n_tr]), (masked[n_tr:], last[n_tr:], ans[n_tr:]))  # noqa: E731

    def acc_of(masked: Tensor, r: int) -> float:
        a, _ = roar.cached_accuracy(task, replace(tc, seed=tc.seed + 1000 * r), *split(masked), cache)
        return a

    # rankings: one per method (attributed once per distinct prompt), fresh random ones per repeat
    rankings: dict[str, list[list[int]]] = {}
    for m in vc.methods:
        rankings[m.label] = _rankings(vc, m, items, quiet)

    def masked_by(order_per_ex: list[list[int]], t: float, mode: str) -> Tensor:
        pos = []
        for order in order_per_ex:
            k = n_masked(t, len(order))
            pos.append(order[:k] if mode == "roar" else order[len(order) - k:])
        return roar.mask_tokens(toks, roar._shift(pos, items), ztr.UNK)

    base = [acc_of(toks, r) for r in range(repeats)]
    curves: dict[str, dict[str, list[list[float]]]] = {}  # mode -> label -> [fraction][repeat]
    jobs = [(mode, t) for mode in ("roar", "kar") for t in fractions]
    for mode, t in progress(jobs, desc=f"ROAR/KAR sweep on zoo:{task.name}", quiet=quiet):
        for r in range(repeats):
            rng = random.Random(f"roar-sweep:{vc.seed}:{r}")
            rand_orders = []
            for it, _ in items:
                cand = torch.nonzero(it.free)[:, 0].tolist()
                rng.shuffle(cand)
                rand_orders.append(cand)
            a = acc_of(masked_by(rand_orders, t, mode), r)
            curves.setdefault(mode, {}).setdefault("random", [[] for _ in fractions])[fractions.index(t)].append(a)
            res.add("random", f"{mode}_accuracy", a, fraction=t, repeat=r)
            for m in vc.methods:
                a = acc_of(masked_by(rankings[m.label], t, mode), r)
                curves[mode].setdefault(m.label, [[] for _ in fractions])[fractions.index(t)].append(a)
                res.add(m.label, f"{mode}_accuracy", a, fraction=t, repeat=r)
    for r, a in enumerate(base):
        res.add("none", "accuracy", a, repeat=r)
    n_test = rc.n_test
    summary: dict[str, dict[str, float]] = {}
    for m in vc.methods:
        out: dict[str, float] = {}
        for mode, sign in (("roar", 1.0), ("kar", -1.0)):
            mine = torch.tensor(curves[mode][m.label], dtype=torch.float64)  # [fractions, repeats]
            rand = torch.tensor(curves[mode]["random"], dtype=torch.float64)
            diff = sign * (rand - mine)  # per fraction and repeat: positive = better than random
            gap = float(diff.mean())
            sd = float(diff.flatten().std()) if diff.numel() > 1 else float("nan")
            p = float(rand.mean())
            se = max(sd / math.sqrt(diff.numel()), math.sqrt(max(p * (1 - p), 0.0) / (n_test * diff.numel())))
            out[f"{mode}_gap"] = gap
            out[f"{mode}_se"] = se
            res.add(m.label, f"{mode}_gap", gap)
            res.add(m.label, f"{mode}_se", se)
        summary[m.label] = out
        ok = bool(out["roar_gap"] > 2 * out["roar_se"])
        res.verdicts[m.label] = Verdict(
            out["roar_gap"], ok, 2 * out["roar_se"],
            "ROAR sweep: mean over fractions of (random - method) accuracy after retraining > 2 s.e.",
            f"task {task.name}, fractions {list(fractions)}, {repeats} retrainings per point; "
            f"KAR gap {out['kar_gap']:+.3f} (s.e. {out['kar_se']:.3f})",
        )
    res.notes.append(
        f"ROAR/KAR sweep (Hooker et al. 2019): task zoo:{task.name}; fractions {list(fractions)}; {repeats} "
        f"retrainings per point; {rc.n_train} train / {rc.n_test} test examples; unmasked accuracy "
        f"{nanmean(base):.3f} ± {nanstd(base):.3f}"
    )
    res.data["sweep"] = {
        "fractions": list(fractions),
        "repeats": repeats,
        "unmasked": base,
        "curves": {mode: {lab: [sum(v) / len(v) for v in per] for lab, per in d.items()} for mode, d in curves.items()},
        "summary": summary,
    }
    return res


def _rankings(vc: VContext, m: MethodSpec, items: list, quiet: bool) -> list[list[int]]:
    memo: dict[str, list[int]] = {}
    out = []
    for it, _ in progress(items, desc=f"ROAR sweep: attributing with {m.label}", total=len(items), quiet=quiet):
        key = str(it.prompt)
        if key not in memo:
            memo[key] = ranked(vc.attribute(vc.adapter, it, m).token_scores(0), it.free)
        out.append(memo[key])
    return out


def run(vc: VContext) -> CheckResult:
    """The ``roar`` check: ROAR-lite (:func:`mechattr.validation.roar.run`, the fast default) or,
    with ``roar_mode="sweep"``, Hooker et al.'s full protocol (:func:`run_sweep`)."""
    from . import roar

    if vc.options.get("roar_mode", "lite") == "sweep":
        return run_sweep(vc)
    return roar.run(vc)
