"""ERASER comprehensiveness and sufficiency as DeYoung et al. 2020 define them (issue 19, item 13):
probability of the target token, bins of 1, 5, 10, 20 and 50 % of the tokens, averaged over the
bins -- checked against a deletion written here with plain token replacement; mechattr's own
target-unit variant stays under its old names."""

from __future__ import annotations

import math

import pytest
import torch

import mechattr as ma

PROMPT = "The quick brown fox jumps over the lazy dog because it"


@pytest.fixture(scope="module")
def report(tiny_model):
    return ma.validate(tiny_model, [PROMPT], methods=["input_x_gradient"], checks=["perturbation"],
                       n_random=2, seed=0, quiet=True)


def test_eraser_in_probability_units_at_the_papers_bins(report, tiny_model):
    adapter, plan, _ = ma.resolve(tiny_model, PROMPT)
    s = ma.attribute(tiny_model, PROMPT, method="input_x_gradient").token_scores(0)
    removable = list(range(1, len(s)))  # BOS stays
    order = sorted(removable, key=lambda p: (-float(s[p]), p))
    n = len(removable)
    toks = plan.tokens
    with torch.no_grad():
        emb = adapter.embed(toks)
        p_full = math.exp(float(plan.evaluate(adapter, toks)[0, 0]))
        comp, suff = {}, {}
        for pct in (1, 5, 10, 20, 50):
            k = max(1, math.ceil(pct / 100 * n))
            gone = emb.clone()
            gone[0, order[:k]] = 0.0  # GPT-2's replacement is the zero embedding (see test_validation)
            kept = emb.clone()
            kept[0, order[k:]] = 0.0
            comp[pct] = p_full - math.exp(float(plan.evaluate(adapter, toks, gone)[0, 0]))
            suff[pct] = p_full - math.exp(float(plan.evaluate(adapter, toks, kept)[0, 0]))
    for pct in comp:
        got_c = report.value("perturbation", "input_x_gradient", f"eraser_comprehensiveness@{pct}%", prompt=0, row=0)
        got_s = report.value("perturbation", "input_x_gradient", f"eraser_sufficiency@{pct}%", prompt=0, row=0)
        assert got_c == pytest.approx(comp[pct], abs=1e-6)
        assert got_s == pytest.approx(suff[pct], abs=1e-6)
    assert report.value("perturbation", "input_x_gradient", "eraser_comprehensiveness", prompt=0, row=0) == pytest.approx(
        sum(comp.values()) / 5, abs=1e-6
    )
    assert report.value("perturbation", "input_x_gradient", "eraser_sufficiency", prompt=0, row=0) == pytest.approx(
        sum(suff.values()) / 5, abs=1e-6
    )
    # the target-unit variant is a different number (log-prob differences at ks)
    tu = report.value("perturbation", "input_x_gradient", "comprehensiveness@1", prompt=0, row=0)
    assert tu != pytest.approx(comp[1], abs=1e-6)
    assert any("DeYoung" in n for n in report.checks["perturbation"].notes)


def test_eraser_is_nan_without_a_probability(tiny_model):
    rep = ma.validate(tiny_model, [PROMPT], methods=["saliency"], checks=["perturbation"], kind="logit",
                      n_random=2, seed=0, quiet=True)
    v = rep.value("perturbation", "saliency", "eraser_comprehensiveness", prompt=0, row=0)
    assert v != v
    assert any("not a log-prob or probability" in n for n in rep.checks["perturbation"].notes)
