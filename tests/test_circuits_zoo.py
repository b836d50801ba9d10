"""The circuit of zoo:induction.

Issue #15 asked that the circuit found at <= 5 % of the edges recover >= 0.9 of the metric. On this
model that is unattainable: an exhaustive search over every circuit of at most 5 edges (5 % of
110) tops out at f = 0.606 (scripts/circuits_induction_optimum.py; docs/circuits.md). So these tests
check instead that (a) the exhaustive optimum is below 0.9, (b) the circuit EAP-IG finds at 5 %
reaches that optimum, (c) the smallest circuit EAP-IG finds with f >= 0.9, and that the found circuit
holds the previous-token head -> induction head key edge, both heads identified by exact patching.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file

import mechattr as ma
from mechattr.circuits.select import prune
from mechattr.zoo import model_dir

from .conftest import model_unchanged

BUDGET = 0.05


def induction_pairs(n: int, seed: int = 0) -> list[ma.circuits.tasks.Pair]:
    """Clean: x0 .. x_{L-1} x_k -> x_{k+1}. Corrupt: the earlier occurrence x_k replaced by a
    syllable that appears nowhere else, so there is nothing to copy (same length)."""
    return ma.circuits.tasks.zoo_pairs("induction", n, seed=seed)


@pytest.fixture(scope="module")
def zoo() -> Any:
    return ma.load_model("zoo:induction")


@pytest.fixture(scope="module")
def pairs() -> list[ma.circuits.tasks.Pair]:
    return induction_pairs(8)


@pytest.fixture(scope="module")
def found(zoo: Any, pairs: list) -> dict[str, Any]:
    L = zoo.cfg.n_layers
    H = zoo.cfg.n_heads
    assert L == 2
    with model_unchanged(zoo):
        heads1 = ma.circuits.patch(zoo, pairs, nodes=[f"a1.h{h}" for h in range(H)], kind="logit")
        ind = max(range(H), key=lambda h: heads1.effects[f"a1.h{h}"])
        prev_edges = ma.circuits.patch(zoo, pairs, edges=[(f"a0.h{h}", f"a1.h{ind}<k>") for h in range(H)], kind="logit")
        prev = max(range(H), key=lambda h: list(prev_edges.effects.values())[h])
        res = ma.circuits.edge_attribution(zoo, pairs, kind="logit", method="eap_ig_inputs", ig_steps=5)
        circuit = res.circuit(budget=BUDGET)
        f = ma.circuits.faithfulness(zoo, circuit, pairs, kind="logit")
    return {"ind": ind, "prev": prev, "circuit": circuit, "f": f.f, "n_edges": res.graph.n_edges, "res": res}


def test_induction_circuit_holds_the_previous_token_to_induction_key_edge(found: dict[str, Any]) -> None:
    ind, prev, circuit, f, n = found["ind"], found["prev"], found["circuit"], found["f"], found["n_edges"]
    print(f"\ninduction head a1.h{ind} previous-token head a0.h{prev}; "
          f"circuit {circuit} ({len(circuit)} of {n} edges) f = {f:.3f}")
    assert len(circuit) <= BUDGET * n
    assert (f"a0.h{prev}", f"a1.h{ind}<k>") in circuit
    assert f >= 0.5


# ----- an independent edge-level GPT-2, written from the checkpoint ---------------------------------
def gpt2_edge_metric(sd, tokens, corr, keep, target, n_heads=4):
    """Target logit at the last position of a GPT-2 whose reader inputs are rebuilt from its
    writers: reader r sees writer w live where keep[b, w, r], else corr[w] (the writer's value in
    the corrupt run, [W, pos, d]). Returns (metric [B], live writers [B, W, pos, d])."""
    B, W, _ = keep.shape
    H = n_heads
    wte = sd["transformer.wte.weight"]
    d = wte.shape[1]
    dh = d // H
    P = tokens.shape[0]
    L = (W - 1) // (H + 1)
    keep_t = rearrange(keep.to(wte.dtype), "b w r -> b r w")
    diff = torch.zeros(B, W, P * d, dtype=wte.dtype)  # live - corrupt, writer-major
    live = torch.zeros(B, W, P, d, dtype=wte.dtype) if B == 1 else None  # only plain runs return it
    const = sd["transformer.wpe.weight"][:P].clone()
    csum = torch.zeros(P, d, dtype=wte.dtype)
    n = 0

    def push(x):
        nonlocal n, csum
        x = x.expand(B, P, d)
        if live is not None:
            live[:, n] = x
        diff[:, n] = (x - corr[n]).reshape(B, P * d)
        csum = csum + corr[n]
        n += 1

    def inp(r0, r1):  # [B, readers, P, d]
        got = torch.bmm(keep_t[:, r0:r1, :n], diff[:, :n])
        return (const + csum) + rearrange(got, "b r (p d) -> b r p d", p=P)

    def ln(x, pre):
        return F.layer_norm(x, (d,), sd[pre + ".weight"], sd[pre + ".bias"], 1e-5)

    push(wte[tokens])
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    for l in range(L):
        pre = f"transformer.h.{l}."
        base = l * (3 * H + 1)
        x = ln(inp(base, base + 3 * H), pre + "ln_1")  # [B, 3H, P, d]: q, k, v inputs per head
        Wa = rearrange(sd[pre + "attn.c_attn.weight"], "d (i h e) -> (i h) d e", i=3, h=H)
        ba = rearrange(sd[pre + "attn.c_attn.bias"], "(i h e) -> (i h) 1 e", i=3, h=H)
        qkv = torch.matmul(x, Wa) + ba  # [B, 3H, P, dh]
        q, k, v = qkv[:, :H], qkv[:, H:2 * H], qkv[:, 2 * H:]
        a = (torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)).masked_fill(~causal, float("-inf")).softmax(-1)
        res = torch.matmul(torch.matmul(a, v), rearrange(sd[pre + "attn.c_proj.weight"], "(h e) d -> h e d", h=H))
        for h in range(H):
            push(res[:, h])
        const = const + sd[pre + "attn.c_proj.bias"]
        x = ln(inp(base + 3 * H, base + 3 * H + 1)[:, 0], pre + "ln_2")
        mid = F.gelu(x @ sd[pre + "mlp.c_fc.weight"] + sd[pre + "mlp.c_fc.bias"], approximate="tanh")
        push(mid @ sd[pre + "mlp.c_proj.weight"] + sd[pre + "mlp.c_proj.bias"])
    R = keep.shape[2]
    x = ln(inp(R - 1, R)[:, 0, -1], "transformer.ln_f")
    return x @ wte[target], live


def reference_f(model: Any, pairs: list, keeps: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """f of each circuit mask in ``keeps`` [n, W, R] (corrupt ablation, metrics averaged over the
    pairs before the ratio), computed with :func:`gpt2_edge_metric` from the safetensors file."""
    sd = load_file(str(model_dir("induction") / "model.safetensors"))
    H = model.cfg.n_heads
    ad = ma.as_adapter(model)
    W, R = keeps.shape[1:]
    mc = torch.zeros(len(keeps), dtype=torch.float64)
    mf = me = 0.0
    allk = torch.ones(1, W, R, dtype=torch.bool)
    for p in pairs:
        tc, tk = ad.tokenize(p.clean)[0], ad.tokenize(p.corrupt)[0]
        (tgt,) = ad.encode_continuation(p.target)
        zero = torch.zeros(W, len(tc), sd["transformer.wte.weight"].shape[1])
        full, _ = gpt2_edge_metric(sd, tc, zero, allk, tgt, H)
        empty, corr = gpt2_edge_metric(sd, tk, zero, allk, tgt, H)
        mf, me = mf + float(full), me + float(empty)
        for i in range(0, len(keeps), chunk):
            mc[i : i + chunk] += gpt2_edge_metric(sd, tc, corr[0], keeps[i : i + chunk], tgt, H)[0].double()
    n = len(pairs)
    return (mc / n - me / n) / (mf / n - me / n)


def _null_edges(graph: Any) -> torch.Tensor:
    """Edges that cannot matter in these pairs: the metric is read at the last position, where
    the clean and corrupt prompts hold the same token, and the readers below see the input only
    there (a last-layer head's query, the last MLP, the logits). Keeping such an edge passes the
    clean embedding where the ablation passes the (identical) corrupt one."""
    L = graph.n_layers - 1
    names = [("input", f"a{L}.h{h}<q>") for h in range(graph.n_heads)] + [("input", f"m{L}"), ("input", "logits")]
    return graph.edge_mask(names)


def test_no_circuit_of_5_percent_of_the_edges_recovers_90_percent(zoo: Any, pairs: list, found: dict[str, Any]) -> None:
    """(a) Exhaustive: the best circuit of at most 5 edges (5 % of 110) has f < 0.9, so the issue's
    criterion cannot be met on this model; (b) the found circuit reaches that optimum."""
    g = ma.circuits.graph(zoo)
    n_max = int(BUDGET * g.n_edges)
    assert n_max == 5

    # enumerate_circuits yields exactly the pruning-closed circuits: checked against brute force
    # over every set of at most 2 edges (6,105 sets)
    edges = g.mask.nonzero().tolist()
    brute = set()
    for k in (1, 2):
        for sub in itertools.combinations(edges, k):
            m = torch.zeros_like(g.mask)
            for w, r in sub:
                m[w, r] = True
            pm = prune(g, m)
            if bool(pm.any()):
                brute.add(tuple(pm.flatten().nonzero().flatten().tolist()))
    enum2 = {tuple(c.flatten().nonzero().flatten().tolist()) for c in ma.circuits.enumerate_circuits(g, 2)}
    assert enum2 == brute

    null = _null_edges(g)
    closed = ma.circuits.enumerate_circuits(g, n_max)
    assert len(closed) == 17722
    rest = [c for c in closed if not bool((c & null).any())]
    assert len(rest) == 13015

    # the two facts that make the search exhaustive, checked on this data: (1) a circuit and its
    # pruned version have the same f (so closed circuits suffice); (2) null edges change nothing
    # (so a closed circuit holding one does no better than a smaller one without it)
    rng = random.Random(0)
    loose = []
    for _ in range(12):
        m = torch.zeros_like(g.mask)
        for w, r in rng.sample(edges, 5):
            m[w, r] = True
        loose.append(m)
    assert any(not bool((prune(g, m) == m).all()) for m in loose)
    sample = rng.sample(rest, 24)
    checks = loose + [prune(g, m) for m in loose] + [c | null for c in sample] + sample
    fc = reference_f(zoo, pairs, torch.stack(checks))
    assert torch.allclose(fc[:12], fc[12:24], atol=1e-5)
    assert torch.allclose(fc[24:48], fc[48:72], atol=1e-5)
    # the reference is mechattr's faithfulness, computed independently (agree to float32 noise)
    with model_unchanged(zoo):
        mine = ma.circuits.faithfulness_many(zoo, checks, pairs, kind="logit")
    assert torch.allclose(mine, fc, atol=1e-4)

    f = reference_f(zoo, pairs, torch.stack(rest))
    best = int(f.argmax())
    opt = float(f[best])
    opt_circuit = sorted(f"{g.writers[w]}->{g.readers[r]}" for w, r in rest[best].nonzero().tolist())
    print(f"\nbest circuit of <= {n_max} edges: f = {opt:.4f} {opt_circuit}; found: f = {found['f']:.4f}")
    assert opt < 0.9  # (a) the criterion is unattainable on this model (measured 0.606)
    assert opt > 0.5  # the search is not vacuous: two of the three induction heads fit in 5 edges
    assert found["f"] >= 0.95 * opt  # (b) measured: the found circuit is the optimum (ratio 1.000)


def test_smallest_found_circuit_with_90_percent(zoo: Any, pairs: list, found: dict[str, Any]) -> None:
    """(c) The smallest circuit EAP-IG finds that recovers >= 0.9: measured 18 edges (16 %)."""
    g = found["res"].graph
    circuits = [ma.circuits.select_edges(g, found["res"].scores, n_edges=n) for n in range(1, 31)]
    sizes = [int(c.sum()) for c in circuits]
    assert all(s <= n for s, n in zip(sizes, range(1, 31)))  # a circuit never exceeds its budget
    with model_unchanged(zoo):
        f = ma.circuits.faithfulness_many(zoo, circuits, pairs, kind="logit").tolist()
    first = next(i for i, v in enumerate(f) if v >= 0.9)
    print(f"\nf by edges: {[round(v, 3) for v in f]}; first >= 0.9 at {sizes[first]} edges")
    assert sizes[first] > int(BUDGET * g.n_edges)  # consistent with the exhaustive optimum
    assert sizes[first] <= 20  # measured 18 edges (16 % of 110)
