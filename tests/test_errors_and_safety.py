"""Bad input gets a clear MechattrError; the model comes back unchanged, also when a call fails."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.errors import HookError, InputError, MechattrError, MethodError, ModelError, TargetError

from .conftest import model_unchanged

PROMPT = "The capital of France is"


def test_empty_text(tiny_model):
    with pytest.raises(InputError, match="empty"):
        ma.attribute(tiny_model, "", " Paris")


def test_text_longer_than_context(tiny_model):
    n_ctx = ma.as_adapter(tiny_model).n_ctx
    with pytest.raises(InputError, match="context"):
        ma.attribute(tiny_model, " word" * (n_ctx + 5), method="saliency")


def test_forced_continuation_past_context(tiny_model):
    n_ctx = ma.as_adapter(tiny_model).n_ctx
    with pytest.raises(InputError, match="context"):
        ma.attribute(tiny_model, " word" * (n_ctx - 2), ma.ForcedContinuation(" a b c d e"), method="saliency")


def test_unknown_method_suggests(tiny_model):
    with pytest.raises(MethodError, match="Did you mean 'integrated_gradients'"):
        ma.attribute(tiny_model, PROMPT, method="integrated_gradient")


def test_unknown_param_lists_valid(tiny_model):
    with pytest.raises(MethodError, match="n_steps"):
        ma.attribute(tiny_model, PROMPT, method="ig", n_step=5)


def test_unknown_baseline(tiny_model):
    with pytest.raises(MethodError, match="Unknown baseline"):
        ma.attribute(tiny_model, PROMPT, method="ig", baseline="blank")


def test_baseline_token_the_tokenizer_lacks(tiny_model):
    with pytest.raises(MethodError, match="no mask token"):
        ma.attribute(tiny_model, PROMPT, method="ig", baseline="mask")


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n_steps(tiny_model, n):
    with pytest.raises(MethodError, match="n_steps"):
        ma.attribute(tiny_model, PROMPT, method="ig", n_steps=n)


def test_unknown_rule(tiny_model):
    with pytest.raises(MethodError, match="integration rule"):
        ma.attribute(tiny_model, PROMPT, method="ig", rule="simpson")


def test_multi_token_target(tiny_model):
    with pytest.raises(TargetError, match="ForcedContinuation"):
        ma.attribute(tiny_model, PROMPT, " Parisians and Londoners")


def test_contrast_equal_to_target(tiny_model):
    with pytest.raises(TargetError, match="target itself"):
        ma.attribute(tiny_model, PROMPT, " is", contrast=" is")


def test_contrast_without_target(tiny_model):
    with pytest.raises(TargetError):
        ma.attribute(tiny_model, PROMPT, None, contrast=" is")


@pytest.mark.parametrize("pos", [6, 100, -7])
def test_position_out_of_range(tiny_model, pos):
    with pytest.raises(InputError, match="out of range"):
        ma.attribute(tiny_model, PROMPT, " Paris", position=pos, method="saliency")


def test_unknown_kind(tiny_model):
    with pytest.raises(TargetError, match="kind"):
        ma.attribute(tiny_model, PROMPT, " Paris", kind="odds")


def test_hook_the_model_lacks(tiny_model):
    a = ma.as_adapter(tiny_model)
    with pytest.raises(HookError, match="blocks.0.hook_resid_pre"):
        a.check_hook("blocks.0.hook_resid_prex")
    assert a.check_hook("blocks.0.hook_resid_pre")
    with pytest.raises(HookError):
        a.run_until(a.tokenize("a b"), "blocks.9.hook_resid_post")


def test_not_a_tl_model():
    with pytest.raises(ModelError, match="TransformerLens"):
        ma.attribute(torch.nn.Linear(2, 2), PROMPT)


def test_bad_model_spec(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        ma.load_model(str(tmp_path))
    f = tmp_path / "x.txt"
    f.write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        ma.load_model(str(f))
    with pytest.raises(ModelError, match="kind"):
        ma.load_model("tiny-gpt2", kind="fast")


def test_token_ids_out_of_vocab(tiny_model):
    with pytest.raises(InputError, match="Token ids"):
        ma.attribute(tiny_model, torch.tensor([1, 2, 10**7]), method="saliency")


def test_all_errors_share_one_base():
    for cls in (InputError, TargetError, MethodError, ModelError, HookError, ma.ResultFileError):
        assert issubclass(cls, MechattrError)


class Boom(RuntimeError):
    pass


def test_fault_half_way_leaves_model_unchanged(tiny_model, monkeypatch):
    """Inject a failure in the middle of IG (after some batches ran with hooks attached)."""
    from mechattr import contract

    calls = {"n": 0}
    real = contract.Context.max_batch

    def tiny_batches(self, with_grad=True, hook_free=True):
        return 2

    orig_eval = None

    def failing_evaluate(self, adapter, tokens, embed=None, fwd_hooks=()):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("injected")
        return orig_eval(self, adapter, tokens, embed, fwd_hooks)

    from mechattr import targets

    orig_eval = targets.LogitPlan.evaluate
    monkeypatch.setattr(contract.Context, "max_batch", tiny_batches)
    monkeypatch.setattr(targets.LogitPlan, "evaluate", failing_evaluate)
    tiny_model.train()  # a user who left the model in train mode gets it back in train mode
    try:
        with model_unchanged(tiny_model):
            with pytest.raises(Boom):
                ma.attribute(tiny_model, PROMPT, " Paris", method="ig", n_steps=10)
        assert calls["n"] == 3
    finally:
        tiny_model.eval()
    monkeypatch.setattr(contract.Context, "max_batch", real)


def test_fault_inside_a_hook_leaves_no_hooks(tiny_model):
    a = ma.as_adapter(tiny_model)

    def bad(x, hook):
        raise Boom("inside hook")

    with model_unchanged(tiny_model):
        with pytest.raises(Boom):
            a.run_until(a.tokenize("a b c"), a.final_resid_hook, fwd_hooks=[("blocks.0.hook_resid_pre", bad)])


def test_requires_grad_flags_restored(tiny_model):
    params = list(tiny_model.parameters())
    params[0].requires_grad_(False)
    try:
        with model_unchanged(tiny_model):
            ma.attribute(tiny_model, PROMPT, " Paris", method="saliency")
    finally:
        params[0].requires_grad_(True)


def test_nested_guards_restore_once_at_the_outermost(tiny_model):
    """Guards nest (a library call inside a library call): only the outermost one captures and
    restores, inner ones keep eval mode; a failure inside still gives the model back unchanged."""
    a = ma.as_adapter(tiny_model)
    tiny_model.train()
    try:
        with model_unchanged(tiny_model):
            with a.guard():
                assert not any(m.training for m in tiny_model.modules())
                with a.guard():
                    tiny_model.train()  # something inside switches training on ...
                    with a.guard():  # ... the next inner guard switches it off again
                        assert not tiny_model.training
                assert not tiny_model.training
            assert all(m.training for m in tiny_model.modules())
            with pytest.raises(Boom):
                with a.guard():
                    with a.guard():
                        raise Boom("inner")
            assert a._guard_depth == 0
    finally:
        tiny_model.eval()


def test_gradient_passes_freeze_the_weights_and_give_them_back(tiny_model):
    """Gradients are taken with respect to inputs only, so the weights' requires_grad is off
    during the passes (a faster backward) and back on afterwards, also after a failure."""
    seen = []

    def f(logits, tokens):
        if torch.is_grad_enabled():
            seen.append(any(p.requires_grad for p in tiny_model.parameters()))
        return logits[:, -1, 17]

    with model_unchanged(tiny_model):
        ma.attribute(tiny_model, PROMPT, ma.FunctionTarget(f), method="saliency", quiet=True)
    assert seen and not any(seen)
    assert all(p.requires_grad for p in tiny_model.parameters())

    def broken(logits, tokens):
        if torch.is_grad_enabled():
            raise Boom("inside a gradient pass")
        return logits[:, -1, 17]

    with model_unchanged(tiny_model):
        with pytest.raises(Boom):
            ma.attribute(tiny_model, PROMPT, ma.FunctionTarget(broken), method="saliency", quiet=True)


def test_a_model_the_user_lets_go_of_is_freed():
    """The per-model adapter cache (and the fast path it holds) must not keep a model alive."""
    import gc
    import weakref

    m = ma.load_model("tiny-gpt2")
    ref = weakref.ref(m)
    a = ma.as_adapter(m)
    ma.attribute(m, PROMPT, " Paris", method="saliency", quiet=True)
    assert ma.as_adapter(m) is a  # cached while the model lives
    del m
    gc.collect()
    assert ref() is None
    with pytest.raises(ModelError, match="deleted"):
        a.tokenize("x")
