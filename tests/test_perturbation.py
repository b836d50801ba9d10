"""Perturbation methods and the shared perturbed-evaluation helpers, checked against independent
computations: plain forward passes of the TL model, brute-force Shapley enumeration, numpy
least squares, and targets with known additive structure."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

import mechattr as ma
from mechattr.errors import MethodError
from mechattr.contract import Context
from mechattr.methods.perturbation import weighted_ridge
from mechattr.perturb import (
    deleted_tokens,
    deletion_masks,
    insertion_masks,
    make_features,
    next_token_probs,
    perturbed_values,
    resolve_replacement,
)

from .conftest import TL_MAJOR, model_unchanged

SHORT = "The quick brown"  # BOS + 3 tokens
TEXT = "The quick brown fox jumps"  # BOS + 5 tokens
LONG = "The quick brown fox jumps over"  # BOS + 6 tokens
EOS = 50256
METHODS = ["occlusion", "lime", "kernel_shap", "shapley_sampling", "shapley", "reagent"]
CHEAP = {
    "occlusion": {},
    "lime": {"n_samples": 16},
    "kernel_shap": {"n_samples": 16},
    "shapley_sampling": {"n_permutations": 4},
    "shapley": {},
    "reagent": {"min_probe_steps": 2, "max_probe_steps": 2, "num_probes": 4},
}


def make_ctx(model, text=TEXT, target=None, **kw) -> Context:
    adapter, plan, _ = ma.resolve(model, text, target)
    fixed = torch.zeros(plan.tokens.shape[-1], dtype=torch.bool)
    fixed[0] = True  # BOS
    return Context(adapter=adapter, plan=plan, fixed=fixed, **kw)


def ref_logprob(model, toks: torch.Tensor, pos: int, tid: int) -> float:
    """Independent target: a plain forward of the TL model, log-softmax in float64."""
    with torch.no_grad():
        return float(torch.log_softmax(model(toks)[0, pos].double(), -1)[tid])


def greedy(model, toks: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(toks)[0, -1].argmax())


# ----- perturbed_values and replacements ------------------------------------------------------


def test_occlusion_batched_equals_loop_of_single_passes(tiny_model):
    res = ma.attribute(tiny_model, LONG, method="occlusion", replacement="eos")
    toks = ma.as_adapter(tiny_model).tokenize(LONG)
    n = toks.shape[-1]
    tid = greedy(tiny_model, toks)
    t0 = time.perf_counter()
    f_x = ref_logprob(tiny_model, toks, n - 1, tid)
    loop = [0.0]
    for i in range(1, n):
        t = toks.clone()
        t[0, i] = EOS
        loop.append(f_x - ref_logprob(tiny_model, t, n - 1, tid))
    t_loop = time.perf_counter() - t0
    torch.testing.assert_close(res.scores[0].double(), torch.tensor(loop, dtype=torch.float64), atol=1e-5, rtol=0)
    print(f"occlusion: batched {res.diagnostics['seconds']:.4f}s vs loop {t_loop:.4f}s")


def test_occlusion_zero_and_mean_embeddings_match_hooked_forward(tiny_model):
    adapter = ma.as_adapter(tiny_model)
    toks = adapter.tokenize(TEXT)
    n = toks.shape[-1]
    tid = greedy(tiny_model, toks)
    W_E = tiny_model.W_E.detach()
    for name, vec in [("zero", torch.zeros(W_E.shape[1])), ("mean", W_E.mean(0))]:
        res = ma.attribute(tiny_model, TEXT, method="occlusion", replacement=name)
        with torch.no_grad():
            f_x = torch.log_softmax(tiny_model(toks)[0, -1].double(), -1)[tid]
            for i in range(1, n):

                def put(x, hook, i=i):
                    x = x.clone()
                    x[:, i] = vec
                    return x

                out = tiny_model.run_with_hooks(toks, fwd_hooks=[("hook_embed", put)])
                want = f_x - torch.log_softmax(out[0, -1].double(), -1)[tid]
                assert abs(float(res.scores[0, i]) - float(want)) < 1e-5, (name, i)


def test_delete_equals_model_on_shortened_text(tiny_model):
    ctx = make_ctx(tiny_model, TEXT)
    tid = ctx.plan.token_ids[0]
    # Delete " quick" and " fox": the model must see "The brown jumps".
    mask = torch.zeros(1, ctx.n_pos, dtype=torch.bool)
    mask[0, [2, 4]] = True
    got = perturbed_values(ctx, mask, "delete")[0, 0]
    short = ctx.adapter.tokenize("The brown jumps")
    toks, pos = deleted_tokens(ctx, mask[0])
    assert torch.equal(toks, short) and pos == short.shape[-1] - 1
    assert abs(float(got) - ref_logprob(tiny_model, short, -1, tid)) < 1e-5
    # The read position itself is never deleted; BOS is never deleted.
    mask2 = torch.ones(1, ctx.n_pos, dtype=torch.bool)
    got2 = perturbed_values(ctx, mask2, "delete")[0, 0]
    only = ctx.tokens[:, [0, ctx.n_pos - 1]]
    assert abs(float(got2) - ref_logprob(tiny_model, only, -1, tid)) < 1e-5


def test_delete_with_rows_reading_at_different_positions(tiny_model):
    target = ma.ForcedContinuation(" over the lazy")
    ctx = make_ctx(tiny_model, TEXT, target)
    full = ctx.tokens
    masks = torch.zeros(3, ctx.n_pos, dtype=torch.bool)
    masks[0, [2]] = True
    masks[1, [5, 6]] = True  # row 0 reads at 5, row 1 at 6: each keeps its own read token
    masks[2, [1, 3, 6]] = True
    got = perturbed_values(ctx, masks, "delete")
    for i in range(3):
        for r, (q, tid) in enumerate(zip(ctx.plan.positions, ctx.plan.token_ids)):
            keep = ~masks[i].clone()
            keep[0] = True
            keep[q] = True
            short = full[:, keep[: full.shape[-1]]]
            new_q = int(keep[: q + 1].sum()) - 1
            want = ref_logprob(tiny_model, short, new_q, tid)
            assert abs(float(got[i, r]) - want) < 1e-5, (i, r)


def test_special_token_and_id_replacements(tiny_model):
    ctx = make_ctx(tiny_model, TEXT)
    tid = ctx.plan.token_ids[0]
    mask = torch.zeros(1, ctx.n_pos, dtype=torch.bool)
    mask[0, 2] = True
    for spec, rid in [("eos", EOS), ("bos", EOS), ("unk", EOS), (13, 13)]:
        t = ctx.tokens.clone()
        t[0, 2] = rid
        assert abs(float(perturbed_values(ctx, mask, spec)[0, 0]) - ref_logprob(tiny_model, t, -1, tid)) < 1e-5
    # BOS is never perturbed: a mask on it is ignored.
    m0 = torch.zeros(1, ctx.n_pos, dtype=torch.bool)
    m0[0, 0] = True
    f_x = ref_logprob(tiny_model, ctx.tokens, -1, tid)
    assert abs(float(perturbed_values(ctx, m0, 13)[0, 0]) - f_x) < 1e-5
    # GPT-2's unk is its BOS/EOS, so the default is the zero embedding.
    assert resolve_replacement(ctx, "auto").name == "zero"


def test_plausible_is_seeded_model_sampled_and_never_the_original(tiny_model):
    ctx = make_ctx(tiny_model, LONG, seed=3)
    a = resolve_replacement(ctx, "plausible").token_ids
    b = resolve_replacement(make_ctx(tiny_model, LONG, seed=3), "plausible").token_ids
    c = resolve_replacement(make_ctx(tiny_model, LONG, seed=4), "plausible").token_ids
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not bool((a == ctx.tokens[0]).any())
    # The proposal distribution is the model's own prediction at the previous position
    # (renormalised without the original token); position 0 is BOS-conditioned.
    probs = next_token_probs(ctx.adapter, ctx.tokens)
    with torch.no_grad():
        p = torch.softmax(tiny_model(ctx.tokens)[0].double(), -1)
    for pos in range(1, ctx.n_pos):
        want = p[pos - 1].clone()
        want[ctx.tokens[0, pos]] = 0
        torch.testing.assert_close(probs[pos], want / want.sum(), atol=1e-6, rtol=1e-4)
    assert bool((probs[torch.arange(ctx.n_pos), a] > 0).all())


def test_replacement_errors(tiny_model):
    ctx = make_ctx(tiny_model)
    mask = torch.zeros(1, ctx.n_pos, dtype=torch.bool)
    with pytest.raises(MethodError, match="no mask token"):
        perturbed_values(ctx, mask, "mask")
    for bad in [10**9, -1, True, "blank", 1.5]:
        with pytest.raises(MethodError):
            perturbed_values(ctx, mask, bad)
    with pytest.raises(MethodError, match="shape"):
        perturbed_values(ctx, torch.zeros(2, 3, dtype=torch.bool))


def test_curve_masks():
    d = deletion_masks(torch.tensor([3, 1]), 4)
    assert d.tolist() == [[False] * 4, [False, False, False, True], [False, True, False, True]]
    ins = insertion_masks(torch.tensor([3, 1]), 4, free=torch.tensor([False, True, True, True]))
    assert ins.tolist() == [[False, True, True, True], [False, True, True, False], [False, False, True, False]]


# ----- occlusion ------------------------------------------------------------------------------


def test_occlusion_window_and_spans_semantics(tiny_model):
    ctx = make_ctx(tiny_model, TEXT)
    n = ctx.n_pos
    single = {}

    def drop(positions):
        key = tuple(positions)
        if key not in single:
            m = torch.zeros(1, n, dtype=torch.bool)
            m[0, list(positions)] = True
            f = perturbed_values(ctx, torch.zeros(1, n, dtype=torch.bool), EOS)[0, 0]
            single[key] = float(f - perturbed_values(ctx, m, EOS)[0, 0])
        return single[key]

    res = ma.attribute(tiny_model, TEXT, method="occlusion", window=2, replacement=EOS)
    windows = [(i, i + 1) for i in range(1, n - 1)]
    for p in range(1, n):
        want = np.mean([drop(w) for w in windows if p in w])
        assert abs(float(res.scores[0, p]) - want) < 1e-5
    res = ma.attribute(tiny_model, TEXT, method="occlusion", spans=[(1, 3), (4, 6)], replacement=EOS)
    want = [0.0, drop((1, 2)) / 2, drop((1, 2)) / 2, 0.0, drop((4, 5)) / 2, drop((4, 5)) / 2]
    torch.testing.assert_close(res.scores[0].double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)
    assert res.params["spans"] == [[1, 3], [4, 6]]


# ----- Shapley values -------------------------------------------------------------------------


def brute_force_shapley(model, toks, units, tid, replace_id=EOS):
    """Average marginal contribution over all orderings of ``units`` (lists of positions); the
    value of every coalition comes from one plain batched forward of the TL model."""
    n = toks.shape[-1]
    coalitions = [frozenset(c) for k in range(len(units) + 1) for c in itertools.combinations(range(len(units)), k)]
    batch = toks.repeat(len(coalitions), 1)
    for j, present in enumerate(coalitions):
        for u, pos in enumerate(units):
            if u not in present:
                batch[j, pos] = replace_id
    with torch.no_grad():
        lp = torch.log_softmax(model(batch)[:, n - 1].double(), -1)[:, tid]
    v = {c: float(x) for c, x in zip(coalitions, lp)}
    phi = np.zeros(len(units))
    perms = list(itertools.permutations(range(len(units))))
    for order in perms:
        s: frozenset = frozenset()
        for u in order:
            phi[u] += v[s | {u}] - v[s]
            s = s | {u}
    return phi / len(perms), v[frozenset(range(len(units)))] - v[frozenset()]


def test_exact_shapley_equals_brute_force(tiny_model):
    toks = ma.as_adapter(tiny_model).tokenize(TEXT)
    tid = greedy(tiny_model, toks)
    phi, delta = brute_force_shapley(tiny_model, toks, [[i] for i in range(1, 6)], tid)
    res = ma.attribute(tiny_model, TEXT, method="shapley", replacement="eos")
    torch.testing.assert_close(res.scores[0, 1:].double(), torch.tensor(phi), atol=1e-5, rtol=0)
    assert res.scores[0, 0] == 0
    assert abs(float(res.scores[0].double().sum()) - delta) < 1e-5
    assert res.diagnostics["efficiency_gap"] < 1e-9


def test_exact_shapley_over_spans_equals_brute_force(tiny_model):
    toks = ma.as_adapter(tiny_model).tokenize(TEXT)
    tid = greedy(tiny_model, toks)
    units = [[1, 2], [3], [5]]
    phi, _ = brute_force_shapley(tiny_model, toks, units, tid)
    res = ma.attribute(tiny_model, TEXT, method="shapley", spans=[(1, 3), (3, 4), (5, 6)], replacement="eos")
    want = [0.0, phi[0] / 2, phi[0] / 2, phi[1], 0.0, phi[2]]
    torch.testing.assert_close(res.scores[0].double(), torch.tensor(want), atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.diagnostics["feature_scores"][0], phi, atol=1e-5)


def test_sampled_shapley_estimates_converge_to_exact(tiny_model):
    exact = ma.attribute(tiny_model, LONG, method="shapley", replacement="eos").scores[0, 1:].double()
    errors = {}
    for method, key, ns in [
        ("kernel_shap", "n_samples", (8, 64, 1024)),
        ("shapley_sampling", "n_permutations", (2, 8, 128)),
    ]:
        errs = []
        for n in ns:
            # Average over seeds so the comparison of budgets is not a coin flip.
            e = []
            for seed in range(2 if n < ns[-1] else 1):
                s = ma.attribute(tiny_model, LONG, method=method, replacement="eos", seed=seed, **{key: n})
                e.append(float((s.scores[0, 1:].double() - exact).abs().max()))
                assert s.diagnostics["efficiency_gap"] < 1e-6
            errs.append(float(np.mean(e)))
        errors[method] = errs
        assert errs[2] < errs[0], (method, errs)
        assert errs[2] < 0.1 * float(exact.abs().max()), (method, errs)
    print("max-abs error vs exact Shapley (scale %.3f):" % float(exact.abs().max()), errors)


def test_additive_target_is_recovered_exactly(tiny_model):
    """For a target that is a sum of per-token effects, Shapley values, KernelSHAP and an
    unpenalised LIME fit all equal those effects."""
    toks = ma.as_adapter(tiny_model).tokenize(LONG)
    orig = toks[0].clone()
    c = torch.tensor([0.0, 1.5, -0.5, 0.25, 2.0, -1.0, 0.75])

    def fn(logits, tokens):
        return ((tokens == orig[None]).float() * c[None]).sum(-1) + 0 * logits[:, -1, 0]

    target = ma.FunctionTarget(fn)
    for method, kw in [
        ("shapley", {}),
        ("kernel_shap", {"n_samples": 64}),
        ("shapley_sampling", {"n_permutations": 4}),
        ("lime", {"n_samples": 64, "alpha": 0.0}),
    ]:
        res = ma.attribute(tiny_model, LONG, target, method=method, replacement=EOS, **kw)
        torch.testing.assert_close(res.scores[0], c, atol=1e-5, rtol=0, msg=method)
        if method == "lime":
            assert res.diagnostics["weighted_r2"][0] > 1 - 1e-9


def test_shapley_refuses_too_many_features(tiny_model):
    text = " ".join(["word"] * 13)
    with pytest.raises(MethodError, match="kernel_shap"):
        ma.attribute(tiny_model, text, method="shapley")
    # Spans shrink the feature count below the limit.
    res = ma.attribute(tiny_model, text, method="shapley", spans=[(1, 7), (7, 14)])
    assert res.scores.shape == (1, 14)


# ----- LIME -----------------------------------------------------------------------------------


def test_weighted_ridge_matches_numpy_least_squares():
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(40, 6, generator=g) > 0.5).double()
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    w = torch.rand(40, generator=g, dtype=torch.float64) + 0.1
    alpha = 0.7
    beta, b, r2 = weighted_ridge(X, y, w, alpha)
    sw = np.sqrt(w.numpy())[:, None]
    A = np.vstack([sw * np.hstack([np.ones((40, 1)), X.numpy()]), np.hstack([np.zeros((6, 1)), np.sqrt(alpha) * np.eye(6)])])
    for r in range(2):
        rhs = np.concatenate([sw[:, 0] * y[:, r].numpy(), np.zeros(6)])
        sol = np.linalg.lstsq(A, rhs, rcond=None)[0]
        np.testing.assert_allclose(beta[:, r].numpy(), sol[1:], atol=1e-10)
        np.testing.assert_allclose(float(b[r]), sol[0], atol=1e-10)
        pred = sol[0] + X.numpy() @ sol[1:]
        ym = np.average(y[:, r].numpy(), weights=w.numpy())
        want = 1 - np.sum(w.numpy() * (y[:, r].numpy() - pred) ** 2) / np.sum(w.numpy() * (y[:, r].numpy() - ym) ** 2)
        np.testing.assert_allclose(float(r2[r]), want, atol=1e-10)


def test_lime_is_reproducible_with_a_seed(tiny_model):
    a = ma.attribute(tiny_model, TEXT, method="lime", n_samples=40, seed=1)
    b = ma.attribute(tiny_model, TEXT, method="lime", n_samples=40, seed=1)
    c = ma.attribute(tiny_model, TEXT, method="lime", n_samples=40, seed=2)
    assert torch.equal(a.scores, b.scores)
    assert not torch.allclose(a.scores, c.scores)
    assert 0 <= a.diagnostics["weighted_r2"][0] <= 1
    h = ma.attribute(tiny_model, TEXT, method="lime", n_samples=40, distance="hamming", kernel_width=1.0)
    assert h.params["distance"] == "hamming"


# ----- every method: generic contract ---------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_batch_size_does_not_change_scores(tiny_model, method):
    kw = dict(CHEAP[method])
    a = ma.attribute(tiny_model, SHORT, method=method, batch_size=1, **kw)
    b = ma.attribute(tiny_model, SHORT, method=method, **kw)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("replacement", ["delete", "plausible", "mean"])
def test_batch_size_does_not_change_scores_for_other_replacements(tiny_model, replacement):
    a = ma.attribute(tiny_model, SHORT, method="occlusion", replacement=replacement, batch_size=1)
    b = ma.attribute(tiny_model, SHORT, method="occlusion", replacement=replacement)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def _kinds():
    kinds = ["tiny_model", "tiny_bridge"]
    if TL_MAJOR < 4:
        kinds.append("tiny_hooked")
    return kinds


@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("method", METHODS)
def test_every_method_through_attribute_saves_and_renders(request, tmp_path, method, kind):
    model = request.getfixturevalue(kind)
    with torch.no_grad():  # a bridge adds its module hooks lazily on its first forward pass
        model(ma.as_adapter(model).tokenize("warm up"))
    target = ma.ForcedContinuation(" over the") if method in ("occlusion", "kernel_shap") else None
    with model_unchanged(model):
        res = ma.attribute(model, TEXT, target, method=method, **CHEAP[method])
    assert res.dims == ("target", "src")
    assert res.scores.shape == (len(res.targets), len(res.tokens))
    assert torch.isfinite(res.scores).all() and bool((res.scores[:, 0] == 0).all())
    assert res.scores.abs().sum() > 0
    path = res.save(tmp_path / "r.safetensors")
    back = ma.Attribution.load(path)
    assert torch.equal(back.scores, res.scores) and back.params == res.params and back.method == res.method
    assert "<html" in res.to_html().lower()


def test_model_unchanged_when_a_method_raises(tiny_model):
    with model_unchanged(tiny_model):
        with pytest.raises(MethodError):
            ma.attribute(tiny_model, TEXT, method="kernel_shap", replacement="mask")
        with pytest.raises(MethodError):
            ma.attribute(tiny_model, " ".join(["x"] * 14), method="shapley")


def test_aliases_resolve():
    assert ma.get_method("ablation").name == "occlusion"
    assert ma.get_method("feature_ablation").name == "occlusion"


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("occlusion", {"window": 0}, "window"),
        ("occlusion", {"window": 9}, "window"),
        ("occlusion", {"window": 2, "spans": [(1, 3)]}, "not both"),
        ("occlusion", {"spans": [(0, 2)]}, "fixed"),
        ("occlusion", {"spans": [(1, 3), (2, 4)]}, "overlap"),
        ("occlusion", {"spans": [(3, 3)]}, "empty"),
        ("occlusion", {"spans": [(1, 99)]}, "outside"),
        ("occlusion", {"spans": "1-3"}, "spans"),
        ("occlusion", {"replacement": None}, "None"),
        ("occlusion", {"replacement": "pad_token"}, "Unknown replacement"),
        ("lime", {"n_samples": 1}, "n_samples"),
        ("lime", {"kernel_width": 0}, "kernel_width"),
        ("lime", {"distance": "l2"}, "distance"),
        ("lime", {"alpha": -1}, "alpha"),
        ("kernel_shap", {"n_samples": 0}, "n_samples"),
        ("kernel_shap", {"paired": "yes"}, "paired"),
        ("shapley_sampling", {"n_permutations": 0}, "n_permutations"),
        ("shapley_sampling", {"antithetic": 1}, "antithetic"),
        ("shapley", {"max_features": 3}, "max_features"),
        ("shapley", {"max_features": 0}, "max_features"),
        ("shapley", {"n_samples": 3}, "no parameter"),
    ],
)
def test_bad_parameters_raise_clear_errors(tiny_model, method, params, match):
    with pytest.raises(MethodError, match=match):
        ma.attribute(tiny_model, TEXT, method=method, **params)


def test_make_features_default_is_one_feature_per_free_token(tiny_model):
    ctx = make_ctx(tiny_model)
    feats = make_features(ctx)
    assert feats.n == ctx.n_pos - 1 and feats.spans[0] == (1, 2)
    phi = torch.arange(feats.n, dtype=torch.float64)[None]
    assert math.isclose(float(feats.spread(phi).sum()), float(phi.sum()))


def test_without_bos_the_first_token_is_perturbed_too(tiny_model):
    for rep in ["delete", "plausible"]:
        res = ma.attribute(tiny_model, SHORT, method="occlusion", replacement=rep, prepend_bos=False)
        assert res.tokens[0] == "The" and float(res.scores[0, 0].abs()) > 0
