"""Circuit selection: budgets never exceed their fraction, the greedy ranking follows its
definition, ``fill`` spends the budget that pruning frees, and batched faithfulness equals the
one-circuit call."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mechattr as ma
from mechattr.circuits.select import prune

from .conftest import model_unchanged

CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"
TGT, FOIL = " Paris", " Rome"


@pytest.fixture(scope="module")
def eap(tiny_model: Any) -> Any:
    return ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, TGT, contrast=FOIL, method="eap")


def reference_greedy(graph: Any, scores: torch.Tensor) -> list[tuple[int, int]]:
    """EAP-IG / MIB greedy, written from its definition: the circuit starts at the logits; the
    next edge is the highest-|score| edge not yet taken whose reader belongs to the logits or to a
    node that is already the writer of a taken edge."""
    taken: list[tuple[int, int]] = []
    in_circuit = {"logits"}
    cand = graph.mask.nonzero().tolist()
    while len(taken) < len(cand):
        best = None
        for w, r in cand:
            if (w, r) in taken:
                continue
            if not any(n in in_circuit for n in graph.reader_nodes(r)):
                continue
            key = (-abs(float(scores[w, r])), w, r)
            if best is None or key < best:
                best = key
        assert best is not None
        taken.append((best[1], best[2]))
        in_circuit.add(graph.writers[best[1]])
    return taken


def test_greedy_ranking_follows_its_definition(eap: Any) -> None:
    g = eap.graph
    order = [tuple(x) for x in ma.circuits.select.ranking(g, eap.scores, mode="greedy").tolist()]
    ref = reference_greedy(g, eap.scores)
    assert len(order) == g.n_edges and order == ref  # ties broken by (writer, reader) in both
    top = [tuple(x) for x in ma.circuits.select.ranking(g, eap.scores, mode="topn").tolist()]
    vals = [abs(float(eap.scores[w, r])) for w, r in top]
    assert vals == sorted(vals, reverse=True) and len(set(top)) == g.n_edges


def test_budget_is_at_most_its_fraction(eap: Any) -> None:
    g = eap.graph
    for b in (0.001, 0.01, 0.05, 0.1, 0.37, 1.0):
        n = ma.circuits.select.n_for_budget(g, b, None)
        assert n == max(1, int(b * g.n_edges + 1e-9)) and n <= max(1, b * g.n_edges)
        assert int(ma.circuits.select_edges(g, eap.scores, budget=b).sum()) <= n


@pytest.mark.parametrize("mode", ["greedy", "topn"])
def test_fill_takes_the_longest_prefix_whose_pruned_circuit_fits(eap: Any, mode: str) -> None:
    g = eap.graph
    order = ma.circuits.select.ranking(g, eap.scores, mode=mode).tolist()
    grew = False
    for n in (2, 3, 5, 8, 13, 21):
        # reference: prune every prefix, keep the longest whose pruned circuit has <= n edges
        best = None
        for k in range(1, len(order) + 1):
            m = torch.zeros_like(g.mask)
            for w, r in order[:k]:
                m[w, r] = True
            pm = prune(g, m)
            if int(pm.sum()) <= n:
                best = pm
        assert best is not None
        got = ma.circuits.select_edges(g, eap.scores, n_edges=n, mode=mode)
        assert torch.equal(got, best)
        plain = ma.circuits.select_edges(g, eap.scores, n_edges=n, mode=mode, fill=False)
        assert bool((plain <= got).all())  # fill only adds edges
        grew |= int(got.sum()) > int(plain.sum())
    assert grew  # on this model pruning does drop edges, so fill matters


def test_faithfulness_many_equals_one_at_a_time(tiny_model: Any, eap: Any) -> None:
    circuits = [eap.circuit(n_edges=n) for n in (1, 4, 10, 30)] + [eap.graph.edge_list(), []]
    with model_unchanged(tiny_model):
        many = ma.circuits.faithfulness_many(tiny_model, circuits, CLEAN, CORRUPT, TGT, contrast=FOIL, batch_size=4)
    one = [ma.circuits.faithfulness(tiny_model, c, CLEAN, CORRUPT, TGT, contrast=FOIL).f for c in circuits]
    assert torch.allclose(many, torch.tensor(one, dtype=many.dtype), atol=1e-4)  # float32, batch 4 vs 1
    assert abs(float(many[-2]) - 1) <= 1e-4 and abs(float(many[-1])) <= 1e-4
    with pytest.raises(ma.errors.MechattrError):
        ma.circuits.faithfulness_many(tiny_model, [], CLEAN, CORRUPT, TGT, contrast=FOIL)
    with pytest.raises(ma.errors.MechattrError):
        ma.circuits.enumerate_circuits(eap.graph, 0)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_stacked_eap_equals_pair_by_pair(tiny_model: Any, direction: str) -> None:
    """eap stacks pairs of one token length into one pass; batch_size=1 runs them one by one."""
    clean = [CLEAN, "The capital of Spain is", "The old capital of France is", "The capital of Egypt is"]
    corrupt = [CORRUPT, "The capital of Japan is", "The old capital of Italy is", "The capital of Chile is"]
    kw: dict[str, Any] = {"contrast": FOIL, "method": "eap", "direction": direction, "keep_patterns": False}
    with model_unchanged(tiny_model):
        one = ma.circuits.edge_attribution(tiny_model, clean, corrupt, TGT, batch_size=1, **kw)
        many = ma.circuits.edge_attribution(tiny_model, clean, corrupt, TGT, batch_size=3, **kw)
    scale = float(one.scores.abs().max())
    assert float((one.scores - many.scores).abs().max()) <= 1e-5 * scale
    assert one.diagnostics["metric_clean_per_pair"] == pytest.approx(many.diagnostics["metric_clean_per_pair"], abs=1e-5)
    assert one.diagnostics["metric_corrupt_per_pair"] == pytest.approx(many.diagnostics["metric_corrupt_per_pair"], abs=1e-5)
    groups = ma.circuits._core.stackable(
        ma.circuits._core.resolve_pairs(ma.as_adapter(tiny_model), clean, corrupt, TGT, FOIL, None), 3)
    assert sorted(len(g) for g in groups) in ([1, 3], [1, 1, 2], [2, 2], [4]) and max(len(g) for g in groups) <= 3
    assert any(len(g) > 1 for g in groups)  # something was stacked
