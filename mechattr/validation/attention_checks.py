"""Jain & Wallace (2019), "Attention is not Explanation", as three validation checks.

Measurements with a plain-language reading, not pass/fail: they say how much an attention map
*can* be read as an explanation of this model's prediction, not whether an attribution method is
right.

- ``attention_correlation``: Kendall tau-b, per layer, between the attention row of the explained
  position (heads averaged, the mean being the usual one-map-per-layer reading) and each
  validated method's token ranking by |score|, and a leave-one-out ranking |f(x) - f(x without
  token i)| (the check's ``replacement``, as in the perturbation check). Over the attributed
  tokens (a fixed BOS left out: it is an attention sink in most models, not an input word).
- ``attention_permutation``: permute one layer's attention weights over the source positions
  (through ``hook_pattern``; every head and query row gets its own random permutation *among the
  positions it may attend to*, so causality holds and every row still sums to 1) and measure the
  total variation distance TVD(p, q) = 1/2 sum |p - q| of the next-token distribution at the
  explained positions. Median (and max) over ``n_permutations`` permutations and the prompts,
  per layer.
- ``attention_adversarial``: at one layer, replace the explained position's attention row (every
  head; the other rows stay) by softmax(Z) over its allowed positions and optimise Z with Adam to
  maximise the Jensen-Shannon divergence from the original row (mean over heads; base 2, so 0 =
  identical and 1 = disjoint) minus a penalty ``(lambda / eps) relu(TVD - eps)`` that keeps the
  output within ``eps`` TVD; report the largest divergence seen at any step whose TVD is <= eps
  (the original row itself, divergence 0, is always feasible), and its square root, the JS
  distance. J&W use eps = 0.01.

Deviations from the paper, named: J&W study one attention distribution of a BiLSTM encoder; a
transformer has one per layer and head, so everything here is per layer, heads averaged
(correlation) or all heads at once (permutation, adversarial); their gradient ranking is the
input gradient, here it is whichever methods are validated (``saliency`` is that gradient).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..tl import hooks as hk
from ..errors import InputError
from ._context import Item, VContext
from ._replace import Remover
from ._result import CheckResult, Verdict
from .stats import kendall, nanmean

LOO = "leave_one_out"


def _guarded(fn: Any) -> Any:
    """Run a check with the model in eval mode and given back exactly as it came."""
    import functools

    @functools.wraps(fn)
    def run(vc: VContext) -> CheckResult:
        with vc.adapter.guard():
            return fn(vc)

    return run


def pattern_hook(layer: int) -> str:
    return hk.attn_pattern(layer)


def _layers(vc: VContext) -> list[int]:
    n = vc.adapter.n_layers
    layers = vc.options.get("attention_layers")
    if layers is None:
        return list(range(n))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not -n <= l < n:
            raise InputError(f"attention_layers holds layer indices in [0, {n}); got {l!r}.")
        out.append(l % n)
    if not out:
        raise InputError("attention_layers is empty; give None (every layer) or a list of layers.")
    return sorted(set(out))


def attention_rows(
    adapter: Any, tokens: Int[Tensor, "1 pos"], positions: Sequence[int], layers: Sequence[int]
) -> Float[Tensor, "layer row head src"]:
    """The attention rows of ``positions`` at each of ``layers`` (one forward, no gradients)."""
    box: dict[int, Tensor] = {}

    def grab(l: int) -> Any:
        def fn(x: Tensor, hook: Any) -> None:
            box[l] = x[0][:, list(positions)].detach().double().cpu()  # [head, row, src]

        return fn

    with torch.no_grad(), adapter.hooks(fwd_hooks=[(pattern_hook(l), grab(l)) for l in layers]):
        adapter.model(tokens)
    return torch.stack([box[l].transpose(0, 1) for l in layers])


def next_token_probs(
    adapter: Any, tokens: Int[Tensor, "batch pos"], positions: Sequence[int], fwd_hooks: Sequence[Any] = ()
) -> Float[Tensor, "batch k vocab"]:
    logits = adapter.logits(tokens, positions=list(positions), fwd_hooks=list(fwd_hooks), _fast=False)
    return torch.softmax(logits.double(), dim=-1)


def tvd(p: Float[Tensor, "... vocab"], q: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """Total variation distance 1/2 sum |p - q| over the last axis."""
    return 0.5 * (p - q).abs().sum(-1)


def js_divergence(p: Float[Tensor, "... n"], q: Float[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint supports)."""
    m = 0.5 * (p + q)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-300)) - torch.log2(b.clamp_min(1e-300))), 0.0).sum(-1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0.0)


def causal_permutations(
    n_perm: int, n_heads: int, n_pos: int, generator: torch.Generator
) -> Int[Tensor, "n_perm head dst src"]:
    """Index tensors for ``pattern.gather(-1, idx)``: row ``q`` holds a uniformly random
    permutation of ``0..q`` in its first ``q + 1`` entries and ``q+1..n-1`` (weights that are 0 by
    causality) after them, independently for every permutation, head and row."""
    keys = torch.rand(n_perm, n_heads, n_pos, n_pos, generator=generator, dtype=torch.float64)
    banned = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool), diagonal=1)
    keys = keys.masked_fill(banned, 2.0) + banned.double() * torch.arange(n_pos, dtype=torch.float64)
    return keys.argsort(dim=-1)


def permutation_tvd(
    adapter: Any, tokens: Int[Tensor, "1 pos"], positions: Sequence[int], layer: int,
    perms: Int[Tensor, "n_perm head dst src"], batch_size: int = 16,
) -> Float[Tensor, " n_perm"]:
    """TVD of the next-token distribution (mean over ``positions``) when ``layer``'s attention is
    permuted by each of ``perms``, batched."""
    with torch.no_grad():
        base = next_token_probs(adapter, tokens, positions)
        out = []
        for s in range(0, perms.shape[0], batch_size):
            idx = perms[s : s + batch_size]

            def permute(x: Tensor, hook: Any, idx: Tensor = idx) -> Tensor:
                return x.gather(-1, idx.to(x.device).expand(x.shape[0], *idx.shape[1:]))

            toks = tokens.expand(idx.shape[0], -1)
            q = next_token_probs(adapter, toks, positions, [(pattern_hook(layer), permute)])
            out.append(tvd(base, q).mean(-1))
    return torch.cat(out).cpu()


def adversarial_attention(
    adapter: Any, tokens: Int[Tensor, "1 pos"], positions: Sequence[int], layer: int, *,
    eps: float = 0.01, steps: int = 60, lr: float = 0.1, penalty: float = 10.0, init_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Search for an attention row at ``positions[0]`` of ``layer`` as different from the original
    as possible (JS divergence, mean over heads) with the output within ``eps`` TVD (at every one
    of ``positions``). Returns the best feasible divergence, its row and the TVD there."""
    t = int(positions[0])
    row0 = attention_rows(adapter, tokens, [t], [layer])[0, 0]  # [head, src]
    allowed = row0[:, : t + 1]
    with torch.no_grad():
        base = next_token_probs(adapter, tokens, positions)[0]
    noise = torch.randn(allowed.shape, generator=generator, dtype=torch.float64) * init_noise
    Z = (allowed.clamp_min(1e-12).log() + noise).to(adapter.dtype).to(adapter.device).requires_grad_(True)
    opt = torch.optim.Adam([Z], lr=lr)

    def replace(x: Tensor, hook: Any) -> Tensor:
        new = x.clone()
        row = torch.softmax(Z, dim=-1).to(x.dtype)
        new[:, :, t, : t + 1] = row
        new[:, :, t, t + 1 :] = 0.0
        return new

    best = {"js_divergence": 0.0, "tvd": 0.0, "step": -1, "row": allowed.clone()}
    history = []
    with torch.enable_grad(), adapter.frozen_weights():
        for step in range(steps):
            q = next_token_probs(adapter, tokens, positions, [(pattern_hook(layer), replace)])[0]
            d = tvd(base, q).max()
            d_val = float(d.detach())
            row = torch.softmax(Z.double(), dim=-1)
            js = js_divergence(row, allowed.to(row)).mean()
            if d_val <= eps and float(js.detach()) > best["js_divergence"]:
                best = {"js_divergence": float(js.detach()), "tvd": d_val, "step": step, "row": row.detach().cpu()}
            history.append((float(js.detach()), d_val))
            loss = -js + penalty / eps * torch.relu(d - eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
    best["js_distance"] = math.sqrt(best["js_divergence"])
    best["original_row"] = allowed
    best["history"] = history
    return best


# ----- the checks ------------------------------------------------------------------------------


def _loo_scores(vc: VContext, item: Item) -> tuple[Tensor, Tensor]:
    """|f(x) - f(x without token i)| per position [rows, pos] and the positions that could be removed."""
    o = vc.options
    remover = Remover(vc.adapter, item.plan, item.fixed, o["replacement"], seed=vc.seed + 31 * item.index,
                      memory_mb=o["memory_mb"], batch_size=o["batch_size"])
    removable = remover.removable.cpu()
    P = remover.n_pos
    idx = torch.nonzero(removable).flatten()
    masks = torch.zeros(len(idx) + 1, P, dtype=torch.bool)
    masks[torch.arange(1, len(idx) + 1), idx] = True
    vals = remover.evaluate(masks).double().cpu()  # [1 + n, rows]
    out = torch.zeros(item.plan.n_rows, P, dtype=torch.float64)
    out[:, idx] = (vals[:1] - vals[1:]).abs().T
    return out, removable


@_guarded
def run_correlation(vc: VContext) -> CheckResult:
    res = CheckResult("attention_correlation")
    layers = _layers(vc)
    labels = [m.label for m in vc.methods] + [LOO]
    per: dict[tuple[str, int], list[float]] = {(lab, l): [] for lab in labels for l in layers}
    for item in vc.items:
        att = attention_rows(vc.adapter, item.plan.tokens, item.plan.positions, layers).mean(2)  # [L, rows, src]
        free = item.free.cpu()
        ranks = {m.label: (vc.scores(item, m).abs(), free) for m in vc.methods}
        loo, removable = _loo_scores(vc, item)
        ranks[LOO] = (loo, free & removable)
        for lab, (scores, keep) in ranks.items():
            if int(keep.sum()) < 2:
                continue
            for li, l in enumerate(layers):
                for r in range(item.plan.n_rows):
                    tau = float(kendall(att[li, r, keep], scores[r, keep].double()))
                    per[(lab, l)].append(tau)
                    res.add(lab, "kendall_tau", tau, layer=l, prompt=item.index, row=r)
    table = []
    for l in layers:
        row: dict[str, Any] = {"layer": l}
        for lab in labels:
            row[lab] = nanmean(per[(lab, l)])
            res.add(lab, "mean_kendall_tau", row[lab], layer=l)
        table.append(row)
    for lab in labels:
        res.verdicts[lab] = Verdict(nanmean([r[lab] for r in table]), None, None,
                                    "mean Kendall tau with attention over layers (no criterion)")
    res.data["table"] = table
    res.data["series"] = {lab: [r[lab] for r in table] for lab in labels}
    res.data["xlabels"] = [str(l) for l in layers]
    res.notes.append(
        "Attention = the explained position's row, heads averaged, per layer; rankings by |score| over the "
        f"attributed tokens; leave-one-out with replacement={vc.options['replacement']!r}."
    )
    means = ", ".join(f"{lab} {res.verdicts[lab].value:.2f}" for lab in labels)
    res.data["reading"] = (
        f"Kendall tau between attention and each ranking, mean over layers: {means}. Near 0 means attention "
        "orders the tokens unlike the method; Jain & Wallace report weak, often insignificant correlations."
    )
    res.notes.append(res.data["reading"])
    return res


@_guarded
def run_permutation(vc: VContext) -> CheckResult:
    res = CheckResult("attention_permutation")
    layers = _layers(vc)
    n_perm = vc.options["n_permutations"]
    if isinstance(n_perm, bool) or not isinstance(n_perm, int) or n_perm < 1:
        raise InputError(f"n_permutations must be a positive integer, got {n_perm!r}.")
    a = vc.adapter
    per: dict[int, list[float]] = {l: [] for l in layers}
    for item in vc.items:
        P = item.plan.tokens.shape[-1]
        positions = sorted(set(item.plan.positions))
        for l in layers:
            g = torch.Generator(device="cpu").manual_seed(vc.seed * 7919 + 101 * item.index + l)
            perms = causal_permutations(n_perm, a.n_heads, P, g)
            d = permutation_tvd(a, item.plan.tokens, positions, l, perms)
            per[l] += d.tolist()
            res.add(None, "median_tvd", statistics.median(d.tolist()), layer=l, prompt=item.index)
    table = []
    for l in layers:
        med, mx = statistics.median(per[l]), max(per[l])
        table.append({"layer": l, "median_tvd": med, "max_tvd": mx})
        res.add(None, "median_tvd", med, layer=l)
        res.add(None, "max_tvd", mx, layer=l)
    res.data["table"] = table
    res.data["series"] = {"median TVD": [r["median_tvd"] for r in table], "max TVD": [r["max_tvd"] for r in table]}
    res.data["xlabels"] = [str(l) for l in layers]
    worst = max(table, key=lambda r: r["median_tvd"])
    least = min(table, key=lambda r: r["median_tvd"])
    res.data["reading"] = (
        f"Permuting one layer's attention (every head and row, among allowed positions; {n_perm} permutations "
        f"x {len(vc.items)} prompts) moves the next-token distribution by a median TVD of {least['median_tvd']:.3g} "
        f"(layer {least['layer']}) to {worst['median_tvd']:.3g} (layer {worst['layer']}). Small values mean the "
        "output hardly depends on which token got which weight, so that layer's attention cannot be read as "
        "the reason for the prediction."
    )
    res.notes.append(res.data["reading"])
    return res


@_guarded
def run_adversarial(vc: VContext) -> CheckResult:
    res = CheckResult("attention_adversarial")
    layers = _layers(vc)
    o = vc.options
    eps, steps, lr = o["adversarial_epsilon"], o["adversarial_steps"], o["adversarial_lr"]
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1):
        raise InputError(f"adversarial_epsilon is a TVD in (0, 1), got {eps!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"adversarial_steps must be a positive integer, got {steps!r}.")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise InputError(f"adversarial_lr must be a number > 0, got {lr!r}.")
    per: dict[int, list[float]] = {l: [] for l in layers}
    for item in vc.items:
        positions = sorted(set(item.plan.positions))
        for l in layers:
            g = torch.Generator(device="cpu").manual_seed(vc.seed * 7919 + 101 * item.index + l)
            out = adversarial_attention(vc.adapter, item.plan.tokens, positions, l, eps=float(eps), steps=steps,
                                        lr=float(lr), generator=g)
            per[l].append(out["js_divergence"])
            res.add(None, "max_js_divergence", out["js_divergence"], layer=l, prompt=item.index)
            res.add(None, "js_distance", out["js_distance"], layer=l, prompt=item.index)
            res.add(None, "tvd_at_best", out["tvd"], layer=l, prompt=item.index)
    table = []
    for l in layers:
        table.append({"layer": l, "median_max_js_divergence": statistics.median(per[l]), "max_js_divergence": max(per[l]),
                      "js_distance": math.sqrt(max(per[l]))})
        res.add(None, "median_max_js_divergence", table[-1]["median_max_js_divergence"], layer=l)
    res.data["table"] = table
    res.data["series"] = {"median max JSD": [r["median_max_js_divergence"] for r in table]}
    res.data["xlabels"] = [str(l) for l in layers]
    best = max(table, key=lambda r: r["max_js_divergence"])
    res.data["reading"] = (
        f"Within TVD <= {eps} of the original output, attention rows of the explained position were found with a "
        f"JS divergence up to {best['max_js_divergence']:.3g} bits (JS distance {best['js_distance']:.3g}) from the "
        f"original at layer {best['layer']} ({steps} Adam steps). Values near 1 mean a very different attention "
        "gives the same prediction (Jain & Wallace); near 0, the output pins the attention down."
    )
    res.notes.append(res.data["reading"])
    return res
