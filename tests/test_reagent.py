"""ReAGent (Zhao & Shan 2024): importance from replacing random token subsets with model-proposed
alternatives. Checked on targets whose per-token effects are known in closed form."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.errors import MethodError

from .conftest import model_unchanged

TEXT = "The quick brown fox jumps over"  # BOS + 6 tokens
LONG = "The quick brown fox jumps over the lazy dog"  # BOS + 9 tokens
FAST = {"num_probes": 8, "min_probe_steps": 2, "max_probe_steps": 4}


def additive_target(model, text, c):
    """f = sum_i c_i [token i is the original one]: replacing a set R lowers f by sum_{i in R} c_i."""
    orig = ma.as_adapter(model).tokenize(text)[0].clone()

    def fn(logits, tokens):
        return ((tokens == orig[None]).float() * c[None]).sum(-1) + 0 * logits[:, -1, 0]

    return ma.FunctionTarget(fn)


def test_recovers_per_token_effects_of_an_additive_target(tiny_model):
    c = torch.tensor([0.0, 1.5, -0.5, 0.25, 2.0, -1.0, 0.75])
    res = ma.attribute(
        tiny_model, TEXT, additive_target(tiny_model, TEXT, c), method="reagent",
        num_probes=16, min_probe_steps=3, max_probe_steps=3,
    )
    torch.testing.assert_close(res.scores[0], c, atol=1e-5, rtol=0)
    # A function target has no target token: no top-k stopping, all steps run.
    assert res.diagnostics["steps"] == [3]
    assert res.diagnostics["replaced_per_probe"] == 2  # round(0.3 * 6)


def test_replacing_everything_spreads_the_drop_evenly(tiny_model):
    c = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0, 0.5, 0.5])
    res = ma.attribute(
        tiny_model, TEXT, additive_target(tiny_model, TEXT, c), method="reagent",
        replacing_ratio=1.0, num_probes=4, min_probe_steps=1, max_probe_steps=1,
    )
    want = torch.full((7,), float(c.sum()) / 6)
    want[0] = 0
    torch.testing.assert_close(res.scores[0], want, atol=1e-5, rtol=0)


def test_token_target_stops_once_top_tokens_keep_the_prediction(tiny_model):
    res = ma.attribute(tiny_model, LONG, method="reagent", keep_top_n=3, num_probes=8,
                       min_probe_steps=2, max_probe_steps=15)
    d = res.diagnostics
    assert d["stopping_condition"] == "top-k"
    assert d["stopped"] == [True] and 2 <= d["steps"][0] < 15
    # The last token dominates a random tiny model's next-token prediction; ReAGent finds it.
    assert int(res.scores[0].abs().argmax()) == len(res.tokens) - 1


def test_seeded_and_batch_invariant(tiny_model):
    a = ma.attribute(tiny_model, TEXT, method="reagent", seed=5, **FAST)
    b = ma.attribute(tiny_model, TEXT, method="reagent", seed=5, batch_size=3, **FAST)
    c = ma.attribute(tiny_model, TEXT, method="reagent", seed=6, **FAST)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert a.diagnostics["steps"] == b.diagnostics["steps"]
    assert not torch.allclose(a.scores, c.scores)


def test_multiple_target_rows_share_probes(tiny_model):
    res = ma.attribute(tiny_model, TEXT, ma.ForcedContinuation(" the lazy"), method="reagent", **FAST)
    assert res.scores.shape == (2, len(res.tokens))
    assert len(res.diagnostics["steps"]) == 2
    # Row 0 reads before the continuation token, which cannot affect it (a causal model): only
    # fit noise from the other tokens' interactions lands there.
    assert abs(float(res.scores[0, -1])) < 0.1 * float(res.scores[0].abs().max())


def test_replacer_model(tiny_model, tiny_bridge):
    with torch.no_grad():
        tiny_bridge(ma.as_adapter(tiny_bridge).tokenize("warm up"))
    a = ma.attribute(tiny_model, TEXT, method="reagent", **FAST)
    with model_unchanged(tiny_model), model_unchanged(tiny_bridge):
        b = ma.attribute(tiny_model, TEXT, method="reagent", replacer_model=tiny_bridge, **FAST)
    # Same weights, so the same proposals and the same scores.
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert a.params["replacer_model"] == "self" and isinstance(b.params["replacer_model"], str)
    with pytest.raises(MethodError, match="replacer_model"):
        ma.attribute(tiny_model, TEXT, method="reagent", replacer_model="roberta-base", **FAST)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"replacing_ratio": 0}, "replacing_ratio"),
        ({"replacing_ratio": 1.5}, "replacing_ratio"),
        ({"replacing_ratio": True}, "replacing_ratio"),
        ({"keep_top_n": 0}, "keep_top_n"),
        ({"num_probes": 0}, "num_probes"),
        ({"max_probe_steps": 0}, "max_probe_steps"),
        ({"min_probe_steps": 5, "max_probe_steps": 2}, "min_probe_steps"),
        ({"stop_top_k": 0}, "stop_top_k"),
        ({"n_steps": 3}, "no parameter"),
    ],
)
def test_bad_parameters(tiny_model, params, match):
    with model_unchanged(tiny_model), pytest.raises(MethodError, match=match):
        ma.attribute(tiny_model, TEXT, method="reagent", **params)
