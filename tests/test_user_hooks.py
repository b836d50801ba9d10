"""A hook the user has on the model when a call starts applies to that call, every time (issue 19,
item 10): hooks added after the bridge fast path was built, forward pre-hooks, hooks on submodules,
hooks on the Hugging Face modules the bridge runs (``model.original_model`` and its base model,
which are not submodules of the bridge) and TransformerLens hook-point hooks. The reference for
each case is the same call with the fast path switched off, which always runs the bridge; a hook
that raises must surface."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma

PROMPT = "The capital of France is"
METHODS = [("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 4, "rule": "gausslegendre"}), ("occlusion", {})]


@pytest.fixture(scope="module")
def bridge():
    m = ma.load_model("tiny-gpt2", kind="bridge")
    for name, kw in METHODS:  # the first calls build (and self-check) the fast path
        ma.attribute(m, PROMPT, " Paris", method=name, quiet=True, **kw)
    assert ma.as_adapter(m).fast_path() is not None
    return m


def _scale(out, k=0.5):
    if isinstance(out, tuple):
        return (out[0] * k,) + tuple(out[1:])
    if hasattr(out, "last_hidden_state"):  # a Hugging Face ModelOutput
        out.last_hidden_state = out.last_hidden_state * k
        return out
    if hasattr(out, "logits"):
        out.logits = out.logits * k
        return out
    return out * k


def _inner(mod):
    while "_original_component" in mod._modules:
        mod = mod._modules["_original_component"]
    return mod


# Each case: where to register, what to register. Every one changes the model's function.
CASES = {
    "block forward hook": lambda m: m.blocks[0].register_forward_hook(lambda mod, i, o: _scale(o)),
    "block forward pre-hook": lambda m: m.blocks[1].register_forward_pre_hook(
        lambda mod, args: tuple(a * 0.5 if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    ),
    "submodule hook": lambda m: m.blocks[0].mlp.register_forward_hook(lambda mod, i, o: _scale(o, 3.0)),
    "wrapped HF submodule hook": lambda m: _inner(m.blocks[1].mlp).register_forward_hook(lambda mod, i, o: _scale(o, 0.0)),
    # not a submodule of the bridge, but the bridge runs it (so its hooks apply there)
    "HF dropout pre-hook": lambda m: m.original_model.base_model.drop.register_forward_pre_hook(
        lambda mod, args: (args[0] * 0.5,)
    ),
}


class _TLHandle:
    def __init__(self, m):
        self.m = m

    def remove(self):
        self.m.reset_hooks(including_permanent=True)


def _tl_hook(m):
    def kill_head0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    m.add_hook("blocks.1.attn.hook_z", kill_head0, is_permanent=True)
    return _TLHandle(m)


CASES["TransformerLens hook point"] = _tl_hook
CASES["global module hook"] = lambda m: torch.nn.modules.module.register_module_forward_hook(
    lambda mod, i, o: _scale(o) if mod is m.blocks[0] else None
)


@pytest.mark.parametrize("case", list(CASES))
def test_a_hook_added_after_the_fast_path_was_built_applies(bridge, case, monkeypatch):
    clean = {n: ma.attribute(bridge, PROMPT, " Paris", method=n, quiet=True, **kw).scores for n, kw in METHODS}
    handle = CASES[case](bridge)
    try:
        hooked = {n: ma.attribute(bridge, PROMPT, " Paris", method=n, quiet=True, **kw).scores for n, kw in METHODS}
        with monkeypatch.context() as mp:
            mp.setenv("MECHATTR_FAST_PATH", "0")
            ref = {n: ma.attribute(bridge, PROMPT, " Paris", method=n, quiet=True, **kw).scores for n, kw in METHODS}
    finally:
        handle.remove()
    for n, _ in METHODS:
        assert not torch.allclose(clean[n], ref[n], atol=1e-6), f"{case}: the hook does not change {n}"
        tol = 1e-5 * float(ref[n].abs().max()) + 1e-7
        assert torch.allclose(hooked[n], ref[n], atol=tol), f"{case}: {n} ignored the user's hook"
    # and once removed, the model is back to the clean function (fast path again)
    again = ma.attribute(bridge, PROMPT, " Paris", method="input_x_gradient", quiet=True).scores
    assert torch.allclose(again, clean["input_x_gradient"], atol=1e-6)


@pytest.mark.parametrize("where", ["block", "HF base model", "HF root model"])
def test_an_exception_in_a_users_hook_surfaces_every_time(bridge, where):
    class Boom(RuntimeError):
        pass

    def boom(mod, i, o):
        raise Boom("the user's hook ran")

    target = {"block": bridge.blocks[0], "HF base model": bridge.original_model.base_model}.get(where, bridge.original_model)
    h = target.register_forward_hook(boom)
    try:
        for n, kw in METHODS:
            for _ in range(2):
                with pytest.raises(Boom):
                    ma.attribute(bridge, PROMPT, " Paris", method=n, quiet=True, **kw)
    finally:
        h.remove()
    ma.attribute(bridge, PROMPT, " Paris", method="input_x_gradient", quiet=True)
