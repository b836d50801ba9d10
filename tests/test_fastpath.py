"""The hook-free Hugging Face forward of a TransformerBridge (mechattr.tl.fastpath): same numbers as
the bridge, never used where a hook must apply, rebuilt when weights are replaced."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.tl import fastpath

from .conftest import model_unchanged

PROMPT = "The capital of France is"


@pytest.fixture()
def bridge():
    """A fresh bridge per test: these tests add hooks and replace weights."""
    return ma.load_model("tiny-gpt2", kind="bridge")


def _bridge_and_fast(a, toks, emb, pos):
    slow = a.logits(toks, embed=emb, positions=pos, _fast=False)
    fast = a.logits(toks, embed=emb, positions=pos)
    return slow, fast


def test_fast_path_reproduces_the_bridge_values_and_gradients(bridge):
    a = ma.as_adapter(bridge)
    assert a.fast_path() is not None
    toks = a.tokenize(PROMPT).expand(3, -1)
    g = torch.Generator().manual_seed(0)
    with a.guard():
        base = a.embed(toks)
        emb = (base + 0.3 * torch.randn(base.shape, generator=g)).requires_grad_(True)
        grads = []
        for use_fast in (False, True):
            v = a.logits(toks, embed=emb, positions=[2, toks.shape[1] - 1], _fast=use_fast).log_softmax(-1)
            (gr,) = torch.autograd.grad(v[:, :, 17].sum(), emb)
            grads.append((v.detach(), gr))
    (v0, g0), (v1, g1) = grads
    assert torch.allclose(v0, v1, atol=1e-5)
    assert torch.allclose(g0, g1, atol=1e-5 * float(g0.abs().max()))
    # and a whole method through the public API: same scores with the fast path off
    with model_unchanged(bridge):
        on = ma.attribute(bridge, PROMPT, " Paris", method="integrated_gradients", quiet=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHATTR_FAST_PATH", "0")
        assert a.fast_path() is None
        off = ma.attribute(bridge, PROMPT, " Paris", method="integrated_gradients", quiet=True)
    assert torch.allclose(on.scores, off.scores, atol=1e-4 * float(off.scores.abs().max()))


def test_a_users_hooks_keep_applying(bridge):
    """A permanent TransformerLens hook, or a plain torch hook on a wrapped module, changes the
    model's function: the fast path must step aside so attributions see the hooked model."""
    a = ma.as_adapter(bridge)
    clean = ma.attribute(bridge, PROMPT, " Paris", method="saliency", quiet=True).scores

    def kill_head0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    bridge.add_hook("blocks.1.attn.hook_z", kill_head0, is_permanent=True)
    try:
        assert a.fast_path() is None
        hooked = ma.attribute(bridge, PROMPT, " Paris", method="saliency", quiet=True).scores
        toks = a.tokenize(PROMPT)
        ref = bridge(toks)[0, -1]  # the hooked model's own forward
        assert torch.allclose(a.logits(toks, positions=[toks.shape[1] - 1])[0, 0], ref, atol=1e-5)
    finally:
        bridge.reset_hooks(including_permanent=True)
    assert not torch.allclose(clean, hooked)
    assert a.fast_path() is not None  # hooks gone: back on

    inner = bridge.blocks[0].mlp
    while "_original_component" in inner._modules:
        inner = inner._modules["_original_component"]
    h = inner.register_forward_hook(lambda m, i, o: o * 0.0)
    try:
        assert a.fast_path() is None
        toks = a.tokenize(PROMPT)
        assert torch.allclose(a.logits(toks)[0], bridge(toks)[0], atol=1e-5)
    finally:
        h.remove()


def test_weights_are_shared_and_replaced_weights_rebuild(bridge):
    a = ma.as_adapter(bridge)
    toks = a.tokenize(PROMPT)
    fp = a.fast_path()
    assert fp is not None
    W = bridge.blocks[0].mlp.out.weight if hasattr(bridge.blocks[0].mlp, "out") else next(bridge.blocks[0].mlp.parameters())
    with torch.no_grad():
        W.mul_(3.0)  # in place: shared, no rebuild needed
    assert a.fast_path() is fp
    slow, fast = _bridge_and_fast(a, toks, None, None)
    assert torch.allclose(slow, fast, atol=1e-5)
    # replace a parameter object: the fast path must notice and rebuild around the new tensor
    owner, name = None, None
    for mod in bridge.modules():
        for pname, p in mod._parameters.items():
            if p is W:
                owner, name = mod, pname
    assert owner is not None
    setattr(owner, name, torch.nn.Parameter(W.detach() * 0.1))
    fp2 = a.fast_path()
    assert fp2 is not None and fp2 is not fp
    slow, fast = _bridge_and_fast(a, toks, None, None)
    assert torch.allclose(slow, fast, atol=1e-5)


def test_a_failed_self_check_falls_back_to_the_bridge(bridge, monkeypatch):
    real = fastpath.FastPath.logits

    def off_by_one(self, *args, **kw):
        return real(self, *args, **kw) + 1.0

    monkeypatch.setattr(fastpath.FastPath, "logits", off_by_one)
    a = ma.as_adapter(bridge)
    assert a.fast_path() is None
    toks = a.tokenize(PROMPT)
    assert torch.allclose(a.logits(toks)[0], bridge(toks)[0], atol=1e-5)


def test_not_for_hooked_transformer_or_hooks_inside_a_call(tiny_model):
    a = ma.as_adapter(tiny_model)
    if a.kind != "bridge":
        assert a.fast_path() is None
        return
    with a.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        assert a.fast_path() is None
    assert a.fast_path() is not None


def test_multi_device_placements_and_failing_forwards_stay_on_the_bridge(bridge, monkeypatch):
    a = ma.as_adapter(bridge)
    om = bridge.original_model
    monkeypatch.setattr(om, "hf_device_map", {"transformer.h.0": 0, "transformer.h.1": 1}, raising=False)
    assert fastpath.FastPath.build(bridge) is None
    monkeypatch.delattr(om, "hf_device_map")
    assert fastpath.FastPath.build(bridge) is not None

    def broken(self, *args, **kw):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(fastpath.FastPath, "logits", broken)
    assert a.fast_path() is None  # the self-check failed quietly; the bridge does the work
    toks = a.tokenize(PROMPT)
    assert torch.allclose(a.logits(toks)[0], bridge(toks)[0], atol=1e-5)
