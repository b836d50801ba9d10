"""Gradient methods against a plain-autograd reference on the Hugging Face model itself
(no TransformerLens, no hooks, no batching), plus completeness and batch invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechattr as ma
from mechattr.tl.loading import cache_dir

from .conftest import model_unchanged

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def hf_ref(tiny_model):
    """The same weights as plain transformers GPT2LMHeadModel, and the token ids."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(cache_dir() / "models" / "tiny-gpt2-v1"))
    hf.eval()
    adapter = ma.as_adapter(tiny_model)
    ids = adapter.tokenize(PROMPT)
    target = adapter.single_token(" Paris")
    return hf, ids, target


def ref_logprob(hf, ids, emb, target):
    out = hf(inputs_embeds=emb, position_ids=torch.arange(ids.shape[1])[None].expand(emb.shape[0], -1))
    return torch.log_softmax(out.logits[:, -1], -1)[:, target]


def ref_grad(hf, ids, emb, target):
    e = emb.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref_logprob(hf, ids, e, target).sum(), e)
    return g


def test_saliency_and_input_x_gradient_match_autograd(tiny_model, hf_ref):
    hf, ids, target = hf_ref
    x = hf.transformer.wte(ids).detach()
    g = ref_grad(hf, ids, x, target)[0]
    sal = ma.attribute(tiny_model, PROMPT, " Paris", method="saliency")
    ixg = ma.attribute(tiny_model, PROMPT, " Paris", method="ixg")
    exp_sal = g.norm(dim=-1)
    exp_ixg = (x[0] * g).sum(-1)
    exp_sal[0] = exp_ixg[0] = 0.0  # BOS is held fixed
    torch.testing.assert_close(sal.scores[0], exp_sal, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ixg.scores[0], exp_ixg, atol=1e-5, rtol=1e-4)
    assert not ixg.params["attribute_bos"] and sal.params["reduce"] == "l2"


def test_integrated_gradients_matches_plain_loop(tiny_model, hf_ref):
    hf, ids, target = hf_ref
    x = hf.transformer.wte(ids).detach()
    b = x.clone()
    b[:, 1:] = 0.0  # zero baseline; BOS kept as in the input
    n = 16
    total = torch.zeros_like(x)
    for k in range(n):  # midpoint Riemann rule, one point at a time
        a = (k + 0.5) / n
        total += ref_grad(hf, ids, b + a * (x - b), target) / n
    expected = ((x - b) * total)[0].sum(-1)
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=n, rule="riemann_middle")
    torch.testing.assert_close(res.scores[0], expected, atol=1e-5, rtol=1e-4)
    f_x = float(ref_logprob(hf, ids, x, target))
    f_b = float(ref_logprob(hf, ids, b, target))
    assert res.diagnostics["f_input"][0] == pytest.approx(f_x, abs=1e-5)
    assert res.diagnostics["f_baseline"][0] == pytest.approx(f_b, abs=1e-5)


@pytest.mark.parametrize("n_steps", [8, 32, 128])
def test_ig_completeness_converges(tiny_model, n_steps):
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=n_steps)
    d = res.diagnostics
    total = float(res.scores.sum())
    delta = d["f_input"][0] - d["f_baseline"][0]
    assert abs(total - delta) == pytest.approx(d["completeness_error"], abs=1e-4)
    if n_steps == 128:
        assert d["completeness_relative_error"] <= 1e-3


def test_ig_riemann_error_shrinks_with_steps(tiny_model):
    errs = [
        ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=n, rule="riemann_left",
                     baseline="gaussian").diagnostics["completeness_error"]
        for n in (4, 64)
    ]
    assert errs[1] < errs[0]


@pytest.mark.parametrize("baseline", ["zero", "pad", "eos", "bos", "unk", "mean", "uniform", "gaussian", 13, ["zero", "mean"]])
def test_ig_baselines_are_complete(tiny_model, baseline):
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=64, baseline=baseline)
    d = res.diagnostics
    assert d["completeness_relative_error"] < 2e-2, (baseline, d)
    assert torch.isfinite(res.scores).all()


def test_ig_mean_of_baselines_is_mean_of_runs(tiny_model):
    a = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=16, baseline="zero")
    b = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=16, baseline="mean")
    both = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=16, baseline=["zero", "mean"])
    torch.testing.assert_close(both.scores, (a.scores + b.scores) / 2, atol=1e-6, rtol=1e-5)


def test_explicit_baseline_token_ids(tiny_model):
    n = len(ma.as_adapter(tiny_model).tokenize(PROMPT)[0])
    ids = [50256] * n
    a = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=8, baseline=ids)
    b = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=8, baseline="eos")
    torch.testing.assert_close(a.scores, b.scores)


@pytest.mark.parametrize("method", ["ig", "saliency", "ixg", "smoothgrad", "gradient_shap"])
def test_batch_split_does_not_change_scores(tiny_model, method):
    params = {"ig": {"n_steps": 12}, "gradient_shap": {"n_samples": 10}, "smoothgrad": {"n_samples": 6}}.get(method, {})
    a = ma.attribute(tiny_model, PROMPT, " Paris", method=method, batch_size=1, **params)
    b = ma.attribute(tiny_model, PROMPT, " Paris", method=method, batch_size=64, **params)
    c = ma.attribute(tiny_model, PROMPT, " Paris", method=method, memory_mb=0.05, **params)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.scores, c.scores, atol=1e-5, rtol=1e-4)


def test_batch_of_prompts_equals_one_by_one(tiny_model):
    prompts = ["The capital of France is", "Hello there my", "One two three four five six"]
    together = ma.attribute(tiny_model, prompts, method="ig", n_steps=8)
    for p, r in zip(prompts, together):
        alone = ma.attribute(tiny_model, p, method="ig", n_steps=8)
        assert r.tokens == alone.tokens and r.targets == alone.targets
        torch.testing.assert_close(r.scores, alone.scores)


def test_smoothgrad_is_seeded_and_noise_free_limit_is_saliency(tiny_model):
    a = ma.attribute(tiny_model, PROMPT, " Paris", method="smoothgrad", seed=1)
    b = ma.attribute(tiny_model, PROMPT, " Paris", method="smoothgrad", seed=1)
    c = ma.attribute(tiny_model, PROMPT, " Paris", method="smoothgrad", seed=2)
    torch.testing.assert_close(a.scores, b.scores)
    assert not torch.allclose(a.scores, c.scores)
    s0 = ma.attribute(tiny_model, PROMPT, " Paris", method="smoothgrad", noise_level=0.0, n_samples=3)
    sal = ma.attribute(tiny_model, PROMPT, " Paris", method="saliency")
    torch.testing.assert_close(s0.scores, sal.scores, atol=1e-6, rtol=1e-5)


def test_gradient_shap_matches_manual_expectation(tiny_model, hf_ref):
    """Expected gradients with one zero baseline: E_alpha[(x-b) * grad(b + alpha (x-b))]."""
    hf, ids, target = hf_ref
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap", baseline="zero", n_samples=6, seed=3)
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 1, (6,), generator=g)  # the baseline picks (only one baseline)
    alpha = torch.rand(6, generator=g, dtype=torch.float64).float()
    x = hf.transformer.wte(ids).detach()
    b = x.clone()
    b[:, 1:] = 0
    acc = torch.zeros_like(x)
    for a in alpha:
        acc += (x - b) * ref_grad(hf, ids, b + a * (x - b), target) / 6
    torch.testing.assert_close(res.scores[0], acc[0].sum(-1), atol=1e-5, rtol=1e-4)


def test_multi_target_rows_share_passes_and_match_single(tiny_model):
    both = ma.attribute(tiny_model, PROMPT, [" Paris", " London"], method="ig", n_steps=8)
    one = ma.attribute(tiny_model, PROMPT, " London", method="ig", n_steps=8)
    assert both.targets == [" Paris", " London"]
    torch.testing.assert_close(both.scores[1], one.scores[0])


def test_forced_continuation_rows_match_separate_prompts(tiny_model):
    res = ma.attribute(tiny_model, PROMPT, ma.ForcedContinuation(" Paris and"), method="ixg")
    assert res.targets == [" Paris", " and"]
    assert res.target_positions == [5, 6]
    assert float(res.scores[0, 6].abs()) == 0.0  # causal: a later token cannot matter
    second = ma.attribute(tiny_model, PROMPT + " Paris", " and", method="ixg")
    torch.testing.assert_close(res.scores[1], second.scores[0], atol=1e-6, rtol=1e-5)


def test_generate_attributes_greedy_tokens(tiny_model):
    res = ma.attribute(tiny_model, PROMPT, ma.Generate(3), method="saliency")
    assert len(res.targets) == 3 and res.scores.shape == (3, 8)
    greedy = ma.attribute(tiny_model, PROMPT, None, method="saliency")
    assert res.targets[0] == greedy.targets[0]


def test_model_left_unchanged(tiny_model):
    with model_unchanged(tiny_model):
        for m in ("ig", "saliency", "ixg", "smoothgrad", "gradient_shap"):
            ma.attribute(tiny_model, PROMPT, " Paris", method=m)


def test_numpy_free_rule_points():
    from mechattr.quadrature import rule_points

    for rule in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"):
        a, w = rule_points(7, rule)
        assert float(w.sum()) == pytest.approx(1.0)
        assert float(a.min()) >= 0 and float(a.max()) <= 1
        # every rule integrates a linear function exactly
        assert float((w * a).sum()) == pytest.approx(0.5, abs=1e-12 if rule != "riemann_left" and rule != "riemann_right" else 0.1)
    assert np.isclose(float((rule_points(5, "gausslegendre")[1] * rule_points(5, "gausslegendre")[0] ** 8).sum()), 1 / 9)


def _plain_trapezoid(hf, ids, x, b, target, alphas):
    """IG by the trapezoid rule on the given points, one point at a time, plain autograd."""
    a = torch.tensor(alphas, dtype=torch.float64)
    h = a.diff()
    w = torch.zeros_like(a)
    w[:-1] += h / 2
    w[1:] += h / 2
    total = torch.zeros_like(x, dtype=torch.float64)
    for ak, wk in zip(a.tolist(), w.tolist()):
        total += wk * ref_grad(hf, ids, b + torch.tensor(ak, dtype=x.dtype) * (x - b), target).double()
    return ((x - b).double() * total)[0].sum(-1)


def test_adaptive_ig_is_the_trapezoid_rule_on_its_points(tiny_model, hf_ref):
    hf, ids, target = hf_ref
    x = hf.transformer.wte(ids).detach()
    b = x.clone()
    b[:, 1:] = 0.0
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", rule="adaptive", n_steps=4, tol=1e-3,
                       max_steps=200)
    d = res.diagnostics
    (alphas,) = d["alphas"]
    assert len(alphas) == d["n_forward_points"] > 5  # it refined the 5 starting points
    assert alphas == sorted(alphas) and alphas[0] == 0.0 and alphas[-1] == 1.0
    expected = _plain_trapezoid(hf, ids, x, b, target, alphas)
    torch.testing.assert_close(res.scores[0].double(), expected, atol=1e-5, rtol=1e-4)
    # It stopped because the completeness error it computed is met, and that error is the real one.
    assert d["converged"] and d["completeness_relative_error"] <= 1e-3
    assert d["completeness_relative_error"] <= d["error_bound"] + 1e-9
    assert d["history"][0][-1]["error"] <= 1e-3
    assert [h["points"] for h in d["history"][0]] == sorted({h["points"] for h in d["history"][0]})


def test_adaptive_ig_without_refinement_equals_trapezoid_rule(tiny_model):
    a = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", rule="adaptive", n_steps=10, tol=1e9)
    b = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", rule="riemann_trapezoid", n_steps=11)
    assert a.diagnostics["n_forward_points"] == 11 and a.diagnostics["rounds"] == 1
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)


def test_adaptive_ig_reports_when_the_budget_runs_out(tiny_model):
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", rule="adaptive", n_steps=2,
                       tol=1e-9, max_steps=6, baseline="gaussian")
    d = res.diagnostics
    assert d["n_forward_points"] == 6 and not d["converged"]
    assert d["error_bound"] > 1e-9
    assert d["completeness_relative_error"] <= d["error_bound"] + 1e-9


def test_adaptive_ig_batch_size_changes_rounding_only(tiny_model):
    """Which intervals get split does not depend on the batch size, but the batch size changes
    float rounding (batched matmuls), and an interval whose error sits at a threshold may then
    be split in one run and not in the other. Both runs still meet the tolerance and agree to
    within it; the same batch size gives the same points exactly."""
    kw = dict(method="ig", rule="adaptive", n_steps=3, tol=1e-3, baseline=["zero", "mean"], max_steps=400)
    a = ma.attribute(tiny_model, PROMPT, " Paris", batch_size=1, **kw)
    b = ma.attribute(tiny_model, PROMPT, " Paris", batch_size=64, **kw)
    c = ma.attribute(tiny_model, PROMPT, " Paris", batch_size=64, **kw)
    assert b.diagnostics["alphas"] == c.diagnostics["alphas"]
    torch.testing.assert_close(b.scores, c.scores, atol=0, rtol=0)
    for r in (a, b):
        assert r.diagnostics["converged"] and r.diagnostics["completeness_relative_error"] <= 1e-3
    gap = abs(a.diagnostics["f_input"][0] - a.diagnostics["f_baseline"][0])
    torch.testing.assert_close(a.scores, b.scores, atol=0.05 * gap, rtol=0)


def test_adaptive_ig_norm_reductions_and_several_targets(tiny_model):
    res = ma.attribute(tiny_model, PROMPT, [" Paris", " London"], method="ig", rule="adaptive",
                       n_steps=4, reduce="l2", tol=1e-2)
    assert res.scores.shape[0] == 2 and bool((res.scores >= 0).all())
    assert res.diagnostics["completeness_relative_error"] <= 1e-2 + 1e-6


@pytest.mark.parametrize("kw", [dict(rule="gausslegendre", tol=0.1), dict(rule="riemann_middle", max_steps=100),
                                dict(rule="adaptive", tol=0),
                                dict(rule="adaptive", n_steps=10, max_steps=5)])
def test_adaptive_ig_bad_parameters(tiny_model, kw):
    with pytest.raises(ma.errors.MechattrError, match="tol|max_steps"):
        ma.attribute(tiny_model, PROMPT, " Paris", method="ig", **kw)
