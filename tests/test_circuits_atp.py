"""AtP* (method="atp_star") in its batched form equals the straightforward implementation it
replaced (mechattr before this change): one run per layer, port and writer chunk for the
attention-saturation fix, and one forward + backward per dropped layer for GradDrop. That slow
form is kept here, unchanged, as the reference."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from einops import einsum
from torch import Tensor

import mechattr as ma
from mechattr.circuits import attribution as A
from mechattr.circuits.attribution import G  # the graph module (ma.circuits.graph is a function)
from mechattr.circuits._core import metric as _metric
from mechattr.circuits.graph import Graph
from mechattr.errors import MethodError
from mechattr.tl import hooks as hk

from .conftest import model_unchanged


# ----- the reference: the former implementation ------------------------------------------------
def slow_pattern_shifts(adapter, graph: Graph, toks: Tensor, delta: Tensor, batch_size: int) -> dict[tuple[int, str], Tensor]:
    """AtP*'s attention-saturation fix (Kramár et al. 2024, §3.1): for every writer w below layer
    l, the attention patterns of layer l recomputed exactly (softmax included) with w's Δ added
    to the query inputs (port q) or the key inputs (port k) of the layer's heads, minus the
    unpatched patterns: {(layer, port): [writer, head, query pos, key pos]}. The heads of a layer
    do not interact before their patterns, so one batch row patches all of them at once."""
    out: dict[tuple[int, str], Tensor] = {}
    wst = torch.tensor(graph.writer_stage)
    for layer in range(graph.n_layers):
        pname = hk.attn_pattern(layer)
        n_avail = int((wst < 2 * layer + 1).sum())
        with G.split_flags(adapter), torch.no_grad():
            base = adapter.run_until(toks, pname)
            for port, hook in (("q", G.q_in(layer)), ("k", G.k_in(layer))):
                chunks = []
                for i in range(0, n_avail, batch_size):
                    d = delta[:, i : min(n_avail, i + batch_size)].permute(1, 0, 2)  # b p d

                    def add(x: Tensor, hook: Any, d: Tensor = d) -> Tensor:
                        return x + d[:, :, None, :].to(x.dtype)

                    pat = adapter.run_until(toks.expand(d.shape[0], -1), pname, fwd_hooks=[(hook, add)])
                    chunks.append(pat - base)
                out[(layer, port)] = torch.cat(chunks)
    return out


def slow_atp_star(adapter, graph, pp, toks, delta, here: Capture, per_position: bool, batch_size: int = 8) -> Tensor:
    """AtP* (Kramár et al. 2024): the query/key edges scored through the exactly recomputed
    attention pattern, (A'(w) − A) · ∂m/∂A, and GradDrop over layers for every edge:
    Σ_l |s_l| / (L − 1) with the sign of the undropped estimate s."""
    if per_position:
        raise MethodError("atp_star has no per-position scores (its query/key edges sum over query-key "
                          "position pairs); use per_position=False or another method.")
    shifts = slow_pattern_shifts(adapter, graph, toks, delta, max(batch_size, 64))
    rhooks = graph.reader_hooks()
    L, H, g = graph.n_layers, graph.n_heads, graph.group

    def one(drop_layer: int | None) -> Tensor:
        taps: dict[str, Tensor] = {}

        def tap(name: str):
            def fn(x: Tensor, hook: Any) -> Tensor:
                d = torch.zeros_like(x, requires_grad=True)
                taps[name] = d
                return x + d

            return fn

        def drop(x: Tensor, hook: Any) -> Tensor:
            # forward value unchanged, no gradient back through this layer's residual write
            return x.detach()

        hooks: list = []
        if drop_layer is not None:
            hooks.append((G.attn_out(drop_layer), drop))
            if graph.has_mlp:
                hooks.append((G.mlp_out(drop_layer), drop))
        pnames = [hk.attn_pattern(layer) for layer in range(L)]
        names_all = [n for n, _, _ in rhooks] + pnames
        hooks += [(n, tap(n)) for n in names_all]
        with G.split_flags(adapter), torch.enable_grad():
            m = _metric(adapter, pp.plan, toks, None, hooks)
            names = [n for n in names_all if n in taps]
            gs = torch.autograd.grad(m.sum(), [taps[n] for n in names], allow_unused=True)
        got = {n: gr for n, gr in zip(names, gs)}
        parts = []
        for n, _, sl in rhooks:
            gr = got.get(n)
            k = sl.stop - sl.start
            parts.append(torch.zeros(1, toks.shape[-1], k, adapter.d_model, dtype=adapter.dtype, device=adapter.device)
                         if gr is None else G.as_heads(gr))
        s = torch.einsum("pwd,prd->wr", delta, torch.cat(parts, dim=2)[0]).double()
        for layer in range(L):
            ga = got.get(pnames[layer])
            lr = graph.layer_readers(layer)
            for port in ("q", "k"):
                dA = shifts[(layer, port)]  # w h q k
                n_w = dA.shape[0]
                if ga is None:
                    val = torch.zeros(n_w, H, dtype=torch.float64)
                else:
                    val = einsum(dA.double(), ga[0].double(), "w h q k, h q k -> w h")
                if port == "k" and g > 1:
                    val = val.reshape(n_w, H // g, g).sum(-1)
                sl = lr[port]
                s[:n_w, sl] = val.to(s.device)
        return s

    plain = one(None)
    if L < 2:
        return plain
    tot = torch.zeros_like(plain)
    for layer in range(L):
        tot = tot + one(layer).abs()
    return tot / (L - 1) * torch.sign(plain)


# ----- the comparison ---------------------------------------------------------------------------
CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"
TGT, FOIL = " Paris", " Rome"


@pytest.mark.parametrize("which", ["tiny_model", "tiny_gqa"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_atp_star_equals_the_reference(which: str, direction: str, request: pytest.FixtureRequest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = request.getfixturevalue(which)
    pairs = ([CLEAN, "The capital of Spain is"], [CORRUPT, "The capital of Japan is"])
    kw: dict[str, Any] = {"contrast": FOIL, "direction": direction}
    with model_unchanged(model):
        fast = ma.circuits.edge_attribution(model, *pairs, TGT, method="atp_star", batch_size=3, **kw)
    monkeypatch.setattr(A, "_atp_star", slow_atp_star)
    slow = ma.circuits.edge_attribution(model, *pairs, TGT, method="atp_star", **kw)
    scale = float(slow.scores.abs().max())
    assert scale > 0
    err = float((fast.scores - slow.scores).abs().max()) / scale
    print(f"\n{which} {direction}: max |batched - reference| / max |score| = {err:.2e}")
    assert err <= 1e-5
    # the query/key edges really go through the pattern term (they differ from plain eap)
    eap = ma.circuits.edge_attribution(model, *pairs, TGT, method="eap", **kw)
    assert not torch.allclose(fast.scores, eap.scores, atol=1e-6 * scale)
