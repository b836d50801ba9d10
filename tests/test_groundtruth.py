"""Ground-truth scoring: the metrics against brute force, determinism, and that IG beats a random
ranking on the zoo tasks whose answer is carried by a single token."""

from __future__ import annotations

import itertools

import pytest
import torch

import mechattr as ma
from mechattr import groundtruth as gt
from mechattr import zoo


class _Models(dict):
    def __missing__(self, task: str):
        self[task] = ma.load_model(f"zoo:{task}")
        return self[task]


@pytest.fixture(scope="module")
def zoo_models() -> dict:
    return _Models()


def _brute(scores: list[float], truth: set[int]) -> tuple[float, float, float]:
    # Sort by descending score; among equal scores non-truth tokens come first (pessimistic).
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i in truth))
    best = next(r for r, i in enumerate(order, 1) if i in truth)
    total = sum(abs(s) for s in scores)
    mass = sum(abs(scores[i]) for i in truth) / total if total else 0.0
    return float(best == 1), 1 / best, mass


def test_rank_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 9, (1,), generator=g))
        s = torch.randint(-3, 4, (n,), generator=g).float()  # many ties on purpose
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        truth = set(torch.randperm(n, generator=g)[:k].tolist())
        got = gt.rank_metrics(s, sorted(truth))
        assert got == pytest.approx(_brute(s.tolist(), truth))
    assert gt.rank_metrics(torch.tensor([0.0, 3.0, -5.0]), [2], rank_by="abs")[:2] == (1.0, 1.0)
    assert gt.rank_metrics(torch.tensor([0.0, 3.0, -5.0]), [2])[:2] == (0.0, 1 / 3)


@pytest.mark.parametrize("m,k", [(5, 1), (6, 2), (7, 3), (4, 4)])
def test_random_expectation_is_exact(m, k):
    # average over every permutation of ranks
    tops, rrs = [], []
    for perm in itertools.permutations(range(m)):
        ranks = [perm[i] + 1 for i in range(k)]  # the truth tokens are 0..k-1
        tops.append(float(min(ranks) == 1))
        rrs.append(1 / min(ranks))
    top, mrr, mass = gt.random_expectation(m, k)
    assert top == pytest.approx(sum(tops) / len(tops))
    assert mrr == pytest.approx(sum(rrs) / len(rrs))
    assert mass == pytest.approx(k / m)


def test_score_is_deterministic(zoo_models):
    a = gt.score(zoo_models["recall"], "smoothgrad", "recall", n=6, seed=3, n_samples=4)
    b = gt.score(zoo_models["recall"], "smoothgrad", "recall", n=6, seed=3, n_samples=4)
    assert a == b
    c = gt.score(zoo_models["recall"], "smoothgrad", "recall", n=6, seed=4, n_samples=4)
    assert c != a


def _random_ranking_top1(task, n, seed) -> float:
    """A random-ranking baseline by simulation, independent of gt.random_expectation."""
    g = torch.Generator().manual_seed(seed)
    hits = []
    for ex in zoo.get_task(task).examples(n, seed=seed):
        s = torch.rand(len(ex.words), generator=g)
        hits.append(int(s.argmax()) in ex.truth)
    return sum(hits) / len(hits)


@pytest.mark.parametrize("task", ["agreement", "induction", "recall"])
def test_ig_beats_random_ranking(zoo_models, task):
    res = gt.score(zoo_models[task], "ig", task, n=25, seed=0, n_steps=20)
    base = _random_ranking_top1(task, 400, 0)
    assert res["top1"] >= base + 0.3, (res, base)
    assert res["mrr"] > res["random_mrr"] and res["mass"] > res["random_mass"]
    assert res["random_top1"] == pytest.approx(base, abs=0.08)
    for k in ("top1", "mrr", "mass"):
        assert 0.0 <= res[k] <= 1.0


def test_score_errors(zoo_models):
    with pytest.raises(ma.InputError, match="foil"):
        gt.score(zoo_models["recall"], "ig", "recall", n=2, contrast=True)
    with pytest.raises(ma.InputError, match="task"):
        gt.score(zoo_models["recall"], "ig", "nope", n=2)
    with pytest.raises(ma.MethodError):
        gt.score(zoo_models["recall"], "no_such_method", "recall", n=2)
    with pytest.raises(ma.InputError):
        gt.score(zoo_models["recall"], "ig", "recall", n=0)
