"""Token × head contribution maps, checked against pieces and gradients computed here with plain
hooks (a different hook than the method taps), and a finite forward for the direct effect."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mechattr as ma
import mechattr.linking as lk
from mechattr.methods.token_head import head_pieces

from .conftest import model_unchanged

PROMPT = "The cat sat on the"


def _capture(model: Any, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    box: dict[str, torch.Tensor] = {}
    hooks = [(n, (lambda n: lambda x, hook: box.__setitem__(n, x.detach().clone()))(n)) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    return box


def _grad_at_attn_out(model: Any, tokens: torch.Tensor, layer: int, pos: int, token: int) -> torch.Tensor:
    """∂ log p(token) / ∂ attn_out[layer, pos] (not resid_mid: on TL 4 bridges a hook_resid_mid edit
    reaches only the MLP input, not the skip path)."""
    box: dict[str, torch.Tensor] = {}

    def tap(x: torch.Tensor, hook: Any) -> torch.Tensor:
        box["d"] = torch.zeros_like(x, requires_grad=True)
        return x + box["d"]

    with torch.enable_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", tap)]):
        lp = torch.log_softmax(model(tokens)[0, pos], -1)[token]
        (g,) = torch.autograd.grad(lp, box["d"])
    return g[0, pos]


def _pieces_and_sums(model: Any, tokens: torch.Tensor, dst: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    a = ma.as_adapter(model)
    L, H = a.n_layers, a.n_heads
    names = [f"blocks.{l}.attn.{k}" for l in range(L) for k in ("hook_pattern", "hook_v", "hook_z")]
    names += [f"blocks.{l}.hook_attn_out" for l in range(L)]
    acts = _capture(model, tokens, names)
    pieces, sums = [], []
    for l in range(L):
        v = acts[f"blocks.{l}.attn.hook_v"][0]
        v = v.repeat_interleave(H // v.shape[1], dim=1)  # query head h reads kv head h // group
        p = head_pieces(acts[f"blocks.{l}.attn.hook_pattern"][0], v, model.W_O[l].detach(), dst)
        pieces.append(p)
        b_O = getattr(model, "b_O", None)
        bias = b_O[l].detach() if b_O is not None else 0.0
        sums.append((acts[f"blocks.{l}.hook_attn_out"][0, dst] - bias, acts[f"blocks.{l}.attn.hook_z"][0, dst]))
    return pieces, sums


@pytest.mark.parametrize("which", ["tiny_model", "tiny_gqa"])
def test_pieces_sum_to_head_output_and_gradient_scores(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    a = ma.as_adapter(model)
    toks = a.tokenize(PROMPT)
    dst = toks.shape[-1] - 1
    target_id = a.single_token(" mat")
    pieces, sums = _pieces_and_sums(model, toks, dst)
    for l, (p, (attn_out, z)) in enumerate(zip(pieces, sums)):
        # Per head: Σ_src pieces = z[dst, h] · W_O[h]; all heads together: the layer's attention output.
        per_head = torch.einsum("he,hed->hd", z, model.W_O[l].detach())
        assert torch.allclose(p.sum(1), per_head, atol=1e-5)
        assert torch.allclose(p.sum((0, 1)), attn_out, atol=1e-5)
    with model_unchanged(model):
        res = lk.token_head_map(model, PROMPT, " mat")
    assert res.dims == ("layer", "head", "target", "src")
    assert res.diagnostics["decomposition_error"] < 1e-5
    for l, p in enumerate(pieces):
        g = _grad_at_attn_out(model, toks, l, dst, target_id)
        expected = torch.einsum("hsd,d->hs", p, g)
        assert torch.allclose(res.scores[l, :, 0], expected, atol=1e-5, rtol=1e-4), (which, l)


def test_direct_mode_is_the_frozen_norm_logit_effect(tiny_model: Any) -> None:
    """mode='direct' with kind='logit': adding a piece to the final residual (final norm scale
    frozen at its clean value) changes the logit by exactly the score; one batched forward."""
    model, a = tiny_model, ma.as_adapter(tiny_model)
    toks = a.tokenize(PROMPT)
    dst, tid = toks.shape[-1] - 1, a.single_token(" mat")
    res = lk.token_head_map(model, PROMPT, " mat", mode="direct", kind="logit")
    assert res.params["frozen_final_norm_scale"] is True
    pieces, _ = _pieces_and_sums(model, toks, dst)
    P = torch.stack(pieces)  # l h s d
    flat = P.reshape(-1, P.shape[-1])
    n = flat.shape[0]
    final = f"blocks.{a.n_layers - 1}.hook_resid_post"
    scale = _capture(model, toks, ["ln_final.hook_scale"])["ln_final.hook_scale"]

    def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.expand(n + 1, -1, -1).clone()
        x[1:, dst] += flat
        return x

    with torch.no_grad(), model.hooks(
        fwd_hooks=[(final, add), ("ln_final.hook_scale", lambda x, hook: scale.expand(n + 1, -1, -1))]
    ):
        logits = model(toks)[:, dst, tid]
    expected = (logits[1:] - logits[0]).reshape(P.shape[:3])
    assert torch.allclose(res.scores[:, :, 0], expected, atol=1e-4, rtol=1e-4)


def test_registered_method_roundtrip_and_errors(tiny_model: Any, tmp_path: Any) -> None:
    res = ma.attribute(tiny_model, PROMPT, " mat", method="token_head")
    assert res.scores[..., 0].abs().sum() == 0  # BOS fixed by default through ma.attribute
    assert res.token_scores().shape == (len(res.tokens),)
    back = ma.Attribution.load(res.save(tmp_path / "th.safetensors"))
    assert torch.equal(back.scores, res.scores) and back.dims == res.dims
    assert "<html" in res.to_html()
    with pytest.raises(ma.MethodError):
        ma.attribute(tiny_model, PROMPT, " mat", method="token_head", mode="nope")
    probe = lk.LinearProbe(torch.ones(tiny_model.cfg.d_model), 0.0, "blocks.0.hook_resid_post")
    with pytest.raises(ma.MethodError, match="mode=.gradient."):
        ma.attribute(tiny_model, PROMPT, probe, method="token_head", mode="direct")
    # A probe read mid-network is fine with gradients: heads after the hook get 0.
    r = ma.attribute(tiny_model, PROMPT, probe, method="token_head")
    assert r.scores[1].abs().sum() == 0 and r.scores[0].abs().sum() > 0


def test_head_view_and_page(tiny_model: Any, tmp_path: Any) -> None:
    res = lk.token_head_map(tiny_model, PROMPT, " mat")
    html = lk.linking_page("heads", heads=res, path=tmp_path / "heads.html")
    assert "L1H3" in html and "unpkg" not in html.split("<body>")[1][:2000]
    with pytest.raises(ma.InputError):
        lk.head_view(res, layer=5)
