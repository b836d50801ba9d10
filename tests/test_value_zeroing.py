"""Value zeroing against an explicit loop: one forward per (layer, source) with a hook that zeroes
that source's value vectors, on GPT-2 and on a grouped-query Llama (4 heads, 2 kv heads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mechattr as ma
from mechattr.tl.loading import gpt2_tokenizer

from .conftest import TL_MAJOR, model_unchanged

TEXT = "The capital of France is"



def warm(model) -> None:
    """A fresh TransformerBridge installs its own module hooks on its first forward; do that
    before fingerprinting the model so model_unchanged sees only what mechattr does."""
    with torch.no_grad():
        model(ma.as_adapter(model).tokenize("a b"))


@pytest.fixture(scope="module")
def tiny_gqa(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("llama-gqa")
    tok = gpt2_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    fork = torch.random.fork_rng()
    with fork:
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    # TL 3.x's HookedTransformer cannot convert a local Llama directory; its bridge can.
    model = ma.load_model(str(d)) if TL_MAJOR >= 4 else ma.load_model(str(d), kind="bridge")
    a = ma.as_adapter(model)
    assert (a.n_heads, a.n_kv_heads) == (4, 2)
    return model


def explicit(model, text, token, measure, first=1, full=False):
    """[layer, src] scores for the last position (``full``: [layer, dst, src], every position),
    one plain forward per (layer, source); sources from ``first`` on (1: BOS held fixed)."""
    a = ma.as_adapter(model)
    toks = a.tokenize(text)
    tid = a.single_token(token)
    L, n = a.n_layers, toks.shape[-1]

    def run(layer, j):
        box = {}

        def zero(v, hook):
            v = v.clone()
            v[:, j] = 0.0
            return v

        def keep(x, hook):
            box["x"] = x[0].detach().clone() if full else x[0, -1].detach().clone()

        hooks = [(f"blocks.{layer}.hook_resid_post", keep)]
        if j is not None:
            hooks.append((f"blocks.{layer}.attn.hook_v", zero))
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(toks)
        return box["x"], torch.log_softmax(logits[0, -1].double(), -1)[tid]

    out = torch.zeros((L, n, n) if full else (L, n), dtype=torch.float64)
    for layer in range(L):
        x0, f0 = run(layer, None)
        for j in range(first, n):
            x1, f1 = run(layer, j)
            if measure == "cosine":
                out[layer, ..., j] = 1 - F.cosine_similarity(x0.double(), x1.double(), dim=-1)
            else:
                out[layer, j] = f0 - f1
    return out


def test_default_is_the_reference_normalised_rollout_with_bos_zeroed(tiny_model):
    """#19 item 4: by default every token (BOS included) is zeroed, each row is normalised over
    the sources, and the layer matrices are rolled out to the input: R_0 = VZ_0, R_l = VZ_l R_{l-1}
    (computed here with plain loops)."""
    warm(tiny_model)
    with model_unchanged(tiny_model):
        res = ma.attribute(tiny_model, TEXT, " Paris", method="value_zeroing")
    vz = explicit(tiny_model, TEXT, " Paris", "cosine", first=0, full=True)  # [L, dst, src]
    L, n, _ = vz.shape
    norm = torch.zeros_like(vz)
    for l in range(L):
        for i in range(n):
            norm[l, i] = vz[l, i] / vz[l, i].sum()
    roll = [norm[0]]
    for l in range(1, L):
        prev = roll[-1]
        cur = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                cur[i, j] = sum(norm[l, i, k] * prev[k, j] for k in range(n))
        roll.append(cur)
    ref = torch.stack(roll)[:, -1]  # [L, src] at the last position
    assert {k: res.params[k] for k in ("measure", "normalize", "aggregate", "sources")} == {
        "measure": "cosine", "normalize": True, "aggregate": "rollout", "sources": "all"}
    torch.testing.assert_close(res.scores[:, 0].double(), ref, atol=1e-5, rtol=1e-4)
    assert float(res.scores[-1, 0, 0]) > 1e-3  # BOS is zeroed and scored
    torch.testing.assert_close(res.token_scores().sum().double(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)
    lay = ma.attribute(tiny_model, TEXT, " Paris", method="value_zeroing", aggregate="layer")
    torch.testing.assert_close(lay.scores[:, 0].double(), norm[:, -1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["tiny_model", "tiny_gqa"])
@pytest.mark.parametrize("measure", ["cosine", "target"])
def test_equals_explicit_loop(request, which, measure):
    model = request.getfixturevalue(which)
    warm(model)
    with model_unchanged(model):
        kw = {"normalize": False, "aggregate": "layer"} if measure == "cosine" else {}
        res = ma.attribute(model, TEXT, " Paris", method="value_zeroing", measure=measure, sources="attributed", **kw)
    assert res.dims == ("layer", "target", "src")
    ref = explicit(model, TEXT, " Paris", measure)
    assert res.scores.shape == (ref.shape[0], 1, ref.shape[1])
    torch.testing.assert_close(res.scores[:, 0].double(), ref, atol=1e-5, rtol=1e-4)
    assert float(ref[:, 1:].abs().max()) > 1e-4  # the check is not vacuous


def test_rows_batches_normalize_and_files(tiny_model, tmp_path):
    target = ma.ForcedContinuation(" Paris is")
    kw = {"normalize": False, "aggregate": "layer", "sources": "attributed"}
    a = ma.attribute(tiny_model, TEXT, target, method="vz", **kw)
    b = ma.attribute(tiny_model, TEXT, target, method="value_zeroing", batch_size=1, **kw)
    d1 = ma.attribute(tiny_model, TEXT, target, method="vz")
    d2 = ma.attribute(tiny_model, TEXT, target, method="vz", batch_size=2)
    torch.testing.assert_close(d1.scores, d2.scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)
    # row 0 reads position 5; sources after it cannot change a causal model's representation there
    assert float(a.scores[:, 0, 6:].abs().max()) < 1e-6
    assert bool((a.scores[:, :, 0] == 0).all())
    n = ma.attribute(tiny_model, TEXT, target, method="value_zeroing", normalize=True, aggregate="layer", sources="attributed")
    torch.testing.assert_close(n.scores.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(n.scores, a.scores / a.scores.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)
    r2 = ma.Attribution.load(a.save(tmp_path / "vz"))
    torch.testing.assert_close(r2.scores, a.scores)
    assert r2.dims == a.dims and r2.params == a.params
    assert "<" in a.to_html()
    assert a.at_layer(1).scores.shape == (2, 7)


@pytest.mark.skipif(TL_MAJOR >= 4, reason="HookedTransformer exists only in the TL 3 lane")
def test_hooked_and_bridge_agree_tl3(tiny_hooked, tiny_bridge):
    a = ma.attribute(tiny_hooked, TEXT, " Paris", method="value_zeroing")
    b = ma.attribute(tiny_bridge, TEXT, " Paris", method="value_zeroing")
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-3)


def test_errors(tiny_model):
    with pytest.raises(ma.MethodError, match="measure"):
        ma.attribute(tiny_model, TEXT, " Paris", method="value_zeroing", measure="l2")
    with pytest.raises(ma.MethodError, match="normalize"):
        ma.attribute(tiny_model, TEXT, " Paris", method="value_zeroing", measure="target", normalize=True)
    with pytest.raises(ma.MethodError, match="rollout"):
        ma.attribute(tiny_model, TEXT, " Paris", method="value_zeroing", normalize=False)
    with pytest.raises(ma.MethodError, match="sources"):
        ma.attribute(tiny_model, TEXT, " Paris", method="value_zeroing", sources="bos")
