"""Property tests (hypothesis): completeness and batch invariance on random prompts."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mechattr as ma

WORDS = ["the", " cat", " sat", " on", " a", " mat", " and", " then", " ran", " away", " quickly", " home", ","]
prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7).map("".join).filter(lambda s: s.strip() != "")
SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(text=prompts, kind=st.sampled_from(["log_prob", "prob", "logit"]))
def test_ig_is_complete_with_many_steps(tiny_model, text, kind):
    res = ma.attribute(tiny_model, text, method="ig", n_steps=128, kind=kind)
    d = res.diagnostics
    delta = abs(d["f_input"][0] - d["f_baseline"][0])
    assert d["completeness_error"] <= 1e-3 * max(delta, 1e-3)
    assert abs(float(res.scores.sum()) - (d["f_input"][0] - d["f_baseline"][0])) <= 1e-3 * max(delta, 1e-3) + 1e-5


@SETTINGS
@given(text=prompts, bs=st.integers(1, 9))
def test_ig_independent_of_batch_split(tiny_model, text, bs):
    a = ma.attribute(tiny_model, text, method="ig", n_steps=9, batch_size=bs)
    b = ma.attribute(tiny_model, text, method="ig", n_steps=9, batch_size=9)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)


@SETTINGS
@given(text=prompts)
def test_word_aggregation_preserves_totals(tiny_model, text):
    res = ma.attribute(tiny_model, text, method="ixg")
    w = res.aggregate("words")
    assert "".join(w.tokens) == "".join(res.tokens)
    torch.testing.assert_close(w.scores.sum(-1), res.scores.sum(-1))
