"""Linear probes as targets: values and gradients against plain-hook computations, errors, and the
exercise (explain a probe, compare methods, ablate top-3 vs bottom-3 tokens)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import mechattr as ma
import mechattr.linking as lk

from .conftest import model_unchanged

PROMPT = "The cat and the dog sat on a mat near the door"
HOOK = "blocks.1.hook_resid_pre"


def _probe_for(model: Any, word: str) -> lk.LinearProbe:
    """Reads the token-identity direction of ``word`` (its embedding row) at the last position."""
    a = ma.as_adapter(model)
    w = a.W_E[a.single_token(word)].detach()
    return lk.LinearProbe(w / w.norm(), 0.5, HOOK, position=-1, label=f"is{word}")


def _act(model: Any, tokens: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
    box: dict[str, torch.Tensor] = {}
    hooks = [(HOOK, lambda x, hook: box.__setitem__("x", x))]
    if embed is not None:
        hooks.insert(0, ("hook_embed", lambda x, hook: embed))
    with model.hooks(fwd_hooks=hooks):
        model(tokens)
    return box["x"]


def test_probe_value_and_gradient_match_plain_hooks(tiny_model: Any) -> None:
    a = ma.as_adapter(tiny_model)
    probe = _probe_for(tiny_model, " cat")
    toks = a.tokenize(PROMPT)
    with torch.no_grad():
        manual = _act(tiny_model, toks)[0, -1] @ probe.weight[0] + 0.5
    assert float(probe.score(tiny_model, PROMPT)[0]) == pytest.approx(float(manual), abs=1e-5)
    with model_unchanged(tiny_model):
        res = ma.attribute(tiny_model, PROMPT, probe, method="input_x_gradient")
    emb = a.embed(toks).requires_grad_(True)
    with torch.enable_grad():
        val = _act(tiny_model, toks, emb)[0, -1] @ probe.weight[0]
        (g,) = torch.autograd.grad(val, emb)
    expected = (g * emb.detach())[0].sum(-1)
    expected[0] = 0.0  # BOS is held fixed
    assert torch.allclose(res.scores[0], expected, atol=1e-5)
    assert res.targets == ["is cat"] and "probe" in res.target_description


def test_probe_exercise_top3_vs_bottom3_ablation(tiny_model: Any) -> None:
    """Explain the probe score, compare methods, zero the embeddings of the 3 highest and the 3
    lowest-scored tokens and compare how much the probe moves."""
    a = ma.as_adapter(tiny_model)
    probe = _probe_for(tiny_model, " cat")
    toks = a.tokenize(PROMPT)
    emb = a.embed(toks)
    with torch.no_grad():
        base = float(_act(tiny_model, toks, emb)[0, -1] @ probe.weight[0])
    results = {m: ma.attribute(tiny_model, PROMPT, probe, method=m) for m in ("integrated_gradients", "input_x_gradient", "saliency")}
    assert results["integrated_gradients"].diagnostics["completeness_error"] < 1e-2
    report = {}
    for name, res in results.items():
        s = res.token_scores()[1:]  # BOS is fixed
        order = torch.argsort(s.abs(), descending=True) + 1
        changes = []
        for pos in (order[:3], order[-3:]):
            e = emb.clone()
            e[0, pos] = 0.0
            with torch.no_grad():
                changes.append(abs(float(_act(tiny_model, toks, e)[0, -1] @ probe.weight[0]) - base))
        report[name] = changes
    print("probe |change| after ablating top-3 / bottom-3 tokens:", report)
    for name in ("integrated_gradients", "input_x_gradient"):
        assert report[name][0] > report[name][1], name
    ig, ixg = results["integrated_gradients"].token_scores(), results["input_x_gradient"].token_scores()
    rho = float(torch.corrcoef(torch.stack([ig.argsort().argsort().float(), ixg.argsort().argsort().float()]))[0, 1])
    print(f"rank correlation IG vs input_x_gradient on the probe: {rho:.3f}")
    text, comp = lk.probe_view(results["integrated_gradients"])
    assert "is cat" in text and comp is not None
    assert "<html" in lk.linking_page("probe", probes=[results["integrated_gradients"]])


def test_constructors_and_errors(tiny_model: Any) -> None:
    d = tiny_model.cfg.d_model
    lin = torch.nn.Linear(d, 3)
    p1 = lk.LinearProbe.from_linear(lin, HOOK, position=2, label=["a", "b", "c"])
    p2 = lk.LinearProbe.from_sklearn(lin.weight.detach().numpy(), lin.bias.detach().numpy(), HOOK, position=2)
    r1 = ma.attribute(tiny_model, PROMPT, p1, method="saliency")
    assert r1.targets == ["a", "b", "c"] and r1.scores.shape[0] == 3
    assert torch.allclose(p1.score(tiny_model, PROMPT), p2.score(tiny_model, PROMPT))
    with torch.no_grad():
        toks = ma.as_adapter(tiny_model).tokenize(PROMPT)
        assert torch.allclose(p1.score(tiny_model, PROMPT), lin(_act(tiny_model, toks)[0, 2]), atol=1e-5)
    # binary sklearn layout: coef_ [1, d], intercept_ [1]
    pb = lk.LinearProbe.from_sklearn(np.ones((1, d)), np.zeros(1), HOOK)
    assert pb.score(tiny_model, PROMPT).shape == (1,)
    with pytest.raises(ma.TargetError, match="expects 10 features"):
        ma.attribute(tiny_model, PROMPT, lk.LinearProbe(torch.ones(10), 0.0, HOOK), method="saliency")
    with pytest.raises(ma.HookError):
        ma.attribute(tiny_model, PROMPT, lk.LinearProbe(torch.ones(d), 0.0, "blocks.9.hook_resid_pre"), method="saliency")
    with pytest.raises(ma.TargetError, match="bias"):
        lk.LinearProbe(torch.ones(2, d), torch.zeros(3), HOOK)
    with pytest.raises(ma.TargetError):
        lk.LinearProbe(torch.ones(d), 0.0, "")
    with pytest.raises(ma.TargetError):
        lk.LinearProbe.from_linear("not a layer", HOOK)  # type: ignore[arg-type]
    zoo_like = SimpleNamespace(W=torch.ones(d, 2), b=torch.zeros(2), hook=HOOK, classes=("sg", "pl"))
    assert lk.LinearProbe.from_probe(zoo_like).labels == ["sg", "pl"]


def _zoo_ready() -> bool:
    try:
        from mechattr.zoo import zoo_models

        return "agreement" in zoo_models()
    except ImportError:
        return False


@pytest.mark.skipif(not _zoo_ready(), reason="the zoo's trained agreement model/probe are not built in this checkout")
def test_zoo_probe_ablation() -> None:
    from mechattr.zoo import example_tokens, get_task, load_probe

    model = ma.load_model("zoo:agreement", kind="bridge")  # TL 3 HookedTransformer: see report (d_mlp)
    probe = lk.LinearProbe.from_probe(load_probe("agreement"))
    a = ma.as_adapter(model)
    ex = get_task("agreement").examples(1, seed=3)[0]
    toks, truth, _ = example_tokens(a, ex)
    res = ma.attribute(model, toks[0], probe, method="integrated_gradients")
    row = int(torch.argmax(probe.score(model, toks[0])))  # the class the probe predicts
    s = res.token_scores(row)[1:]
    order = torch.argsort(s.abs(), descending=True) + 1
    emb = a.embed(toks)
    base = probe.score(model, toks[0])[row]
    changes = []
    for pos in (order[:3], order[-3:]):
        e = emb.clone()
        e[0, pos] = 0.0
        with torch.no_grad():
            v = lk.probes.ProbePlan.evaluate(ma.resolve(model, toks[0], probe)[1], a, toks, e)[0, row]
        changes.append(abs(float(v - base)))
    print("zoo probe |change| top-3 / bottom-3:", changes, "truth", truth, "top", order[:3].tolist())
    assert changes[0] > changes[1]


def test_fit_logistic_separates_and_reads_raw_features():
    """fit_logistic returns weights on the raw features, with the standardisation it fits on folded
    in."""
    from mechattr.linking.probes import fit_logistic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0, 1.0]) + 3.0
    y = (x[:, 1] > 3.0).float()  # the mean of feature 1: about half of each class
    assert 10 < int(y.sum()) < 30
    w, b = fit_logistic(x, y, steps=300)
    assert ((x @ w + b > 0).float() == y).float().mean() >= 0.9  # L2-penalised: points at the boundary may fall either side
    # standardise-then-fold: rescaling a feature rescales its raw weight inversely and leaves the
    # logits unchanged (without the standardisation, or with a wrong fold, they would move)
    s = torch.tensor([1.0, 100.0, 0.01, 5.0, 1.0, 0.2])
    w_s, b_s = fit_logistic(x * s, y, steps=300)
    assert torch.allclose((x * s) @ w_s + b_s, x @ w + b, atol=1e-3)
    assert int(torch.argmax((w * x.std(0)).abs())) == 1  # the one informative feature
