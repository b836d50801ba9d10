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
import random
from typing import Any

import pytest
import torch

import mechattr as ma
from mechattr.circuits.select import prune

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
    with_null = [c | null for c in rest[-6:]]
    checks = loose + [prune(g, m) for m in loose] + with_null + rest[-6:]
    with model_unchanged(zoo):
        fc = ma.circuits.faithfulness_many(zoo, checks, pairs, kind="logit")
        f = ma.circuits.faithfulness_many(zoo, rest, pairs, kind="logit")
    assert torch.allclose(fc[:12], fc[12:24], atol=1e-5)
    assert torch.allclose(fc[24:30], fc[30:36], atol=1e-5)
    assert any(not bool((prune(g, m) == m).all()) for m in loose)

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
