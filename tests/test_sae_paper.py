"""#19 item 8: SAEs are fed exactly what they were trained on. A fake SAELens-style SAE written
here normalises its input (``normalize_activations="constant_norm_rescale"``: x·sqrt(d_in)/|x|)
and subtracts ``b_dec`` before encoding (``apply_b_dec_to_input``); its decode undoes the
rescaling. The token → feature map and the direct effects are checked against the pre-activation
and the decoder write computed by hand here."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import mechattr as ma
import mechattr.linking as lk

PROMPT = "The cat and the dog sat on the"
HOOK = "blocks.0.hook_resid_post"


class NormalisingSAE(torch.nn.Module):
    """SAELens-like: process_sae_in rescales to norm sqrt(d_in) (and stores the factor, as
    SAELens does), subtracts b_dec; decode divides the factor back out."""

    def __init__(self, d_in: int, d_sae: int, with_process: bool = True, norm: str = "constant_norm_rescale") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.b_enc = torch.nn.Parameter(torch.full((d_sae,), 0.02))
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        self.b_dec = torch.nn.Parameter(0.3 * torch.randn(d_in, generator=g))
        self.cfg = SimpleNamespace(hook_name=HOOK, normalize_activations=norm, apply_b_dec_to_input=True, d_in=d_in)
        if with_process:
            self.process_sae_in = self._process

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True)

    def _process(self, x: torch.Tensor) -> torch.Tensor:
        self.x_norm_coeff = self._scale(x)
        return x * self.x_norm_coeff - self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        c = self._scale(x)
        self.x_norm_coeff = c
        return torch.relu((x * c - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        out = (f @ self.W_dec + self.b_dec) / self.x_norm_coeff
        del self.x_norm_coeff
        return out


def _resid(model: Any, tokens: torch.Tensor, embed: torch.Tensor | None, hooks: list = ()) -> torch.Tensor:
    box: dict[str, torch.Tensor] = {}
    hs = list(hooks) + [(HOOK, lambda x, hook: box.__setitem__("x", x))]
    if embed is not None:
        hs.insert(0, ("hook_embed", lambda x, hook: embed))
    with model.hooks(fwd_hooks=hs):
        model(tokens)
    return box["x"]


@pytest.mark.parametrize("with_process", [True, False])
def test_feature_map_differentiates_the_sae_input_processing(tiny_model: Any, with_process: bool) -> None:
    a = ma.as_adapter(tiny_model)
    d = tiny_model.cfg.d_model
    sae = NormalisingSAE(d, 40, with_process=with_process)
    toks = a.tokenize(PROMPT)
    pos = toks.shape[-1] - 1
    fmap = lk.token_feature_map(tiny_model, PROMPT, sae, position=-1, k=5)
    feats = fmap.params["features"]
    emb = a.embed(toks).requires_grad_(True)
    with torch.enable_grad():
        x = _resid(tiny_model, toks, emb)[0, pos]
        pre = (x * (d**0.5) / x.norm() - sae.b_dec) @ sae.W_enc + sae.b_enc  # by hand
        acts = torch.relu(pre).detach()
        assert feats == torch.argsort(acts, descending=True)[:5].tolist()
        for i, f in enumerate(feats):
            (g,) = torch.autograd.grad(pre[f], emb, retain_graph=True)
            expected = (g * emb.detach())[0].sum(-1)
            expected[0] = 0.0
            torch.testing.assert_close(fmap.scores[i, 0], expected, atol=1e-5, rtol=1e-4)
            # the raw-input direction x·W_enc[:, f] (mechattr before #19) gives another map
            (g_raw,) = torch.autograd.grad(x @ sae.W_enc[:, f], emb, retain_graph=True)
            raw = (g_raw * emb.detach())[0].sum(-1)
            raw[0] = 0.0
            assert float((raw - expected).abs().max()) > 1e-3 * float(expected.abs().max()) + 1e-6
    assert not hasattr(sae, "x_norm_coeff")  # the SAE's run-time state is left as it came


def test_direct_effects_use_the_decoder_write_in_model_units(tiny_model: Any) -> None:
    """effect_f = act_f · (W_dec[f] / c) · ∂T/∂x with c the SAE's input scale, by central
    differences of T when that write is added at the hook."""
    a = ma.as_adapter(tiny_model)
    d = tiny_model.cfg.d_model
    sae = NormalisingSAE(d, 40)
    toks = a.tokenize(PROMPT)
    pos, tid = 3, a.single_token(" mat")
    fmap = lk.token_feature_map(tiny_model, PROMPT, sae, position=pos, k=3, target=ma.NextToken(" mat", kind="logit"))
    effects = torch.tensor(fmap.diagnostics["direct_effects"])[:, 0]
    with torch.no_grad():
        x = _resid(tiny_model, toks, None)[0, pos]
        c = (d**0.5) / x.norm()
        acts = torch.relu((x * c - sae.b_dec) @ sae.W_enc + sae.b_enc)
        for i, f in enumerate(fmap.params["features"]):
            step = acts[f] * sae.W_dec[f] / c
            vals = []
            for eps in (2e-2, -2e-2):
                def add(h: torch.Tensor, hook: Any, eps: float = eps) -> torch.Tensor:
                    h = h.clone()
                    h[0, pos] += eps * step
                    return h

                with tiny_model.hooks(fwd_hooks=[(HOOK, add)]):
                    vals.append(tiny_model(toks)[0, -1, tid])
            fd = float((vals[0] - vals[1]) / 4e-2)
            assert float(effects[i]) == pytest.approx(fd, rel=2e-2, abs=1e-4), f
            assert abs(float(c) - 1.0) > 0.05  # W_dec[f] unscaled (the old write) would differ


def test_unknown_input_normalisation_is_refused(tiny_model: Any) -> None:
    sae = NormalisingSAE(tiny_model.cfg.d_model, 40, with_process=False, norm="whitening")
    with pytest.raises(ma.MechattrError, match="process_sae_in"):
        lk.token_feature_map(tiny_model, PROMPT, sae, position=-1, k=2)
