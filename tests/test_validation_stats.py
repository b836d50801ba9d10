"""Rank statistics of mechattr.validation against scipy and brute-force definitions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mechattr.validation.stats import kendall, rankdata, spearman, top_k_intersection, top_k_jaccard


def brute_ranks(x: list[float]) -> list[float]:
    out = []
    for v in x:
        positions = [i + 1 for i, w in enumerate(sorted(x)) if w == v]
        out.append(sum(positions) / len(positions))
    return out


def brute_pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return num / den


def brute_tau_b(a: list[float], b: list[float]) -> float:
    c = d = ta = tb = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        sa = (a[i] > a[j]) - (a[i] < a[j])
        sb = (b[i] > b[j]) - (b[i] < b[j])
        if sa == 0:
            ta += 1
        if sb == 0:
            tb += 1
        if sa * sb > 0:
            c += 1
        elif sa * sb < 0:
            d += 1
    n0 = len(a) * (len(a) - 1) // 2
    return (c - d) / math.sqrt((n0 - ta) * (n0 - tb))


CASES = [
    ([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0, 7.0]),
    ([1.0, 1.0, 2.0, 3.0, 3.0, 3.0], [0.5, 0.1, 0.1, 0.9, 0.2, 0.2]),  # ties on both sides
    ([0.3, -1.2, 0.0, 2.5, 0.0, 1.1, -0.4], [1.0, 0.0, 1.0, 2.0, -3.0, 1.0, 0.5]),
]


@pytest.mark.parametrize("a,b", CASES)
def test_ranks_spearman_kendall_match_definitions(a, b):
    assert rankdata(torch.tensor(a)).tolist() == brute_ranks(a)
    sp = float(spearman(torch.tensor(a), torch.tensor(b)))
    assert sp == pytest.approx(brute_pearson(brute_ranks(a), brute_ranks(b)), abs=1e-12)
    kt = float(kendall(torch.tensor(a), torch.tensor(b)))
    assert kt == pytest.approx(brute_tau_b(a, b), abs=1e-12)


def test_against_scipy_random_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")  # installed in both lanes; brute force above covers the definition
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 12), generator=g).double()
    b = torch.randn(4, 12, generator=g, dtype=torch.float64).round()
    sp, kt = spearman(a, b), kendall(a, b)
    for r in range(4):
        assert float(sp[r]) == pytest.approx(scipy_stats.spearmanr(a[r], b[r]).statistic, abs=1e-10)
        assert float(kt[r]) == pytest.approx(scipy_stats.kendalltau(a[r], b[r]).statistic, abs=1e-10)
        assert rankdata(a[r]).tolist() == pytest.approx(scipy_stats.rankdata(a[r]).tolist())


def test_constant_input_is_nan_not_zero():
    assert math.isnan(float(spearman(torch.ones(5), torch.arange(5.0))))
    assert math.isnan(float(kendall(torch.arange(5.0), torch.zeros(5))))


def test_top_k_overlap():
    a = torch.tensor([0.1, -5.0, 3.0, 0.2, 0.0])
    b = torch.tensor([4.0, 0.0, -3.0, 0.1, 0.0])
    # top-2 by magnitude: a -> {1, 2}; b -> {0, 2}
    assert top_k_intersection(a, b, 2) == 0.5
    assert top_k_jaccard(a, b, 2) == pytest.approx(1 / 3)
    assert top_k_intersection(a, a, 3) == 1.0
