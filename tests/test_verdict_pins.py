"""Verdict thresholds pinned with fakes between the right threshold and a plausible wrong one
(issue 19, tests bullet 2): the randomization check must use |scores| as well as signed scores, and
the deletion check's random bar is mean + margin std (not mean - std, not the mean)."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.contract import MethodOutput
from mechattr.validation.perturbation_curves import deletion_bars

PROMPTS = ["The quick brown fox jumps over the lazy dog because it", "When Mary and John went to the store, John gave"]


def sign_from_weights(ctx):
    """|score| = position (weight-independent), sign = sign of the token's embedding sum (changes
    when the embeddings are re-initialised): signed Spearman after randomization is low, the
    Spearman of |scores| stays 1, so the method is NOT sensitive to the weights in magnitude."""
    emb = ctx.adapter.embed(ctx.plan.tokens)[0].sum(-1)
    s = torch.arange(1, ctx.n_pos + 1, dtype=torch.float32) * torch.sign(emb).float()
    return MethodOutput(s[None].repeat(ctx.plan.n_rows, 1).masked_fill(~ctx.free, 0.0))


def test_randomization_fails_a_method_whose_magnitudes_ignore_the_weights(tiny_model):
    rep = ma.validate(tiny_model, PROMPTS, methods=[sign_from_weights], checks=["randomization"],
                      randomization=("cascading",), seed=0, quiet=True)
    last = rep.checks["randomization"].data["curves"]["cascading"][-1][1]["sign_from_weights"]
    thr = rep.verdict("randomization", "sign_from_weights").threshold
    assert last["spearman"] < thr  # a signed-only criterion would pass it
    assert last["spearman_abs"] == pytest.approx(1.0)
    v = rep.verdict("randomization", "sign_from_weights")
    assert v.passed is False and v.value == pytest.approx(1.0)


def _summary(mu, sd, controls):
    s = {"random": {"aopc": mu}, "random ± std": {"aopc": sd}}
    s.update({c: {"aopc": v} for c, v in controls.items()})
    return s


@pytest.mark.parametrize("value, passes", [(2.2, False), (2.49, False), (2.51, True), (1.9, False)])
def test_deletion_random_bar_is_mean_plus_margin_std(value, passes):
    # random 2.0 +- 0.5: mean - std = 1.5, mean = 2.0, mean + std = 2.5; controls far below
    bars = deletion_bars(_summary(2.0, 0.5, {"frequency": 0.1, "position": 0.2, "recency": 0.3}), margin=1.0)
    assert bars["random"] == pytest.approx(2.5)
    assert (value > max(bars.values())) is passes
    assert deletion_bars(_summary(2.0, 0.5, {"frequency": 0.1, "position": 0.2, "recency": 0.3}), 2.0)["random"] == pytest.approx(3.0)


def test_deletion_bars_include_every_control():
    bars = deletion_bars(_summary(1.0, 0.1, {"frequency": 0.5, "position": 3.0, "recency": 0.7}), margin=1.0)
    assert set(bars) == {"random", "frequency", "position", "recency"}
    assert max(bars.values()) == 3.0  # a method at 2.0 beats random (1.1) but not the position prior
