"""DIG / UDIG and the vocabulary kNN graph, checked against straight IG, a plain autograd path
integral, a loop-by-loop re-implementation of the anchor search, and brute-force torch.cdist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mechattr as ma
import mechattr.knn as knn
from mechattr.contract import Context
from mechattr.methods.discrete import discrete_path, vocab_embeddings

from .conftest import TL_MAJOR, model_unchanged

TEXT = "The capital of France is"
VOCAB = 3000  # anchors from the 3000 first GPT-2 ids keeps the graph cheap in tests



def warm(model) -> None:
    """A fresh TransformerBridge installs its own module hooks on its first forward; do that
    before fingerprinting the model so model_unchanged sees only what mechattr does."""
    with torch.no_grad():
        model(ma.as_adapter(model).tokenize("a b"))


@pytest.fixture(autouse=True)
def knn_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Graphs go to a per-test folder, not the user's cache (models still load from it)."""
    folder = tmp_path / "knn"
    monkeypatch.setattr(knn, "knn_dir", lambda: folder)
    knn.clear_memory_cache()
    return folder


def make_ctx(model, text=TEXT, target=" Paris") -> Context:
    adapter, plan, _ = ma.resolve(model, text, target)
    fixed = torch.zeros(plan.tokens.shape[-1], dtype=torch.bool)
    fixed[0] = True  # BOS
    return Context(adapter=adapter, plan=plan, fixed=fixed)


# ----- the straight path is IG -----------------------------------------------------------------
@pytest.mark.parametrize(
    "rule, ig_rule, ig_steps",
    [("left", "riemann_left", 12), ("midpoint", "riemann_middle", 12), ("trapezoid", "riemann_trapezoid", 13)],
)
def test_no_anchors_equals_ig(tiny_model, rule, ig_rule, ig_steps):
    targets = [" Paris", " London"]
    ig = ma.attribute(tiny_model, TEXT, targets, method="ig", rule=ig_rule, n_steps=ig_steps, baseline="eos")
    dig = ma.attribute(tiny_model, TEXT, targets, method="dig", n_anchors=0, rule=rule, n_steps=12, baseline="eos")
    assert dig.scores.shape == ig.scores.shape == (2, 6)
    torch.testing.assert_close(dig.scores, ig.scores, atol=1e-6, rtol=1e-5)
    assert abs(dig.diagnostics["completeness_error"] - ig.diagnostics["completeness_error"]) < 1e-6


# ----- the path integral itself, recomputed with plain autograd -----------------------------------
def target_value(model, tokens, embed, token_id):
    def swap(x, hook):
        return embed

    with model.hooks(fwd_hooks=[("hook_embed", swap)]):
        logits = model(tokens)
    return torch.log_softmax(logits[0, -1], dim=-1)[token_id]


def test_dig_equals_plain_path_integral(tiny_model):
    ctx = make_ctx(tiny_model)
    B = torch.stack([ctx.input_embed()[0]])
    B[0, 1:] = 0.0
    path = discrete_path(ctx, B, strategy="greedy", n_anchors=3, n_neighbors=20, anchor_vocab=VOCAB)
    nodes = path.nodes[0]  # [5, pos, d]
    tid = ctx.plan.token_ids[0]
    # Left Riemann sum with 2 intervals per segment (n_steps=8 over 4 segments), one point at a time.
    ref = torch.zeros_like(nodes[0], dtype=torch.float64)
    for s in range(4):
        for i in range(2):
            z = (nodes[s] + (i / 2) * (nodes[s + 1] - nodes[s])).detach().requires_grad_(True)
            with torch.enable_grad():
                f = target_value(tiny_model, ctx.tokens, z[None], tid)
                (g,) = torch.autograd.grad(f, z)
            ref += (g * (nodes[s + 1] - nodes[s]) / 2).double()
    res = ma.attribute(
        tiny_model, TEXT, " Paris", method="dig", n_anchors=3, n_neighbors=20, n_steps=8, rule="left",
        baseline="zero", anchor_vocab=VOCAB,
    )
    torch.testing.assert_close(res.scores[0], ref.sum(-1).float(), atol=1e-5, rtol=1e-4)


# ----- the anchor search, re-implemented one candidate at a time ----------------------------------
def reference_search(E, ids, x0, b, input_id, A, k, strategy, candidates="word"):
    """DIG's GREEDY/MAXCOUNT search (candidates: the current word's neighbours) and UDIG's
    ``linear_word_path`` (candidates: the words nearest to the evenly spaced line points
    b + (A - s)/(A + 1) (x - b), walked from the input side), written out with Python loops.
    Monotonization step 1/A as the reference code (``1/steps``)."""
    cur, word, visited = x0.double(), None, {input_id}
    E, b, x0d = E.double(), b.double(), x0.double()
    out_ids, out_pts = [], []
    for s in range(A):
        if candidates == "line":
            centre = b + (A - s) / (A + 1) * (x0d - b)
        else:
            centre = cur if word is None else E[word]
        d = (E - centre).pow(2).sum(-1).sqrt()
        if word is not None and candidates == "word":
            d[word] = float("inf")
        cand = torch.argsort(d, stable=True)[:k].tolist()
        best, best_key, best_pt = None, None, None
        for c in cand:
            a = E[c]
            if int(ids[c]) in visited or torch.equal(a, b) or torch.equal(a, cur):
                continue
            mono = (a >= torch.minimum(b, cur)) & (a <= torch.maximum(b, cur))
            fb = cur - (cur - b) / A
            dist = float((torch.where(mono, a, fb) - a).norm())
            key = (dist,) if strategy == "greedy" else (-int(mono.sum()), dist)
            if best_key is None or key < best_key:
                best, best_key, best_pt = c, key, torch.where(mono, a, fb)
        if best is None:
            break
        visited.add(int(ids[best]))
        out_ids.append(int(ids[best]))
        out_pts.append(best_pt)
        cur, word = best_pt, best
    return out_ids, out_pts


SEARCHES = [("greedy", "word"), ("maxcount", "word"), ("greedy", "line"), ("maxcount", "line")]


@pytest.mark.parametrize("strategy, candidates", SEARCHES)
def test_anchor_search_matches_reference(tiny_model, strategy, candidates):
    ctx = make_ctx(tiny_model)
    B = ctx.adapter.embed(torch.full_like(ctx.tokens, 50256))
    B[0, 0] = ctx.input_embed()[0, 0]
    A, k = 4, 15
    path = discrete_path(ctx, B, strategy=strategy, n_anchors=A, n_neighbors=k, anchor_vocab=VOCAB, candidates=candidates)
    ids = torch.arange(VOCAB)
    E = vocab_embeddings(ctx, ids)
    for p in (2, 5):
        ref_ids, ref_pts = reference_search(
            E, ids, ctx.input_embed()[0, p], B[0, p], int(ctx.tokens[0, p]), A, k, strategy, candidates
        )
        got = path.anchor_ids[0, :, p].flip(0).tolist()  # input -> baseline order
        assert got == ref_ids
        for s, pt in enumerate(ref_pts):
            torch.testing.assert_close(path.nodes[0, A - s, p].double(), pt, atol=1e-6, rtol=0)


def test_udig_is_linear_word_path_on_a_tiny_embedding_table():
    """#19 item 1: UDIG hand-rolled on a 12-word, 3-d embedding table (plain Python, no torch
    search), against the method's anchors: candidates are the words nearest to evenly spaced
    points of the straight line, not neighbours of the current word."""
    table = [[0.0, 0.0, 0.0], [4.0, 4.0, 4.0], [3.1, 2.9, 3.0], [2.0, 2.2, 1.9], [0.9, 1.1, 1.0],
             [3.6, 0.4, 3.9], [1.5, 3.8, 0.2], [2.6, 2.4, 2.7], [-1.0, 5.0, 2.0], [1.2, 0.8, 1.3],
             [3.9, 3.7, 3.8], [0.3, 0.2, 0.4]]
    W = torch.tensor(table, dtype=torch.float64)

    class _Adapter:  # the only things the anchor search asks of a model: vocabulary and embedding
        d_vocab = len(table)

        def embed(self, toks):
            return W[toks]

    class _Plan:
        def __init__(self, toks):
            self.tokens, self.positions, self.n_rows = toks, [0], 1

    tokens = torch.tensor([[1]])  # one position: word 1 at (4, 4, 4)
    adapter = _Adapter()
    ctx = Context(adapter=adapter, plan=_Plan(tokens))
    A, k = 3, 3
    B = torch.zeros(1, 1, 3, dtype=torch.float64)  # baseline: word 0, the origin
    for strategy in ("greedy", "maxcount"):
        path = discrete_path(ctx, B, strategy=strategy, n_anchors=A, n_neighbors=k, candidates="line")
        # by hand: points b + s/(A+1) (x - b) for s = 3, 2, 1 -> (3,3,3), (2,2,2), (1,1,1)
        x, b = table[1], table[0]
        cur, visited, picks = list(x), {1}, []
        for s in (3, 2, 1):
            pt = [b[d] + s / (A + 1) * (x[d] - b[d]) for d in range(3)]
            dist = sorted(range(12), key=lambda w: (sum((table[w][d] - pt[d]) ** 2 for d in range(3)), w))[:k]
            best, key_best, node = None, None, None
            for w in dist:
                if w in visited or table[w] == b or table[w] == cur:
                    continue
                a = table[w]
                mono = [min(b[d], cur[d]) <= a[d] <= max(b[d], cur[d]) for d in range(3)]
                mpt = [a[d] if mono[d] else cur[d] - (cur[d] - b[d]) / A for d in range(3)]
                gap = sum((mpt[d] - a[d]) ** 2 for d in range(3)) ** 0.5
                key = (gap,) if strategy == "greedy" else (-sum(mono), gap)
                if key_best is None or key < key_best:
                    best, key_best, node = w, key, mpt
            visited.add(best)
            picks.append(best)
            cur = node
            torch.testing.assert_close(path.nodes[0, s, 0].double(), torch.tensor(node, dtype=torch.float64), atol=1e-6, rtol=0)
        assert path.anchor_ids[0, :, 0].flip(0).tolist() == picks, strategy


@pytest.mark.parametrize("strategy, candidates", SEARCHES)
def test_path_is_monotone_through_real_words(tiny_model, strategy, candidates):
    ctx = make_ctx(tiny_model)
    B = torch.zeros_like(ctx.input_embed())
    B[0, 0] = ctx.input_embed()[0, 0]
    A = 6
    path = discrete_path(ctx, B, strategy=strategy, n_anchors=A, n_neighbors=30, anchor_vocab=VOCAB, candidates=candidates)
    nodes = path.nodes[0]
    x, b = ctx.input_embed()[0], B[0]
    assert torch.equal(nodes[0], b) and torch.equal(nodes[-1], x)
    sign = torch.sign(x - b)
    steps = (nodes[1:] - nodes[:-1]) * sign  # every coordinate moves towards the input
    assert bool((steps >= 0).all())
    assert bool(((nodes[1:] - nodes[:-1])[:, sign == 0] == 0).all())
    W = ctx.adapter.W_E.detach()
    found = path.anchor_ids[0] >= 0
    assert int(found[:, 1:].sum()) == A * (ctx.n_pos - 1)  # a word was found at every step
    for s in range(A):
        for p in range(1, ctx.n_pos):
            a = W[path.anchor_ids[0, s, p]]
            keep = path.kept[0, s, p]
            assert int(keep.sum()) > 0
            # kept dimensions are exactly the anchor word's embedding
            assert torch.equal(nodes[s + 1, p][keep], a[keep])
    # the path does not touch the fixed BOS position
    assert bool((nodes[:, 0] == x[0]).all())


def test_completeness_error_falls_with_n_steps(tiny_model):
    errors = {}
    for method, extra in [("dig", {"strategy": "greedy"}), ("udig", {})]:
        errs = []
        for n in (6, 24, 96):
            r = ma.attribute(
                tiny_model, TEXT, " Paris", method=method, n_steps=n, n_anchors=5, n_neighbors=30,
                anchor_vocab=VOCAB, **extra,
            )
            errs.append(r.diagnostics["completeness_error"])
        errors[method + str(extra)] = errs
        assert errs[0] > errs[1] > errs[2]
        assert errs[2] < errs[0] / 20  # trapezoid rule: ~1/n^2 on a fixed path
    print(errors)


def test_batch_invariance_and_model_unchanged(tiny_model):
    kw = dict(method="udig", n_steps=10, n_anchors=4, n_neighbors=20, anchor_vocab=VOCAB)
    warm(tiny_model)
    with model_unchanged(tiny_model):
        a = ma.attribute(tiny_model, TEXT, [" Paris", " the"], **kw)
        b = ma.attribute(tiny_model, TEXT, [" Paris", " the"], batch_size=1, **kw)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)
    assert a.diagnostics["anchors"][0] == [None] * 4  # BOS holds still
    assert all(isinstance(w, str) for w in a.diagnostics["anchors"][1])


def test_save_load_html(tiny_model, tmp_path):
    r = ma.attribute(
        tiny_model, TEXT, " Paris", method="discretized_integrated_gradients", strategy="maxcount",
        n_steps=6, n_anchors=2, anchor_vocab=VOCAB,
    )
    assert r.method == "discretized_integrated_gradients"
    r2 = ma.Attribution.load(r.save(tmp_path / "dig"))
    torch.testing.assert_close(r2.scores, r.scores)
    assert r2.params == r.params and r2.diagnostics["anchors"] == r.diagnostics["anchors"]
    assert "<" in r.to_html()


@pytest.mark.skipif(TL_MAJOR >= 4, reason="the bridge is the default model in the TL 4 lane (tested above)")
def test_bridge_and_hooked_agree_tl3(tiny_hooked, tiny_bridge):
    kw = dict(method="dig", n_steps=6, n_anchors=2, n_neighbors=10, anchor_vocab=VOCAB)
    a = ma.attribute(tiny_hooked, TEXT, " Paris", **kw)
    b = ma.attribute(tiny_bridge, TEXT, " Paris", **kw)
    assert a.diagnostics["anchors"] == b.diagnostics["anchors"]
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-3)


def test_errors(tiny_model):
    with pytest.raises(ma.MethodError, match="n_steps"):
        ma.attribute(tiny_model, TEXT, " Paris", method="dig", n_steps=3, n_anchors=5)
    with pytest.raises(ma.MethodError, match="strategy"):
        ma.attribute(tiny_model, TEXT, " Paris", method="dig", strategy="uniform")
    with pytest.raises(ma.MethodError, match="rule"):
        ma.attribute(tiny_model, TEXT, " Paris", method="udig", rule="gausslegendre")
    with pytest.raises(ma.MethodError, match="anchor_vocab"):
        ma.attribute(tiny_model, TEXT, " Paris", method="udig", anchor_vocab=1)


# ----- the kNN graph and its caches ------------------------------------------------------------
def test_knn_equals_brute_force(tiny_model):
    W = ma.as_adapter(tiny_model).W_E.detach()[:1500]
    idx, dist = knn.build_knn(W, 12)
    ref = torch.cdist(W.double(), W.double())
    ref.fill_diagonal_(float("inf"))
    rv, ri = ref.topk(12, largest=False)
    assert torch.equal(idx, ri)
    torch.testing.assert_close(dist, rv.float(), atol=1e-5, rtol=1e-5)
    # the float32 path (large vocabularies) agrees on distances
    idx32, dist32 = knn.build_knn(torch.cat([W] * 6), 3)  # 9000 rows: float32; copies are at distance 0
    assert bool((dist32[:, :3] < 1e-2).all())


def test_knn_cache_memory_disk_and_corruption(knn_tmp):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(400, 16, generator=g)
    s0 = dict(knn.stats)
    idx, dist = knn.knn_graph(W, 8)
    assert knn.stats["builds"] == s0["builds"] + 1
    files = list(knn_tmp.glob("*.safetensors"))
    assert len(files) == 1 and not list(knn_tmp.glob(".*"))  # no temporary file left behind
    # a hit does not recompute; a smaller k is served from the larger graph
    idx2, _ = knn.knn_graph(W.clone(), 8)
    idx3, _ = knn.knn_graph(W, 5)
    assert knn.stats["builds"] == s0["builds"] + 1
    assert knn.stats["memory_hits"] == s0["memory_hits"] + 2
    assert torch.equal(idx2, idx) and torch.equal(idx3, idx[:, :5])
    # a fresh in-memory cache (as in a new process) reads the file instead of building
    knn.clear_memory_cache()
    idx4, dist4 = knn.knn_graph(W, 8)
    assert knn.stats["builds"] == s0["builds"] + 1 and knn.stats["disk_hits"] == s0["disk_hits"] + 1
    assert torch.equal(idx4, idx) and torch.equal(dist4, dist)
    # a truncated file is detected and rebuilt
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    knn.clear_memory_cache()
    idx5, _ = knn.knn_graph(W, 8)
    assert knn.stats["builds"] == s0["builds"] + 2 and knn.stats["disk_rebuilds"] == s0["disk_rebuilds"] + 1
    assert torch.equal(idx5, idx)
    knn.clear_memory_cache()
    knn.knn_graph(W, 8)  # the rewritten file reads back whole
    assert knn.stats["builds"] == s0["builds"] + 2 and knn.stats["disk_hits"] == s0["disk_hits"] + 2
    # a different matrix gets its own graph
    knn.knn_graph(W + 1e-3, 8)
    assert knn.stats["builds"] == s0["builds"] + 3


def test_paper_defaults(tiny_model):
    """#19 item 2: DIG's and UDIG's defaults are the papers' (30 anchors; DIG greedy with the
    kNN neighbours, UDIG greedy with 30 words per line point; one interval per path segment),
    with the deviations the docs name (50 DIG neighbours, trapezoid rule)."""
    dig = ma.attribute(tiny_model, TEXT, " Paris", method="dig", anchor_vocab=VOCAB)
    udig = ma.attribute(tiny_model, TEXT, " Paris", method="udig", anchor_vocab=VOCAB)
    for r, k in ((dig, 50), (udig, 30)):
        p = r.params
        assert (p["n_anchors"], p["n_steps"], p["n_neighbors"], p["strategy"], p["rule"]) == (30, 31, k, "greedy", "trapezoid")
        assert len(r.diagnostics["anchors"][1]) == 30
        assert r.diagnostics["n_forward_points"] == 32  # as many gradients as the paper's 32 path points
