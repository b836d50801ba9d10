"""Attribution patching / EAP-IG of heads, MLPs and residual positions: agreement with TL 4's
tool, with real activation patching (one forward per head, written here), and IG completeness."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mechattr as ma
import mechattr.linking as lk
from mechattr.tl.adapter import tl_major

from .conftest import model_unchanged

CLEAN = "The cat sat on the"
CORRUPT = "The dog sat on the"
TARGET = " mat"


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.reshape(-1).argsort().argsort().double()
    rb = b.reshape(-1).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _activation_patching(model: Any, clean: str, corrupt: str, token: str, direction: str = "noise") -> torch.Tensor:
    """Exact patching per head, one forward each (docs/circuits.md, sign convention):
    noise: log p(token | clean, head (l, h)'s z from the corrupted run) − log p(token | clean);
    denoise: log p(token | corrupt, head (l, h)'s z from the clean run) − log p(token | corrupt)."""
    a = ma.as_adapter(model)
    ct, xt = a.tokenize(clean), a.tokenize(corrupt)
    if direction == "denoise":
        ct, xt = xt, ct  # run the corrupt prompt, patch in the clean z
    tid, L, H = a.single_token(token), a.n_layers, a.n_heads
    zs: dict[int, torch.Tensor] = {}
    hooks = [(f"blocks.{l}.attn.hook_z", (lambda l: lambda x, hook: zs.__setitem__(l, x.detach().clone()))(l)) for l in range(L)]
    with torch.no_grad():
        with model.hooks(fwd_hooks=hooks):
            model(xt)
        base = torch.log_softmax(model(ct)[0, -1], -1)[tid]
        out = torch.zeros(L, H)
        for l in range(L):
            for h in range(H):
                def patch(x: torch.Tensor, hook: Any, l: int = l, h: int = h) -> torch.Tensor:
                    x = x.clone()
                    x[:, :, h] = zs[l][:, :, h]
                    return x

                with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", patch)]):
                    out[l, h] = torch.log_softmax(model(ct)[0, -1], -1)[tid] - base
    return out


def _warm_up(model: Any) -> None:
    """TL 4 bridges install their own module hooks (10 on the tiny GPT-2) the first time any
    hook_z hook is used, with plain TL calls too; do that once before checking we leave none."""
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda x, hook: None)]):
        model(ma.as_adapter(model).tokenize("a b"))


def test_rank_correlation_with_activation_patching(tiny_model: Any) -> None:
    _warm_up(tiny_model)
    with model_unchanged(tiny_model):
        ap = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="noise")
        ig = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, ig_steps=6, direction="noise")
    truth = _activation_patching(tiny_model, CLEAN, CORRUPT, TARGET, "noise")
    rho_ap, rho_ig = _spearman(ap.heads, truth), _spearman(ig.heads, truth)
    print(f"spearman vs activation patching: attribution patching {rho_ap:.3f}, EAP-IG {rho_ig:.3f}")
    # One token swapped in a small random model: the linear approximation should hold well.
    assert rho_ap > 0.6 and rho_ig > 0.6
    assert torch.allclose(ap.heads, truth, atol=0.25 * float(truth.abs().max()))
    assert ap.metric_corrupt - ap.metric_clean == pytest.approx(ap.diagnostics["metric_delta"])


def test_direction_signs_match_exact_patching_each_way(tiny_model: Any) -> None:
    """#19 item 7: the default is "denoise" and each direction's scores estimate the exact
    patching effect of the same name (signs included), as docs/circuits.md defines them; the
    convention is recorded in the result, its records and its JSON."""
    import json
    import warnings

    de = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET)
    no = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="noise")
    assert de.direction == "denoise" and de.grad_at == "corrupt"
    assert no.direction == "noise" and no.grad_at == "clean"
    for res, d in ((de, "denoise"), (no, "noise")):
        truth = _activation_patching(tiny_model, CLEAN, CORRUPT, TARGET, d)
        big = truth.abs() > 0.2 * float(truth.abs().max())
        assert bool(big.any())
        assert bool((torch.sign(res.heads[big]) == torch.sign(truth[big])).all()), d
        assert torch.allclose(res.heads, truth, atol=0.25 * float(truth.abs().max())), d
        assert all(r["direction"] == d for r in res.to_records())
        assert json.loads(json.dumps(res.to_json()))["direction"] == d
    # EAP-IG: the two directions are the same path integral with opposite signs
    ig_de = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, ig_steps=4)
    ig_no = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, ig_steps=4, direction="noise")
    assert torch.allclose(ig_de.heads, -ig_no.heads, atol=1e-6) and ig_no.direction == "noise"
    # the deprecated grad_at maps onto direction, with a warning that names the sign change
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        old = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, grad_at="corrupt")
    assert any(issubclass(x.category, DeprecationWarning) for x in w)
    assert old.direction == "denoise" and torch.equal(old.heads, de.heads)
    with pytest.warns(DeprecationWarning, match="NEGATIVE"):
        old = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, grad_at="clean")
    assert old.direction == "noise" and torch.equal(old.heads, no.heads)
    with pytest.raises(ma.MethodError, match="direction"):
        lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, grad_at="clean", direction="denoise")
    with pytest.raises(ma.MethodError, match="denoise"):
        lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="forward")


def test_eap_ig_is_complete_at_the_input_and_batch_invariant(tiny_model: Any) -> None:
    r1 = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, ig_steps=8, batch_size=3)
    r2 = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, ig_steps=8, batch_size=8)
    delta = r1.metric_clean - r1.metric_corrupt
    assert float(r1.resid[0].sum()) == pytest.approx(delta, abs=1e-4)
    assert torch.allclose(r1.heads, r2.heads, atol=1e-6) and torch.allclose(r1.resid, r2.resid, atol=1e-6)
    one = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET)
    print("completeness |resid0 sum - delta|: AP", abs(float(one.resid[0].sum()) - delta),
          "EAP-IG", abs(float(r1.resid[0].sum()) - delta))
    # positions where clean and corrupted tokens agree have zero residual delta at layer 0
    assert r1.resid[0, 0] == 0 and r1.resid[0, -1] == 0
    df = r1.to_dataframe()
    assert set(df["kind"]) == {"head", "mlp", "resid_pre"} and len(r1.top_heads(3)) == 3
    assert r1.method == "eap_ig" and one.method == "attribution_patching"


def test_gradient_at_corrupt_is_the_manual_first_order_term(tiny_model: Any) -> None:
    """direction='denoise': (z_clean − z_corr) · ∂m/∂z at the corrupted run, per head, recomputed
    here with TL's own backward hooks."""
    a = ma.as_adapter(tiny_model)
    ct, xt, tid = a.tokenize(CLEAN), a.tokenize(CORRUPT), a.single_token(TARGET)
    res = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="denoise")
    for l in range(a.n_layers):
        name = f"blocks.{l}.attn.hook_z"
        box: dict[str, torch.Tensor] = {}
        with torch.no_grad(), tiny_model.hooks(fwd_hooks=[(name, lambda x, hook: box.__setitem__("c", x.clone()))]):
            tiny_model(ct)
        with torch.enable_grad(), tiny_model.hooks(
            fwd_hooks=[(name, lambda x, hook: box.__setitem__("x", x.detach().clone()))],
            bwd_hooks=[(name, lambda g, hook: box.__setitem__("g", g.detach().clone()))],
        ):
            emb = a.embed(xt).requires_grad_(True)
            with tiny_model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: emb)]):
                lp = torch.log_softmax(tiny_model(xt)[0, -1], -1)[tid]
            torch.autograd.grad(lp, emb)
        expected = ((box["c"] - box["x"]) * box["g"])[0].sum((0, -1))
        assert torch.allclose(res.heads[l], expected, atol=1e-5), l


@pytest.mark.skipif(tl_major() < 4, reason="TL 3.x has no tools.analysis.attribution_patching; backend check below")
def test_agrees_with_transformer_lens_tool(tiny_model: Any) -> None:
    assert lk.tl_attribution_patching_available()
    ours = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="denoise")
    theirs = lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="denoise", backend="transformer_lens")
    assert theirs.backend == "transformer_lens"
    err_h = float((ours.heads_by_pos - theirs.heads_by_pos).abs().max())
    err_m = float((ours.mlp_by_pos - theirs.mlp_by_pos).abs().max())
    print(f"max |ours - TL attribution_patch|: heads {err_h:.2e}, mlp {err_m:.2e}")
    assert err_h < 1e-7 and err_m < 1e-7  # docs/linking.md quotes this bound (measured 1.9e-9, 9.3e-10)
    assert theirs.heads_by_pos.abs().sum() > 0


def test_errors(tiny_model: Any) -> None:
    with pytest.raises(ma.InputError, match="same token length"):
        lk.head_attribution(tiny_model, CLEAN, "A much longer corrupted prompt here", TARGET)
    with pytest.raises(ma.MethodError):
        lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="middle")
    with pytest.raises(ma.MethodError):
        lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, ig_steps=0)
    if tl_major() < 4:
        with pytest.raises(ma.MethodError, match="TransformerLens 4"):
            lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, backend="transformer_lens")
    else:
        with pytest.raises(ma.MethodError, match="direction='denoise'"):
            lk.head_attribution(tiny_model, CLEAN, CORRUPT, TARGET, direction="noise", backend="transformer_lens")
