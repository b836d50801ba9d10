"""Fallbacks that used to be silent now say so (issue 19, item 11): a failed fast-path self-check
warns once with the reason, a config field that cannot be set raises (when results depend on it)
or warns (when only a label does), and ``has_hook`` reports a missing name as missing but any other
failure to attach as a HookError with the reason."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

import mechattr as ma
from mechattr.errors import ConfigWarning, FastPathWarning, HookError, MechattrWarning, ModelError
from mechattr.tl import fastpath
from mechattr.tl.loading import set_cfg_field

PROMPT = "The capital of France is"


@pytest.fixture()
def bridge():
    return ma.load_model("tiny-gpt2", kind="bridge")


def test_a_failed_fast_path_self_check_warns_once_with_the_reason(bridge, monkeypatch):
    real = fastpath.FastPath.logits
    monkeypatch.setattr(fastpath.FastPath, "logits", lambda self, *a, **k: real(self, *a, **k) + 1.0)
    a = ma.as_adapter(bridge)
    with pytest.warns(FastPathWarning, match=r"self-check \(logits differ by up to 1"):
        assert a.fast_path() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", MechattrWarning)
        assert a.fast_path() is None  # same model state: no second warning
        ma.attribute(bridge, PROMPT, " Paris", method="saliency", quiet=True)


def test_a_raising_fast_forward_is_named_in_the_warning(bridge, monkeypatch):
    def broken(self, *args, **kw):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(fastpath.FastPath, "logits", broken)
    with pytest.warns(FastPathWarning, match="raised RuntimeError: Expected all tensors"):
        assert ma.as_adapter(bridge).fast_path() is None


def test_a_passing_self_check_does_not_warn(bridge):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MechattrWarning)
        assert ma.as_adapter(bridge).fast_path() is not None


@dataclasses.dataclass(frozen=True)
class _FrozenCfg:
    model_name: str = "x"
    default_prepend_bos: bool = False


class _FrozenModel:
    cfg = _FrozenCfg()


def test_a_config_field_that_cannot_be_set_raises_or_warns():
    with pytest.raises(ModelError, match=r"default_prepend_bos = True \(FrozenInstanceError"):
        set_cfg_field(_FrozenModel(), "default_prepend_bos", True, required=True)
    with pytest.warns(ConfigWarning, match=r"model_name = 'zoo:x' \(FrozenInstanceError"):
        set_cfg_field(_FrozenModel(), "model_name", "zoo:x", required=False)
    ok = type("M", (), {})()
    ok.cfg = type("C", (), {})()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MechattrWarning)
        set_cfg_field(ok, "default_prepend_bos", True, required=True)
    assert ok.cfg.default_prepend_bos is True


def test_the_zoo_and_smollm_loaders_refuse_a_config_whose_bos_policy_cannot_be_set(monkeypatch):
    import mechattr.tl.smollm as smollm
    import mechattr.zoo as zoo

    monkeypatch.setattr(zoo, "from_local_dir", lambda *a, **k: _FrozenModel())
    with pytest.raises(ModelError, match="default_prepend_bos"):
        zoo._loader("agreement")("bridge", "cpu", None)
    monkeypatch.setattr(smollm, "from_local_dir", lambda *a, **k: _FrozenModel())
    monkeypatch.setattr(smollm, "checkpoint_dir", lambda: None)
    with pytest.raises(ModelError, match="default_prepend_bos"):
        smollm.load_smollm2("bridge", "cpu", None)


def test_has_hook_missing_is_false_other_failures_raise(bridge, monkeypatch):
    a = ma.as_adapter(bridge)
    assert a.has_hook("blocks.0.hook_resid_pre")
    assert not a.has_hook("blocks.0.hook_no_such_thing")

    def broken_hooks(*args, **kw):
        raise RuntimeError("backend cannot attach here")

    monkeypatch.setattr(bridge, "hooks", broken_hooks)
    with pytest.raises(HookError, match="could not attach a hook at 'blocks.0.hook_no_such_thing'.*backend cannot attach"):
        a.has_hook("blocks.0.hook_no_such_thing")
