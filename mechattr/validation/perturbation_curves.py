"""Check 4: perturbation tests — remove tokens in the order a method ranks them and watch the target.

- Deletion (MoRF): remove the most important tokens first; a faithful ranking makes the target
  fall fast. Insertion: start from everything removed and restore the most important first; the
  target should rise fast (Petsiuk et al. 2018, RISE).
- Area under each curve over the fraction removed (trapezoid), raw and normalised by the gap
  between the full and the empty input: (f_j - f_empty) / (f_full - f_empty).
- AOPC (Samek et al. 2017): mean over j = 0..n of f(x) - f(x without its top-j tokens).
- Comprehensiveness f(x) - f(x \\ top-k) (higher is better) and sufficiency f(x) - f(top-k only)
  (lower is better) in two forms:
  ``comprehensiveness@k`` / ``sufficiency@k`` (and their means ``comprehensiveness`` /
  ``sufficiency``): in *target units* (what was attributed; log-prob by default) at the ``ks``
  option (tokens or fractions of them) -- mechattr's variant;
  ``eraser_comprehensiveness@b`` / ``eraser_sufficiency@b`` and their means over the bins: ERASER
  as DeYoung et al. 2020 define it, in *probability* units (the target token's probability, from a
  log_prob or prob target) at the paper's bins b = 1, 5, 10, 20, 50 % of the removable tokens
  (ceil, at least one token), aggregated as the mean over the bins as the released scorer does.
  Targets without a probability (logits, differences, probes, SAE features) leave them NaN.

Every method is compared with ``n_random`` random orderings (mean ± std over seeds) and with a
frequency heuristic that removes the rarest tokens first. Rarity comes from a supplied counts table
(``counts={token_id: count}``) or, without one, from the token id: BPE vocabularies (GPT-2,
Llama/SmolLM) add tokens in merge order, so a larger id is a later, rarer merge — a proxy, not a
corpus count. Special tokens are treated as the most frequent.

Two position-only controls stand beside them (:mod:`.controls`): ``position`` (a leave-one-out
position prior from the other prompts' single-token ablation effects) and ``recency`` (latest
tokens first).

Criterion: the method's deletion AOPC exceeds the random mean by ``margin`` random stds *and*
the AOPC of every control (frequency, position, recency): a method that ranks by position alone
cannot pass. All perturbed inputs of a prompt go through the model in batches.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..progress import progress
from ._context import Item, VContext
from .ablation import ablation_effects
from .controls import CONTROLS, frequency_scores, position_prior_scores, recency_scores
from ._replace import Remover
from ._result import CheckResult, Verdict
from .stats import nanmean, nanstd

GRID = 11  # points of the fraction-removed axis the mean curves are resampled to
ERASER_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)  # DeYoung et al. 2020, section 4


def probability_of(plan: Any) -> Any:
    """Target value -> probability of the target token, or None when the target is no probability."""
    kind = getattr(plan, "kind", None)
    if kind == "log_prob":
        return torch.exp
    if kind == "prob":
        return lambda v: v
    return None


def k_values(ks: Any, n: int) -> list[tuple[str, int]]:
    out = []
    for k in ks:
        if isinstance(k, float):
            out.append((f"{int(round(k * 100))}%", min(n, max(1, math.ceil(k * n)))))
        else:
            out.append((str(k), min(n, int(k))))
    return out


def order_of(scores: Tensor, positions: list[int]) -> list[int]:
    """Removable positions, highest score first; ties go to the earlier position."""
    return sorted(positions, key=lambda p: (-float(scores[p]), p))


def trapezoid(y: Tensor) -> float:
    n = y.shape[0] - 1
    if n < 1:
        return float("nan")
    return float(((y[1:] + y[:-1]) / 2).sum() / n)


def resample(y: Tensor, grid: int = GRID) -> Tensor:
    x_old = torch.linspace(0, 1, y.shape[0], dtype=torch.float64)
    x_new = torch.linspace(0, 1, grid, dtype=torch.float64)
    idx = torch.searchsorted(x_old, x_new).clamp(1, y.shape[0] - 1)
    x0, x1 = x_old[idx - 1], x_old[idx]
    w = (x_new - x0) / (x1 - x0)
    return y[idx - 1] * (1 - w) + y[idx] * w


def curve_metrics(
    dele: Tensor, ins: Tensor, ks: list[tuple[str, int]], prob: Any = None, eraser_ks: list[tuple[str, int]] | None = None
) -> dict[str, float]:
    """Metrics of one ordering from its deletion and insertion curves (index j = tokens removed /
    inserted, j = 0..n). ``prob`` maps target values to probabilities (ERASER units)."""
    f_full, f_empty = float(dele[0]), float(dele[-1])
    gap = f_full - f_empty
    out = {
        "deletion_auc": trapezoid(dele),
        "insertion_auc": trapezoid(ins),
        "aopc": float((f_full - dele).mean()),
    }
    if abs(gap) > 1e-6:
        out["deletion_auc_norm"] = trapezoid((dele - f_empty) / gap)
        out["insertion_auc_norm"] = trapezoid((ins - f_empty) / gap)
    else:
        out["deletion_auc_norm"] = out["insertion_auc_norm"] = float("nan")
    comp, suff = [], []
    for name, k in ks:
        c = f_full - float(dele[k])
        s = f_full - float(ins[k])
        out[f"comprehensiveness@{name}"] = c
        out[f"sufficiency@{name}"] = s
        comp.append(c)
        suff.append(s)
    out["comprehensiveness"] = sum(comp) / len(comp)
    out["sufficiency"] = sum(suff) / len(suff)
    if eraser_ks is None:
        eraser_ks = k_values(ERASER_BINS, dele.shape[0] - 1)
    pd = prob(dele.double()) if prob is not None else None
    pi = prob(ins.double()) if prob is not None else None
    comp, suff = [], []
    for name, k in eraser_ks:
        c = float(pd[0] - pd[k]) if pd is not None else float("nan")
        s = float(pd[0] - pi[k]) if pd is not None else float("nan")
        out[f"eraser_comprehensiveness@{name}"] = c
        out[f"eraser_sufficiency@{name}"] = s
        comp.append(c)
        suff.append(s)
    out["eraser_comprehensiveness"] = sum(comp) / len(comp)
    out["eraser_sufficiency"] = sum(suff) / len(suff)
    return out


def curves_for_orders(remover: Remover, orders: list[list[int]], removable: list[int]) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves ``[n_orders, rows, n+1]`` for every ordering, in one batch."""
    n, P = len(removable), remover.n_pos
    masks = torch.zeros(len(orders), 2, n + 1, P, dtype=torch.bool)
    for o, order in enumerate(orders):
        for j in range(n + 1):
            masks[o, 0, j, order[:j]] = True  # deletion: top-j removed
            masks[o, 1, j, removable] = True  # insertion: all removed but the top j
            masks[o, 1, j, order[:j]] = False
    flat = masks.reshape(-1, P)
    # Many masks coincide (j = 0, j = n, shared prefixes): evaluate each distinct one once.
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    vals = remover.evaluate(uniq)[inverse]  # [n_masks, rows]
    vals = vals.reshape(len(orders), 2, n + 1, -1).permute(0, 1, 3, 2)
    return vals[:, 0], vals[:, 1]


def deletion_bars(summary: dict[str, dict[str, float]], margin: float) -> dict[str, float]:
    """The AOPC a method must exceed, per control: random mean + ``margin`` random stds, and the
    AOPC of each content-blind control. A PASS exceeds all of them."""
    mu, sd = summary["random"]["aopc"], summary["random ± std"]["aopc"]
    return {"random": mu + margin * sd, **{c: summary[c]["aopc"] for c in CONTROLS}}


def run(vc: VContext) -> CheckResult:
    res = CheckResult("perturbation")
    o = vc.options
    counts = o["counts"]
    n_random = int(o["n_random"])
    res.notes.append(
        f"replacement={o['replacement']!r}; {n_random} random orderings; frequency heuristic from "
        + ("the supplied counts table" if counts is not None else "token ids (BPE merge-rank proxy)")
    )
    res.notes.append(
        "comprehensiveness/sufficiency@k: target units at ks; eraser_*: probability units at bins "
        "1/5/10/20/50 % (DeYoung et al. 2020)"
        + ("" if probability_of(vc.items[0].plan) is not None else " -- NaN here: the target is not a log-prob or probability")
    )
    special = {
        int(t) for t in (vc.adapter.special_token_id(s) for s in ("bos", "eos", "pad", "unk")) if t is not None
    }
    labels = [m.label for m in vc.methods]
    controls = list(CONTROLS)
    # per (order label) per prompt/row: metrics; random: per seed
    per: dict[str, list[dict[str, float]]] = {lab: [] for lab in labels + controls}
    per_random: list[list[dict[str, float]]] = [[] for _ in range(n_random)]
    mean_curves: dict[str, dict[str, list[Tensor]]] = {
        lab: {"deletion": [], "insertion": []} for lab in labels + controls + ["random"]
    }
    effects = {item.index: ablation_effects(vc, item) for item in vc.items}  # for the position prior
    for item in progress(vc.items, desc="perturbation curves (prompts)", quiet=vc.quiet):
        remover = Remover(
            vc.adapter, item.plan, item.fixed, o["replacement"], seed=vc.seed + 31 * item.index,
            memory_mb=o["memory_mb"], batch_size=o["batch_size"],
        )
        removable = torch.nonzero(remover.removable.cpu())[:, 0].tolist()
        n = len(removable)
        if n < 1:
            raise InputError(f"Prompt {item.index} has no removable tokens for replacement={o['replacement']!r}.")
        ks = k_values(o["ks"], n)
        eks = k_values(ERASER_BINS, n)
        prob = probability_of(item.plan)
        g = torch.Generator(device="cpu").manual_seed(vc.seed * 7907 + item.index)
        rand_orders = [[removable[i] for i in torch.randperm(n, generator=g).tolist()] for _ in range(n_random)]
        freq = frequency_scores(item.plan.tokens[0].tolist(), counts, special)
        n_pos = int(item.plan.tokens.shape[1])
        control_orders = [
            order_of(freq, removable),
            order_of(position_prior_scores(effects, item.index, n_pos), removable),
            order_of(recency_scores(n_pos), removable),
        ]
        method_orders = []
        score_maps = {m.label: vc.scores(item, m) for m in vc.methods}
        rows = item.plan.n_rows
        for r in range(rows):
            for m in vc.methods:
                method_orders.append(order_of(score_maps[m.label][r], removable))
        orders = method_orders + control_orders + rand_orders
        dele, ins = curves_for_orders(remover, orders, removable)
        for r in range(rows):
            def record(label: str, oi: int, sink: list[dict[str, float]], curve_key: str | None) -> None:
                met = curve_metrics(dele[oi, r], ins[oi, r], ks, prob, eks)
                sink.append(met)
                if curve_key:
                    mean_curves[curve_key]["deletion"].append(resample(dele[oi, r] - dele[oi, r, 0]))
                    mean_curves[curve_key]["insertion"].append(resample(ins[oi, r] - dele[oi, r, 0]))
                for name, v in met.items():
                    res.add(label, name, v, prompt=item.index, row=r)

            for mi, m in enumerate(vc.methods):
                record(m.label, r * len(vc.methods) + mi, per[m.label], m.label)
            base = rows * len(vc.methods)
            for ci, c in enumerate(controls):
                record(c, base + ci, per[c], c)
            base += len(controls) - 1
            for s in range(n_random):
                met = curve_metrics(dele[base + 1 + s, r], ins[base + 1 + s, r], ks, prob, eks)
                per_random[s].append(met)
                mean_curves["random"]["deletion"].append(resample(dele[base + 1 + s, r] - dele[base + 1 + s, r, 0]))
                mean_curves["random"]["insertion"].append(resample(ins[base + 1 + s, r] - dele[base + 1 + s, r, 0]))
                for name, v in met.items():
                    res.add("random", name, v, prompt=item.index, row=r, seed=s)

    metric_names = list(per[labels[0]][0].keys())
    summary: dict[str, dict[str, float]] = {}
    for lab, mets in per.items():
        summary[lab] = {name: nanmean([m[name] for m in mets]) for name in metric_names}
    seed_means = [{name: nanmean([m[name] for m in mets]) for name in metric_names} for mets in per_random]
    summary["random"] = {name: nanmean([s[name] for s in seed_means]) for name in metric_names}
    summary["random ± std"] = {name: nanstd([s[name] for s in seed_means]) for name in metric_names}
    for lab, vals in summary.items():
        for name, v in vals.items():
            res.add(lab, "mean_" + name, v)
    margin = float(o["margin"])
    mu, sd = summary["random"]["aopc"], summary["random ± std"]["aopc"]
    bars = deletion_bars(summary, margin)
    bar = max(v for v in bars.values() if v == v)
    for m in vc.methods:
        a = summary[m.label]["aopc"]
        z = (a - mu) / sd if sd > 0 else (math.inf if a > mu else -math.inf if a < mu else 0.0)
        beaten = [c for c, v in bars.items() if not (a > v)]
        res.verdicts[m.label] = Verdict(
            a,
            bool(a > bar),
            bar,
            f"deletion AOPC > random mean + {margin}·std ({mu:.4g} ± {sd:.4g}) and > every control "
            f"(frequency {bars['frequency']:.4g}, position {bars['position']:.4g}, recency {bars['recency']:.4g})",
            f"z = {z:.2f}" + (f"; not above: {', '.join(beaten)}" if beaten else ""),
        )
    res.data["summary"] = summary
    res.data["mean_curves"] = {
        lab: {kind: torch.stack(v).mean(0).tolist() for kind, v in d.items() if v}
        for lab, d in mean_curves.items()
    }
    return res
