"""Attention-based methods against independent computations (plain torch, autograd, networkx)."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch

import mechattr as ma
from mechattr.tl.adapter import ModelAdapter, as_adapter
from mechattr.attribution import Attribution
from mechattr.methods.attention import mixing_matrices, rollout_matrices
from mechattr.methods.flow import layered_max_flow

from .conftest import TL_MAJOR, model_unchanged

TEXT = "When Mary and John went to the store, John gave a drink to"
TARGET = " Mary"
METHODS = [
    "attention",
    "attention_rollout",
    "attention_flow",
    "attention_x_gradient",
    "value_weighted_attention",
    "layer_gradient_x_activation",
]


# ----- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(params=["tiny_model"] + (["tiny_bridge"] if TL_MAJOR < 4 else []))
def model(request):
    """The lane's default kind (HookedTransformer on TL 3, bridge on TL 4), plus the TL 3 bridge."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory):
    """A tiny random Llama with grouped-query attention: 4 query heads share 2 key/value heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechattr.tl.loading import gpt2_tokenizer

    d = tmp_path_factory.mktemp("tinygqa")  # no model family name in the path: TL 3 infers architectures from names
    cfg = LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=50256, eos_token_id=50256, attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(1)
        LlamaForCausalLM(cfg).save_pretrained(str(d))
    gpt2_tokenizer().save_pretrained(str(d))
    m = ma.load_model(str(d))
    assert m.cfg.n_heads == 4 and as_adapter(m).n_kv_heads == 2
    return m


# ----- independent helpers ------------------------------------------------------------------------
def capture_all(model, tokens, names):
    """{name: activation} by plain hooks (keyed by the name we asked for)."""
    store = {}

    def grab(name):
        def f(x, hook):
            store[name] = x.detach().clone()

        return f

    with model.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
        model(tokens)
    return store


def patterns_of(model, tokens):
    L = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    st = capture_all(model, tokens, names)
    return torch.stack([st[n][0] for n in names])  # [layer, head, pos, pos]


def target_logprob(model, tokens, token_id, hooks=()):
    with model.hooks(fwd_hooks=list(hooks)):
        logits = model(tokens)
    return torch.log_softmax(logits[0, -1].double(), -1)[token_id]


def nx_flow(caps: np.ndarray, depth: int, source: int, target: int) -> float:
    """Max flow in the full layered graph (no pruning) by networkx."""
    g = nx.DiGraph()
    T = caps.shape[-1]
    for k in range(1, depth + 1):
        for i in range(T):
            for j in range(i + 1):
                g.add_edge((k - 1, j), (k, i), capacity=float(caps[k - 1, i, j]))
    return nx.maximum_flow_value(g, (0, source), (depth, target))


def random_caps(rng, L, T, power=3.0, w=0.5):
    a = np.tril(rng.random((L, T, T)) ** power)
    a /= a.sum(-1, keepdims=True)
    m = (1 - w) * a + w * np.eye(T)
    return m / m.sum(-1, keepdims=True)


def tokens_of(model, text=TEXT):
    return as_adapter(model).tokenize(text)


# ----- rollout ------------------------------------------------------------------------------------
def random_patterns(L=3, H=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(L, H, T, T, generator=g, dtype=torch.float64)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -1)


@pytest.mark.parametrize("agg", ["mean", "max", "min"])
@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_rollout_rows_sum_to_one(agg, w):
    roll = rollout_matrices(random_patterns(), residual_weight=w, head_agg=agg)
    assert roll.shape == (3, 6, 6)
    torch.testing.assert_close(roll.sum(-1), torch.ones(3, 6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (roll >= 0).all()
    assert torch.triu(roll, 1).abs().max() == 0  # still causal


def test_rollout_single_layer_without_residual_is_mean_attention():
    p = random_patterns(L=1)
    torch.testing.assert_close(rollout_matrices(p, residual_weight=0.0)[0], p[0].mean(0))


def test_rollout_is_product_of_mixings():
    p = random_patterns(L=3, seed=3)
    w = 0.25
    mix = []
    for l in range(3):
        m = (1 - w) * p[l].max(0).values + w * torch.eye(6, dtype=torch.float64)
        mix.append(m / m.sum(-1, keepdim=True))
    expect = [mix[0], mix[1] @ mix[0], mix[2] @ mix[1] @ mix[0]]
    torch.testing.assert_close(rollout_matrices(p, w, "max"), torch.stack(expect))


def test_rollout_method_reads_target_rows(model):
    toks = tokens_of(model)
    pats = patterns_of(model, toks).double()
    res = ma.attribute(model, TEXT, TARGET, method="attention_rollout", residual_weight=0.2)
    roll = rollout_matrices(pats, 0.2)
    torch.testing.assert_close(res.scores[:, 0], roll[:, -1].float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.final().scores[0].sum(), torch.tensor(1.0), atol=1e-5, rtol=0)


# ----- flow -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,L,T", [(0, 3, 6), (1, 4, 7), (2, 2, 9)])
def test_flow_equals_networkx_on_random_graphs(seed, L, T):
    rng = np.random.default_rng(seed)
    caps = random_caps(rng, L, T, w=[0.5, 0.1, 0.0][seed])
    targets = [T - 1, T // 2]
    res = layered_max_flow(caps, targets)
    assert res.values.shape == (L, 2, T)
    for d, (r, t) in itertools.product(range(1, L + 1), enumerate(targets)):
        for j in range(T):
            ref = nx_flow(caps, d, j, t) if j <= t else 0.0
            assert abs(res.values[d - 1, r, j] - ref) < 1e-6, (d, t, j)
    assert (res.lower <= res.values + 1e-15).all()
    assert res.max_gap < 1e-6


def test_flow_is_at_most_any_cut():
    rng = np.random.default_rng(7)
    L, T = 3, 6
    caps = random_caps(rng, L, T, power=1.0)
    res = layered_max_flow(caps, [T - 1])
    nodes = [(k, i) for k in range(L + 1) for i in range(T)]
    edges = [((k - 1, j), (k, i), caps[k - 1, i, j]) for k in range(1, L + 1) for i in range(T) for j in range(i + 1)]
    for j in range(T):
        flow = res.values[L - 1, 0, j]
        src, snk = (0, j), (L, T - 1)
        for _ in range(40):
            side = {n for n in nodes if rng.random() < 0.5} | {src}
            side.discard(snk)
            cap = sum(c for u, v, c in edges if u in side and v not in side)
            assert flow <= cap + 1e-9
        # and the max-flow / min-cut theorem holds with networkx's own min cut
        g = nx.DiGraph()
        for u, v, c in edges:
            g.add_edge(u, v, capacity=float(c))
        assert abs(nx.minimum_cut_value(g, src, snk) - flow) < 1e-6


def test_flow_method_equals_networkx_on_model_patterns(model):
    toks = tokens_of(model, "The cat sat on the mat because")
    pats = patterns_of(model, toks)
    caps = mixing_matrices(pats, 0.5, "mean").numpy()
    res = ma.attribute(model, "The cat sat on the mat because", " it", method="attention_flow", normalize=False)
    L, T = caps.shape[0], caps.shape[-1]
    assert res.dims == ("layer", "target", "src") and res.scores.shape == (L, 1, T)
    for d in range(1, L + 1):
        ref = torch.tensor([nx_flow(caps, d, j, T - 1) for j in range(T)])
        # scores are stored as float32: compare at float32 resolution (the flow itself is float64)
        torch.testing.assert_close(res.scores[d - 1, 0].double(), ref.double(), atol=1e-6, rtol=0)
    assert res.diagnostics["flow_max_gap"] < 1e-6


def test_flow_default_is_normalised_per_output_as_the_paper(model):
    """#19 item 3: Abnar & Zuidema divide each output node's flows by their sum over the inputs;
    the default does so (networkx max flows normalised by hand here), normalize=False is raw."""
    text = "The cat sat on the mat because"
    toks = tokens_of(model, text)
    caps = mixing_matrices(patterns_of(model, toks), 0.5, "mean").numpy()
    res = ma.attribute(model, text, " it", method="attention_flow")
    L, T = caps.shape[0], caps.shape[-1]
    assert res.params["normalize"] is True
    for d in range(1, L + 1):
        raw = np.array([nx_flow(caps, d, j, T - 1) for j in range(T)])
        ref = torch.tensor(raw / raw.sum())
        torch.testing.assert_close(res.scores[d - 1, 0].double(), ref, atol=1e-6, rtol=0)
        assert res.diagnostics["flow_raw_sum"][d - 1][0] == pytest.approx(raw.sum(), abs=1e-6)
    torch.testing.assert_close(res.scores.sum(-1).double(), torch.ones(L, 1, dtype=torch.float64), atol=1e-5, rtol=0)
    raw = ma.attribute(model, text, " it", method="attention_flow", normalize=False)
    assert float(raw.scores[-1, 0].sum()) > 1.01  # the raw flows do not form a distribution


# ----- raw attention ---------------------------------------------------------------------------------
def test_raw_attention_matches_hooks_and_keeps_bos(model):
    toks = tokens_of(model)
    pats = patterns_of(model, toks)
    with model_unchanged(model):
        full = ma.attribute(model, TEXT, TARGET, method="attention", heads=None)
    assert full.dims == ("layer", "head", "target", "src")
    torch.testing.assert_close(full.scores[:, :, 0], pats[:, :, -1], atol=1e-6, rtol=0)
    assert (full.scores[..., 0] > 0).all()  # BOS (position 0) is attributed, not zeroed
    for agg, fn in [("mean", lambda x: x.mean(1)), ("max", lambda x: x.max(1).values), ("min", lambda x: x.min(1).values)]:
        r = ma.attribute(model, TEXT, TARGET, method="attention", heads=agg)
        assert r.dims == ("layer", "target", "src")
        torch.testing.assert_close(r.scores[:, 0], fn(pats)[:, -1], atol=1e-6, rtol=0)
    one = ma.attribute(model, TEXT, TARGET, method="attention", layer=-1, heads=None)
    assert one.dims == ("head", "target", "src") and one.params["layer"] == model.cfg.n_layers - 1
    torch.testing.assert_close(one.scores[:, 0], pats[-1, :, -1], atol=1e-6, rtol=0)


def test_raw_attention_several_target_positions(model):
    toks = tokens_of(model, "one two three")
    pats = patterns_of(model, torch.cat([toks, torch.tensor([[as_adapter(model).single_token(" four")]])], 1))
    res = ma.attribute(model, "one two three", ma.ForcedContinuation(" four five"), method="attention", layer=0)
    assert res.scores.shape[0] == 2
    for r, p in enumerate(res.target_positions):
        torch.testing.assert_close(res.scores[r], pats[0, :, p].mean(0), atol=1e-6, rtol=0)


# ----- attention x gradient ---------------------------------------------------------------------------
def test_attention_x_gradient_equals_autograd(model):
    toks = tokens_of(model)
    tid = as_adapter(model).single_token(TARGET)
    L, T = model.cfg.n_layers, toks.shape[-1]
    with model_unchanged(model):
        res = ma.attribute(model, TEXT, TARGET, method="attention_x_gradient")
    assert res.dims == ("layer", "head", "target", "src")
    pats = patterns_of(model, toks)
    for l in range(L):
        # Replace layer l's pattern by a leaf with the same values: d target / d leaf is the total
        # derivative through every later layer (other layers' patterns stay functions of it).
        leaf = pats[l][None].clone().requires_grad_(True)
        with torch.enable_grad():
            v = target_logprob(model, toks, tid, [(f"blocks.{l}.attn.hook_pattern", lambda x, hook: leaf)])
            (g,) = torch.autograd.grad(v, leaf)
        ref = (leaf.detach() * g)[0, :, T - 1, :]
        torch.testing.assert_close(res.scores[l, :, 0], ref.float(), atol=1e-6, rtol=1e-4)


# ----- value-weighted ----------------------------------------------------------------------------------
def explicit_value_norms(model, tokens, layer):
    """||α v W_O|| from the weights: v = ln1(resid_pre) W_V + b_V, key/value head = h // group."""
    H = model.cfg.n_heads
    st = capture_all(model, tokens, [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_pattern"])
    attn = model.blocks[layer].attn
    x = model.blocks[layer].ln1(st[f"blocks.{layer}.hook_resid_pre"])[0].double()
    W_V = attn.W_V.detach().double()
    b_V = getattr(attn, "b_V", None)
    b_V = torch.zeros(W_V.shape[0], W_V.shape[-1], dtype=torch.float64) if b_V is None else b_V.detach().double()
    kv_of_head = torch.arange(H) // (H // W_V.shape[0])
    out = torch.zeros(H, tokens.shape[-1], tokens.shape[-1], dtype=torch.float64)
    pat = st[f"blocks.{layer}.attn.hook_pattern"][0].double()
    for h in range(H):
        v = x @ W_V[kv_of_head[h]] + b_V[kv_of_head[h]]  # [src, d_head]
        f = v @ attn.W_O[h].detach().double()  # [src, d_model]
        out[h] = (pat[h][:, :, None] * f[None, :, :]).norm(dim=-1)
    return out  # [head, dst, src]


def explicit_layer_norms(model, tokens, layer):
    """Kobayashi et al.'s layer-level score ||Σ_h α_h f_h(x_j)|| from the weights, plain loops."""
    H = model.cfg.n_heads
    st = capture_all(model, tokens, [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_pattern"])
    attn = model.blocks[layer].attn
    x = model.blocks[layer].ln1(st[f"blocks.{layer}.hook_resid_pre"])[0].double()
    W_V = attn.W_V.detach().double()
    b_V = getattr(attn, "b_V", None)
    b_V = torch.zeros(W_V.shape[0], W_V.shape[-1], dtype=torch.float64) if b_V is None else b_V.detach().double()
    kv_of_head = torch.arange(H) // (H // W_V.shape[0])
    pat = st[f"blocks.{layer}.attn.hook_pattern"][0].double()
    T = tokens.shape[-1]
    out = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            vec = torch.zeros(attn.W_O.shape[-1], dtype=torch.float64)
            for h in range(H):
                f = (x[j] @ W_V[kv_of_head[h]] + b_V[kv_of_head[h]]) @ attn.W_O[h].detach().double()
                vec += pat[h, i, j] * f
            out[i, j] = vec.norm()
    return out  # [dst, src]


def test_value_weighted_default_is_the_layer_norm_of_the_head_sum(model, gqa_model):
    """#19 item 5: the default score is ||Σ_h α f(x)|| per layer (not a sum of per-head norms)."""
    for m, text, tgt in ((model, TEXT, TARGET), (gqa_model, "a b c d e", " f")):
        toks = tokens_of(m, text)
        with model_unchanged(m):
            res = ma.attribute(m, text, tgt, method="value_weighted_attention")
        assert res.dims == ("layer", "target", "src") and res.params["heads"] == "combined"
        for l in range(m.cfg.n_layers):
            ref = explicit_layer_norms(m, toks, l)[-1]
            torch.testing.assert_close(res.scores[l, 0].double(), ref, atol=1e-5, rtol=1e-4)
            per_head_sum = explicit_value_norms(m, toks, l)[:, -1].sum(0)
            assert float((per_head_sum - ref).abs().max()) > 1e-4  # the old score differs
        torch.testing.assert_close(res.token_scores().double(), explicit_layer_norms(m, toks, m.cfg.n_layers - 1)[-1], atol=1e-5, rtol=1e-4)


def test_value_weighted_equals_explicit_weights(model):
    toks = tokens_of(model)
    with model_unchanged(model):
        res = ma.attribute(model, TEXT, TARGET, method="value_weighted_attention", heads="per_head")
    assert res.dims == ("layer", "head", "target", "src")
    for l in range(model.cfg.n_layers):
        ref = explicit_value_norms(model, toks, l)[:, -1]
        torch.testing.assert_close(res.scores[l, :, 0].double(), ref, atol=1e-5, rtol=1e-4)


# ----- grouped-query attention -------------------------------------------------------------------------
def test_gqa_head_mapping_reconstructs_z(gqa_model):
    """The mapping value_weighted_attention uses (head h reads kv head h // group) is the model's."""
    toks = tokens_of(gqa_model, "a b c d e")
    st = capture_all(gqa_model, toks, ["blocks.0.attn.hook_v", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z"])
    v, p, z = st["blocks.0.attn.hook_v"][0], st["blocks.0.attn.hook_pattern"][0], st["blocks.0.attn.hook_z"][0]
    assert v.shape[1] == 2 and p.shape[0] == 4
    for h in range(4):
        torch.testing.assert_close(p[h] @ v[:, h // 2], z[:, h], atol=1e-5, rtol=1e-4)


def test_gqa_value_weighted_and_all_methods(gqa_model):
    toks = tokens_of(gqa_model, "a b c d e")
    res = ma.attribute(gqa_model, "a b c d e", " f", method="value_weighted_attention", heads="per_head")
    for l in range(2):
        ref = explicit_value_norms(gqa_model, toks, l)[:, -1]
        torch.testing.assert_close(res.scores[l, :, 0].double(), ref, atol=1e-5, rtol=1e-4)
    with model_unchanged(gqa_model):
        for m in METHODS:
            r = ma.attribute(gqa_model, "a b c d e", " f", method=m)
            assert torch.isfinite(r.scores).all(), m
            assert r.dims[0] == "layer" and r.dims[-2:] == ("target", "src")
    raw = ma.attribute(gqa_model, "a b c d e", " f", method="attention", heads=None)
    assert raw.scores.shape[:2] == (2, 4)


# ----- layer gradient x activation ---------------------------------------------------------------------
def test_layer_ixg_equals_autograd(model):
    toks = tokens_of(model)
    tid = as_adapter(model).single_token(TARGET)
    L = model.cfg.n_layers
    res = ma.attribute(model, TEXT, TARGET, method="layer_ixg", attribute_bos=True)
    assert res.dims == ("layer", "target", "src") and res.scores.shape[0] == L + 1
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    acts = capture_all(model, toks, names)
    for i, n in enumerate(names):
        leaf = acts[n].clone().requires_grad_(True)
        with torch.enable_grad():
            v = target_logprob(model, toks, tid, [(n, lambda x, hook: leaf)])
            (g,) = torch.autograd.grad(v, leaf)
        ref = (leaf.detach().double() * g).sum(-1)[0]
        torch.testing.assert_close(res.scores[i, 0].double(), ref, atol=1e-5, rtol=1e-4)
    # Layer 0 = token embedding + position embedding: input_x_gradient plus W_pos · gradient.
    ixg = ma.attribute(model, TEXT, TARGET, method="input_x_gradient", attribute_bos=True)
    emb_g = capture_all(model, toks, ["hook_embed"])["hook_embed"].clone().requires_grad_(True)
    with torch.enable_grad():
        v = target_logprob(model, toks, tid, [("hook_embed", lambda x, hook: emb_g)])
        (g,) = torch.autograd.grad(v, emb_g)
    st = capture_all(model, toks, ["hook_embed", "blocks.0.hook_resid_pre"])
    pos_embed = st["blocks.0.hook_resid_pre"] - st["hook_embed"]  # GPT-2: learned positions
    assert pos_embed.abs().max() > 0
    pos_term = (pos_embed[0].double() * g[0]).sum(-1)
    torch.testing.assert_close(res.scores[0, 0].double(), ixg.scores[0].double() + pos_term, atol=1e-5, rtol=1e-4)
    # BOS held fixed by default (gradient family)
    default = ma.attribute(model, TEXT, TARGET, method="layer_ixg")
    assert (default.scores[..., 0] == 0).all()


# ----- errors, results, the model -------------------------------------------------------------------
def test_pattern_hook_that_never_fires_says_compatibility_mode(model, monkeypatch):
    orig = ModelAdapter.hooks

    def without_patterns(self, fwd_hooks=(), bwd_hooks=()):
        kept = [(n, f) for n, f in fwd_hooks if "hook_pattern" not in str(n)]
        return orig(self, fwd_hooks=kept, bwd_hooks=bwd_hooks)

    monkeypatch.setattr(ModelAdapter, "hooks", without_patterns)
    for m in ["attention", "attention_rollout", "attention_flow", "attention_x_gradient", "value_weighted_attention"]:
        with model_unchanged(model), pytest.raises(ma.ModelError, match="enable_compatibility_mode"):
            ma.attribute(model, "a b c", " d", method=m)


def test_bad_parameters(tiny_model):
    m = tiny_model
    with pytest.raises(ma.MethodError):
        ma.attribute(m, "a b", " c", method="attention", heads="median")
    with pytest.raises(ma.MethodError):
        ma.attribute(m, "a b", " c", method="attention", layer=5)
    with pytest.raises(ma.MethodError):
        ma.attribute(m, "a b", " c", method="attention_rollout", residual_weight=1.5)
    with pytest.raises(ma.MethodError):
        ma.attribute(m, "a b", " c", method="attention_flow", head_agg="sum")


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_and_views(model, method, tmp_path):
    with model_unchanged(model):
        res = ma.attribute(model, "The cat sat on", " the", method=method)
    assert res.final().dims[-2:] == ("target", "src")
    assert res.at_layer(0).scores.dim() == res.scores.dim() - 1
    path = res.save(tmp_path / "r")
    back = Attribution.load(path)
    assert back.dims == res.dims and back.method == res.method
    torch.testing.assert_close(back.scores, res.scores)
    html = res.to_html(tmp_path / "r.html")
    assert "<html" in html and "CircuitsVis" in html


def test_attention_heads_view(model, tmp_path):
    from mechattr.display import attention_heads_view

    res = ma.attribute(model, "The cat sat on", " the", method="attention", heads=None)
    cap, comp = attention_heads_view(res)
    assert "layer 1" in cap and "AttentionHeads" in comp.local_src
    assert "AttentionHeads" in res.to_html()
    assert attention_heads_view(ma.attribute(model, "The cat sat on", " the", method="attention")) is None
