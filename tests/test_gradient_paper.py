"""#19: baselines and GradientSHAP against independent computations on the Hugging Face model
itself (no TransformerLens, no hooks, no batching): every named baseline's tensor, fixed-rule IG
with non-zero baselines, and GradientSHAP's data baselines and x + noise − b path (Captum)."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.api import resolve
from mechattr.baselines import NAMED_BASELINES, build_baselines
from mechattr.contract import Context
from mechattr.tl.loading import cache_dir

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def hf(tiny_model):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(cache_dir() / "models" / "tiny-gpt2-v1"))
    m.eval()
    a = ma.as_adapter(tiny_model)
    return m, a.tokenize(PROMPT), a.single_token(" Paris")


def grad_logprob(hf_model, ids, emb, target):
    e = emb.detach().clone().requires_grad_(True)
    out = hf_model(inputs_embeds=e, position_ids=torch.arange(ids.shape[1])[None].expand(e.shape[0], -1))
    lp = torch.log_softmax(out.logits[:, -1], -1)[:, target]
    (g,) = torch.autograd.grad(lp.sum(), e)
    return g


def context(model, seed=0):
    adapter, plan, _ = resolve(model, PROMPT, " Paris")
    fixed = torch.zeros(plan.tokens.shape[-1], dtype=torch.bool)
    fixed[0] = True  # BOS, as ma.attribute holds it
    return Context(adapter=adapter, plan=plan, seed=seed, fixed=fixed)


def test_every_named_baseline_tensor(tiny_model, hf):
    """Each named baseline is the tensor its name says, from the HF weights; BOS keeps the input.
    (A "mean" baseline built as zeros, or a token baseline of the wrong id, fails here.)"""
    m, ids, _ = hf
    W = m.transformer.wte.weight.detach()
    x = W[ids[0]]
    ctx = context(tiny_model, seed=5)
    hf_tok = ctx.adapter.tokenizer  # the HF tokenizer's own attributes name the special ids
    expected_tokens = {k: getattr(hf_tok, f"{k}_token_id", None) for k in ("pad", "eos", "bos", "unk", "mask")}
    checked = []
    for name in NAMED_BASELINES:
        if name in expected_tokens and expected_tokens[name] is None:
            with pytest.raises(ma.MethodError, match=name):
                build_baselines(ctx, name)
            continue
        B = build_baselines(ctx, name)[0]
        assert B.shape == x.shape
        torch.testing.assert_close(B[0], x[0])  # BOS kept
        free = B[1:]
        if name == "zero":
            assert bool((free == 0).all())
        elif name == "mean":
            torch.testing.assert_close(free, W.mean(0).expand_as(free), atol=1e-6, rtol=0)
            assert float(W.mean(0).abs().max()) > 1e-4  # zeros would not pass
        elif name == "uniform":
            lo, hi = W.min(0).values, W.max(0).values
            assert bool(((free >= lo) & (free <= hi)).all())
            assert float((free - (lo + hi) / 2).abs().max()) > 1e-3 and not torch.allclose(free[0], free[1])
            torch.testing.assert_close(build_baselines(context(tiny_model, seed=5), name)[0], B)  # seeded
        elif name == "gaussian":
            sd = float(W.float().std())
            assert float(free.std()) == pytest.approx(sd, rel=0.25) and abs(float(free.mean())) < 0.5 * sd
        else:
            tid = expected_tokens[name]
            torch.testing.assert_close(free, W[tid].expand_as(free))
        checked.append(name)
    assert {"zero", "mean", "uniform", "gaussian", "eos", "bos"} <= set(checked)


@pytest.mark.parametrize("baseline", ["eos", "mean"])
@pytest.mark.parametrize("rule", ["riemann_middle", "riemann_trapezoid"])
def test_fixed_rule_ig_with_nonzero_baselines_matches_plain_loop(tiny_model, hf, baseline, rule):
    m, ids, target = hf
    W = m.transformer.wte.weight.detach()
    x = W[ids]  # [1, pos, d]
    b = x.clone()
    b[:, 1:] = W[m.config.eos_token_id] if baseline == "eos" else W.mean(0)
    n = 6
    if rule == "riemann_middle":
        alphas, weights = [(k + 0.5) / n for k in range(n)], [1.0 / n] * n
    else:  # trapezoid on n points: ends weighted half
        alphas = [k / (n - 1) for k in range(n)]
        weights = [(0.5 if k in (0, n - 1) else 1.0) / (n - 1) for k in range(n)]
    acc = torch.zeros_like(x)
    for a, w in zip(alphas, weights):
        acc += w * (x - b) * grad_logprob(m, ids, b + a * (x - b), target)
    ref = acc[0].sum(-1)
    ref[0] = 0.0
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="ig", baseline=baseline, rule=rule, n_steps=n)
    assert float(ref[1:].abs().max()) > 1e-3
    torch.testing.assert_close(res.scores[0], ref, atol=2e-5, rtol=1e-4)


def test_gradient_shap_default_baselines_are_real_token_embeddings(tiny_model, hf):
    m, ids, _ = hf
    W = m.transformer.wte.weight.detach()
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap", n_samples=4)
    assert res.params["baseline"] == "random_tokens" and res.params["n_baselines"] == 20
    from mechattr.baselines import data_baselines

    ctx = context(tiny_model)
    B, tok = data_baselines(ctx, None, 20, ctx.generator(3000))
    assert bool((tok[:, 0] == ids[0, 0]).all()) and not bool((tok[:, 1:] == ids[0, 1:]).all())
    torch.testing.assert_close(B, W[tok])  # each baseline position is a real token's embedding
    assert bool((B[:, 1:].abs().sum(-1) > 0).all())  # no zero / Gaussian vector among them


def test_gradient_shap_path_and_data_windows_match_plain_loop(tiny_model, hf):
    """Captum's GradientShap: (x + eps − b) * grad f(b + alpha (x + eps − b)), b drawn from data.
    The draws follow the documented order (baseline pick, alpha, noise from the seed's generator;
    data windows from seed + 3000); everything else is computed here."""
    m, ids, target = hf
    W = m.transformer.wte.weight.detach()
    n, seed, stdev = 5, 7, 0.05
    data = torch.tensor([[10, 11, 12, 13, 14], [200, 201, 202, 203, 204]])  # two 5-token rows
    res = ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap", data=data,
                       n_baselines=3, n_samples=n, stdev=stdev, seed=seed)
    assert res.params["baseline"] == "data" and res.params["stdev"] == stdev
    # windows: each prompt has 5 free positions, so every row is one window
    gw = torch.Generator().manual_seed(seed + 3000)
    rows = []
    for i in torch.randint(0, 2, (3,), generator=gw).tolist():
        torch.randint(0, 1, (1,), generator=gw)  # offset draw (only offset 0 fits)
        rows.append(data[i])
    base_ids = torch.cat([ids[:, :1].expand(3, 1), torch.stack(rows)], dim=1)
    Bs = W[base_ids]  # [3, pos, d]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, 3, (n,), generator=g)
    alpha = torch.rand(n, generator=g, dtype=torch.float64).float()
    x = W[ids][0]
    eps = (torch.randn(n, *x.shape, generator=g, dtype=torch.float64) * stdev).float()
    eps[:, 0] = 0.0  # BOS is not perturbed
    acc = torch.zeros_like(x)
    for k in range(n):
        b = Bs[pick[k]]
        xe = x + eps[k]
        acc += (xe - b) * grad_logprob(m, ids, (b + alpha[k] * (xe - b))[None], target)[0] / n
    ref = acc.sum(-1)
    ref[0] = 0.0
    torch.testing.assert_close(res.scores[0], ref, atol=2e-5, rtol=1e-4)
    # the old (x − b) multiplier differs measurably from the Captum path
    old = torch.zeros_like(x)
    for k in range(n):
        b = Bs[pick[k]]
        xe = x + eps[k]
        old += (x - b) * grad_logprob(m, ids, (b + alpha[k] * (xe - b))[None], target)[0] / n
    assert float((old.sum(-1)[1:] - ref[1:]).abs().max()) > 1e-4
    texts = ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap",
                         data=["one two three four five six seven eight nine ten"], n_samples=3)
    assert texts.params["baseline"] == "data"
    one = ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap", data=list(range(300, 309)), n_samples=2)
    assert one.params["baseline"] == "data"  # a flat list of ids is one sequence
    with pytest.raises(ma.MethodError, match="tokens"):
        ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap", data=["too short"], n_samples=2)
    with pytest.raises(ma.MethodError, match="not both"):
        ma.attribute(tiny_model, PROMPT, " Paris", method="gradient_shap", data=data, baseline="zero")
