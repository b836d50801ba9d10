"""SAE features: feature targets, the batched token → feature map, feature → output effects (also
with frozen attention/norm scales), on a plain SAE built here, a real sae_lens.SAE (TL 3 lane) and
the zoo's SAE."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import mechattr as ma
import mechattr.linking as lk
from mechattr.tl.adapter import tl_major

from .conftest import model_unchanged

PROMPT = "The cat and the dog sat on the"
HOOK = "blocks.0.hook_resid_post"


class PlainSAE(torch.nn.Module):
    """A ReLU SAE written here: f = relu((x - b_dec) W_enc + b_enc)."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.b_enc = torch.nn.Parameter(torch.full((d_sae,), 0.05))
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.cfg = SimpleNamespace(hook_name=HOOK)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre(x))


@pytest.fixture(scope="module")
def sae(tiny_model: Any) -> PlainSAE:
    return PlainSAE(tiny_model.cfg.d_model, 48)


def _resid(model: Any, tokens: torch.Tensor, embed: torch.Tensor | None, hooks: list = ()) -> torch.Tensor:
    box: dict[str, torch.Tensor] = {}
    hs = list(hooks) + [(HOOK, lambda x, hook: box.__setitem__("x", x))]
    if embed is not None:
        hs.insert(0, ("hook_embed", lambda x, hook: embed))
    with model.hooks(fwd_hooks=hs):
        model(tokens)
    return box["x"]


def _warm_up(model: Any) -> None:
    """TL 4 bridges install their own module hooks the first time hooks are used (plain TL calls
    too); do that once before checking that we leave none."""
    hooks = [(n, lambda x, hook: None) for n in ("blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern", HOOK)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(ma.as_adapter(model).tokenize("a b"))


def test_token_feature_map_matches_one_backward_per_feature(tiny_model: Any, sae: PlainSAE) -> None:
    a = ma.as_adapter(tiny_model)
    _warm_up(tiny_model)
    toks = a.tokenize(PROMPT)
    pos = toks.shape[-1] - 1
    with model_unchanged(tiny_model):
        fmap = lk.token_feature_map(tiny_model, PROMPT, sae, position=-1, k=6)
    assert fmap.dims == ("feature", "target", "src") and fmap.scores.shape[0] == 6
    assert fmap.diagnostics["batched_backward"] is True and fmap.params["frozen"] is False
    emb = a.embed(toks).requires_grad_(True)
    with torch.enable_grad():
        x = _resid(tiny_model, toks, emb)[0, pos]
        pre = sae.pre(x)
        acts = torch.relu(pre).detach()
        feats = fmap.params["features"]
        assert feats == torch.argsort(acts, descending=True)[:6].tolist()
        assert fmap.params["feature_acts"] == pytest.approx(acts[feats].tolist(), abs=1e-5)
        for i, f in enumerate(feats):
            (g,) = torch.autograd.grad(pre[f], emb, retain_graph=True)
            expected = (g * emb.detach())[0].sum(-1)
            expected[0] = 0.0
            assert torch.allclose(fmap.scores[i, 0], expected, atol=1e-5), f
    # The feature as a target through any method agrees (active ReLU: same gradient as pre-act).
    res = ma.attribute(tiny_model, PROMPT, lk.SAEFeature(sae, feats[0]), method="input_x_gradient")
    assert torch.allclose(res.scores[0], fmap.scores[0, 0], atol=1e-5)
    assert res.diagnostics["f_input"][0] == pytest.approx(float(acts[feats[0]]), abs=1e-5)
    ig = ma.attribute(tiny_model, PROMPT, lk.SAEFeature(sae, feats[:2]), method="ig", n_steps=16)
    assert ig.scores.shape[0] == 2 and ig.targets == [f"feature {f}" for f in feats[:2]]


@pytest.mark.parametrize("freeze", [False, True])
def test_feature_direct_effect_is_the_derivative_along_the_decoder(tiny_model: Any, sae: PlainSAE, freeze: bool) -> None:
    """effect_f = act_f · W_dec[f] · ∂T/∂x: checked by central differences of T when act_f · W_dec[f]
    is added at the SAE's hook (frozen case: patterns and norm scales captured here and held)."""
    a = ma.as_adapter(tiny_model)
    toks = a.tokenize(PROMPT)
    pos, tid = 3, a.single_token(" mat")
    # A raw logit and a moderate step keep float32 central differences accurate.
    target = ma.NextToken(" mat", kind="logit")
    fmap = lk.token_feature_map(tiny_model, PROMPT, sae, position=pos, k=4, target=target, freeze=freeze)
    assert fmap.params["frozen"] is freeze
    effects = torch.tensor(fmap.diagnostics["direct_effects"])[:, 0]
    frozen: list = []
    if freeze:
        names = [f"blocks.{l}.{n}" for l in range(a.n_layers) for n in ("attn.hook_pattern", "ln1.hook_scale", "ln2.hook_scale")]
        names.append("ln_final.hook_scale")
        box: dict[str, torch.Tensor] = {}
        with torch.no_grad(), tiny_model.hooks(fwd_hooks=[(n, (lambda n: lambda x, hook: box.__setitem__(n, x))(n)) for n in names]):
            tiny_model(toks)
        frozen = [(n, (lambda n: lambda x, hook: box[n])(n)) for n in names]
    with torch.no_grad():
        x = _resid(tiny_model, toks, None)[0, pos]
        acts = sae.encode(x)
        for i, f in enumerate(fmap.params["features"]):
            step = acts[f] * sae.W_dec[f]
            vals = []
            for eps in (2e-2, -2e-2):
                def add(x: torch.Tensor, hook: Any, eps: float = eps) -> torch.Tensor:
                    x = x.clone()
                    x[0, pos] += eps * step
                    return x

                with tiny_model.hooks(fwd_hooks=frozen + [(HOOK, add)]):
                    vals.append(tiny_model(toks)[0, -1, tid])
            fd = float((vals[0] - vals[1]) / 4e-2)
            assert effects[i] == pytest.approx(fd, rel=2e-2, abs=1e-4), (f, freeze)
    html = lk.linking_page("features", features=fmap)
    assert f"f{fmap.params['features'][0]}" in html and ("yes" if freeze else "no") in html


def test_sae_errors(tiny_model: Any, sae: PlainSAE) -> None:
    with pytest.raises(ma.TargetError, match="not SAE-like"):
        lk.SAEFeature(object(), 0)
    with pytest.raises(ma.TargetError, match="feature id"):
        lk.SAEFeature(sae, 999)
    bare = PlainSAE(tiny_model.cfg.d_model, 8)
    bare.cfg = SimpleNamespace()
    with pytest.raises(ma.TargetError, match="hook="):
        lk.SAEFeature(bare, 0)
    wrong = PlainSAE(10, 8)
    with pytest.raises(ma.TargetError, match="d_in=10"):
        ma.attribute(tiny_model, PROMPT, lk.SAEFeature(wrong, 0, hook=HOOK), method="saliency")
    dead = PlainSAE(tiny_model.cfg.d_model, 8)
    with torch.no_grad():
        dead.b_enc.fill_(-100.0)
    with pytest.raises(ma.TargetError, match="No feature"):
        lk.token_feature_map(tiny_model, PROMPT, dead)


@pytest.mark.skipif(tl_major() >= 4, reason="sae_lens imports only under TransformerLens 3.x (TL 3 lane)")
def test_real_sae_lens_sae_gives_the_same_maps(tiny_model: Any, sae: PlainSAE) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = sae.W_enc.shape
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=HOOK))
    real = StandardSAE(cfg)
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(real, n).copy_(getattr(sae, n))
    assert lk.sae.sae_hook_name(real) == HOOK
    ours = lk.token_feature_map(tiny_model, PROMPT, sae, k=5, target=" mat")
    theirs = lk.token_feature_map(tiny_model, PROMPT, real, k=5, target=" mat")
    assert theirs.params["features"] == ours.params["features"]
    assert torch.allclose(theirs.scores, ours.scores, atol=1e-6)
    assert torch.allclose(
        torch.tensor(theirs.diagnostics["direct_effects"]), torch.tensor(ours.diagnostics["direct_effects"]), atol=1e-6
    )
    r = ma.attribute(tiny_model, PROMPT, lk.SAEFeature(real, ours.params["features"][0]), method="ixg")
    assert torch.allclose(r.scores[0], ours.scores[0, 0], atol=1e-5)


def _zoo_sae_ready() -> bool:
    try:
        from mechattr.zoo import DATA, zoo_models

        return "agreement" in zoo_models() and (DATA / "saes" / "agreement.safetensors").is_file()
    except ImportError:
        return False


@pytest.mark.skipif(not _zoo_sae_ready(), reason="the zoo's agreement SAE is not built in this checkout")
def test_zoo_sae(tmp_path: Any) -> None:
    from mechattr.zoo import load_sae

    model = ma.load_model("zoo:agreement", kind="bridge")  # TL 3 HookedTransformer: see report (d_mlp)
    zsae = load_sae("agreement")
    from mechattr.zoo import get_task

    ex = get_task("agreement").examples(1, seed=1)[0]
    fmap = lk.token_feature_map(model, ex.prompt, zsae, position=-1, k=5, target=ex.answer)
    assert fmap.params["hook"] == zsae.hook and 1 <= fmap.scores.shape[0] <= 5
    back = ma.Attribution.load(fmap.save(tmp_path / "f.safetensors"))
    assert torch.equal(back.scores, fmap.scores) and back.params["features"] == fmap.params["features"]
    print("zoo SAE features", fmap.params["features"], "direct effects", fmap.diagnostics["direct_effects"])
