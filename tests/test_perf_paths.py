"""Performance paths give the plain computation's results: SDPA on the bridge fast path, the
memory estimate's form, activation checkpointing, autocast, prefix reuse for perturbations
(both TL lines), and CUDA runs where a GPU exists (``pytest -m cuda``)."""

from __future__ import annotations

import itertools

import pytest
import torch

import mechattr as ma
from mechattr.contract import Context
from mechattr.tl import fastpath, prefix
from mechattr.tl.adapter import ModelAdapter, as_adapter

from conftest import TL_MAJOR, model_unchanged

PROMPT = "The quick brown fox jumps over the lazy dog and then"
GRADIENT = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 6},
    "smoothgrad": {"n_samples": 4},
    "gradient_shap": {"n_samples": 4},
}
PERTURBATION = {
    "occlusion": {},
    "lime": {"n_samples": 40},
    "kernel_shap": {"n_samples": 40},
    "shapley_sampling": {"n_permutations": 3},
}


@pytest.fixture(scope="module")
def llama_bridge(tmp_path_factory):
    """A tiny random Llama (RoPE, 4 query heads sharing 2 key/value heads), booted as a bridge."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechattr.tl.loading import gpt2_tokenizer

    d = tmp_path_factory.mktemp("tinyrope")
    cfg = LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=50256, eos_token_id=50256, attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(3)
        LlamaForCausalLM(cfg).save_pretrained(str(d))
    gpt2_tokenizer().save_pretrained(str(d))
    return ma.load_model(str(d), kind="bridge")


@pytest.fixture(params=["gpt2", "llama"])
def bridge(request, tiny_bridge, llama_bridge):
    return tiny_bridge if request.param == "gpt2" else llama_bridge


def _run(model, method, monkeypatch, env=None, text=PROMPT, **kw):
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    try:
        return ma.attribute(model, text, method=method, quiet=True, **kw)
    finally:
        for k in env or {}:
            monkeypatch.delenv(k, raising=False)


# ----- 1. SDPA gradient passes -------------------------------------------------------------------
def test_fast_path_runs_sdpa_although_the_model_was_loaded_eager(bridge):
    a = as_adapter(bridge)
    with a.guard():
        fp = a.fast_path()
    assert fp is not None
    assert bridge.original_model.config._attn_implementation == "eager"  # the user's model untouched
    assert fp.attn_implementation == "sdpa" and a.sdpa_passes()


@pytest.mark.parametrize("method", list(GRADIENT))
def test_gradient_methods_equal_with_the_fast_path_on_and_off(bridge, method, monkeypatch):
    with model_unchanged(bridge):
        fast = _run(bridge, method, monkeypatch, **GRADIENT[method])
        plain = _run(bridge, method, monkeypatch, env={"MECHATTR_FAST_PATH": "0"}, **GRADIENT[method])
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=1e-4)


def test_checkpointed_passes_equal_plain_ones(tiny_bridge, monkeypatch):
    plain = _run(tiny_bridge, "integrated_gradients", monkeypatch, n_steps=4)
    seen = []
    orig = torch.utils.checkpoint.checkpoint

    def spy(*a, **kw):
        seen.append(1)
        return orig(*a, **kw)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    with fastpath.options(checkpoint=True):
        ck = _run(tiny_bridge, "integrated_gradients", monkeypatch, n_steps=4)
    assert seen, "checkpointing was not used"
    torch.testing.assert_close(ck.scores, plain.scores, atol=1e-5, rtol=1e-4)


def test_autocast_returns_float32_logits_close_to_float32(tiny_bridge, monkeypatch):
    plain = _run(tiny_bridge, "input_x_gradient", monkeypatch)
    with fastpath.options(autocast="bf16"):
        a = as_adapter(tiny_bridge)
        with a.guard():
            toks = a.tokenize(PROMPT)
            assert a.logits(toks).dtype == torch.float32
        low = _run(tiny_bridge, "input_x_gradient", monkeypatch)
    # completeness is checked against f(x), f(b) evaluated in float32, not under autocast
    kw = {"n_steps": 4, "rule": "gausslegendre"}  # fixed rule: f(x), f(b) from Context.values
    ig32 = _run(tiny_bridge, "integrated_gradients", monkeypatch, **kw)
    with fastpath.options(autocast="bf16"):
        ig16 = _run(tiny_bridge, "integrated_gradients", monkeypatch, **kw)
    assert ig16.diagnostics["f_input"] == ig32.diagnostics["f_input"]
    assert ig16.diagnostics["f_baseline"] == ig32.diagnostics["f_baseline"]
    assert not torch.equal(ig16.scores, ig32.scores)  # the gradient passes did run in bf16
    # bf16 has 8 mantissa bits: close, not equal, on a random tiny model
    assert torch.corrcoef(torch.stack([low.scores.flatten(), plain.scores.flatten()]))[0, 1] > 0.9
    with pytest.raises(ma.errors.MethodError):
        with fastpath.options(autocast="int8"):
            pass


# ----- the memory estimate -----------------------------------------------------------------------
def _ctx(adapter, n_pos):
    _, plan, _ = ma.api.resolve(adapter.model, " ".join(["a"] * (n_pos - 1)))
    return Context(adapter=adapter, plan=plan, memory_mb=64.0)


def test_memory_estimate_has_no_quadratic_term_on_the_sdpa_path(tiny_bridge, monkeypatch):
    a = ModelAdapter(tiny_bridge)
    with a.guard():
        assert a.sdpa_passes()
        per = {n: a.attention_bytes_per_token(n, hook_free=True) for n in (64, 1024, 4096)}
        assert len(set(per.values())) == 1  # no seq_len term
        hooked = [a.attention_bytes_per_token(n, hook_free=False) for n in (64, 128)]
        assert hooked[1] == 2 * hooked[0]  # patterns materialised: linear per token, n^2 per sequence
        act = a.activation_bytes_per_token()
        for n in (16, 32):
            ctx = _ctx(a, n)
            per_seq = (act + per[64]) * ctx.n_pos
            assert ctx.max_batch() == int(64 * 2**20 // per_seq)
            assert ctx.max_batch(hook_free=False) < ctx.max_batch()
    monkeypatch.setenv("MECHATTR_SDPA", "0")
    b = ModelAdapter(tiny_bridge)
    with b.guard():
        assert not b.sdpa_passes()
        assert b.attention_bytes_per_token(128, hook_free=True) == 2 * b.attention_bytes_per_token(64, hook_free=True)


# ----- 2. prefix reuse ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _reuse_even_on_tiny_models(monkeypatch):
    """The tiny test models are overhead-bound, so the cost rule would mostly run them plain;
    a zero per-forward overhead makes every batch reuse the prefix (what these tests check)."""
    monkeypatch.setenv("MECHATTR_PREFIX_OVERHEAD", "0")


def test_the_cost_rule_runs_overhead_bound_batches_plain(tiny_bridge, monkeypatch):
    monkeypatch.setenv("MECHATTR_PREFIX_OVERHEAD", "100000")
    out = ma.attribute(tiny_bridge, PROMPT, method="occlusion", quiet=True)
    d = out.diagnostics["prefix_reuse"]
    assert d["plain_batches"] >= 1 and "backend" not in d and "cheaper" in d["fallback"]


def test_plan_groups_is_optimal_against_brute_force():
    starts = [1, 1, 2, 5, 5, 5, 9, 11]
    P, C = 12, 6

    def cost(groups):
        return sum((e - b) * (P - starts[b]) + C for b, e in groups)

    best = None
    n = len(starts)
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = [0, *cuts, n]
            g = list(zip(bounds[:-1], bounds[1:]))
            best = cost(g) if best is None else min(best, cost(g))
    got = prefix.plan_groups(starts, P, C)
    assert got[0][0] == 0 and got[-1][1] == n and all(a[1] == b[0] for a, b in zip(got, got[1:]))
    assert cost(got) == best
    assert prefix.plan_groups(starts, P, 10**6) == [(0, n)]


def _assert_reuse_equal(model, method, monkeypatch, backend, **kw):
    reused = _run(model, method, monkeypatch, **kw)
    plain = _run(model, method, monkeypatch, env={"MECHATTR_PREFIX_REUSE": "0"}, **kw)
    torch.testing.assert_close(reused.scores, plain.scores, atol=1e-5, rtol=1e-5)
    d = reused.diagnostics["prefix_reuse"]
    assert d.get("backend") == backend, d
    assert d["token_rows_run"] < d["token_rows_plain"]
    assert plain.diagnostics["prefix_reuse"]["fallback"].startswith("turned off")
    return d


@pytest.mark.parametrize("method", list(PERTURBATION))
def test_prefix_reuse_equals_plain_on_the_bridge(bridge, method, monkeypatch):
    with model_unchanged(bridge):
        _assert_reuse_equal(bridge, method, monkeypatch, "hf", **PERTURBATION[method])


@pytest.mark.parametrize("replacement", ["zero", "mean", 0, "plausible"])
def test_prefix_reuse_equals_plain_for_embedding_and_token_replacements(tiny_bridge, replacement, monkeypatch):
    _assert_reuse_equal(tiny_bridge, "occlusion", monkeypatch, "hf", replacement=replacement)


def test_exact_shapley_and_multi_row_targets_reuse(tiny_bridge, monkeypatch):
    _assert_reuse_equal(tiny_bridge, "shapley", monkeypatch, "hf", text="The cat sat on the")
    cont = ma.ForcedContinuation(" mat and slept")
    _assert_reuse_equal(tiny_bridge, "occlusion", monkeypatch, "hf", target=cont)
    fn = ma.FunctionTarget(lambda logits, toks: logits[:, -1].logsumexp(-1))  # reads every position
    _assert_reuse_equal(tiny_bridge, "kernel_shap", monkeypatch, "hf", target=fn, n_samples=30)


def test_bridge_without_fast_path_falls_back_and_says_why(tiny_bridge, monkeypatch):
    monkeypatch.setenv("MECHATTR_FAST_PATH", "0")
    out = ma.attribute(tiny_bridge, PROMPT, method="occlusion", quiet=True)
    assert "MECHATTR_FAST_PATH=0" in out.diagnostics["prefix_reuse"]["fallback"]
    assert "backend" not in out.diagnostics["prefix_reuse"]


def test_a_users_hook_stops_prefix_reuse(tiny_bridge, monkeypatch):
    def double(x, hook):
        return 2 * x

    tiny_bridge.blocks[0].hook_resid_post.add_hook(double)
    try:
        out = ma.attribute(tiny_bridge, PROMPT, method="occlusion", quiet=True)
        assert "fallback" in out.diagnostics["prefix_reuse"]
        ref = _run(tiny_bridge, "occlusion", monkeypatch, env={"MECHATTR_PREFIX_REUSE": "0"})
        torch.testing.assert_close(out.scores, ref.scores)
    finally:
        tiny_bridge.reset_hooks()


@pytest.mark.parametrize("method", ["occlusion", "kernel_shap"])
def test_prefix_reuse_on_hooked_transformer(tiny_hooked, method, monkeypatch):
    kw = {"n_samples": 30} if method == "kernel_shap" else {}
    with model_unchanged(tiny_hooked):
        _assert_reuse_equal(tiny_hooked, method, monkeypatch, "hooked", **kw)
        _assert_reuse_equal(tiny_hooked, "occlusion", monkeypatch, "hooked", replacement="zero")


def test_prefix_reuse_does_not_depend_on_the_batch_split(tiny_bridge, monkeypatch):
    a = _run(tiny_bridge, "kernel_shap", monkeypatch, n_samples=40, batch_size=3)
    b = _run(tiny_bridge, "kernel_shap", monkeypatch, n_samples=40, batch_size=64)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)


# ----- 2b. packed suffixes (one sequence, explicit mask and positions) ----------------------------
PACK = {"MECHATTR_PREFIX_PACK": "force"}


def _assert_packed_equal(model, method, monkeypatch, env=None, **kw):
    packed = _run(model, method, monkeypatch, env={**PACK, **(env or {})}, **kw)
    plain = _run(model, method, monkeypatch, env={"MECHATTR_PREFIX_REUSE": "0", **(env or {})}, **kw)
    torch.testing.assert_close(packed.scores, plain.scores, atol=1e-5, rtol=1e-5)
    d = packed.diagnostics["prefix_reuse"]
    assert d.get("backend") == "hf" and d.get("packed_forwards", 0) >= 1, d
    assert "packing_fallback" not in d
    assert d["token_rows_run"] < d["token_rows_plain"]
    return d


def test_plan_packs_keeps_whole_rows_under_the_budget():
    assert prefix.plan_packs([5, 4, 3, 3, 2, 1], 8) == [(0, 1), (1, 3), (3, 6)]
    assert prefix.plan_packs([9, 2], 8) == [(0, 1), (1, 2)]  # a row over the budget goes alone
    assert prefix.plan_packs([], 8) == []


@pytest.mark.parametrize("method", ["occlusion", "kernel_shap", "lime"])
def test_packed_suffixes_equal_plain_on_the_bridge(bridge, method, monkeypatch):
    with model_unchanged(bridge):
        d = _assert_packed_equal(bridge, method, monkeypatch, **PERTURBATION[method])
    if method == "occlusion":  # one row per free position: exactly the changed suffixes, plus the input once
        n = as_adapter(bridge).tokenize(PROMPT).shape[-1]
        assert d["token_rows_run"] == n + sum(n - s for s in range(1, n))


def test_packed_suffixes_with_embedding_replacement_eager_attention_and_several_rows(tiny_bridge, monkeypatch):
    _assert_packed_equal(tiny_bridge, "occlusion", monkeypatch, replacement="zero")
    _assert_packed_equal(tiny_bridge, "occlusion", monkeypatch, env={"MECHATTR_SDPA": "0"})
    _assert_packed_equal(tiny_bridge, "occlusion", monkeypatch, target=ma.ForcedContinuation(" mat and slept"))


def test_several_packs_and_batches_give_the_same_scores(tiny_bridge, monkeypatch):
    """A budget of one input length forces several packs; later batches use the cached prefix."""
    env = {"MECHATTR_PREFIX_PACK_TOKENS": "1"}
    d = _assert_packed_equal(tiny_bridge, "kernel_shap", monkeypatch, env=env, n_samples=40, batch_size=7)
    assert d["packed_forwards"] > 2


def test_packing_that_does_not_reproduce_the_forward_falls_back_to_groups(tiny_bridge, monkeypatch):
    fp = as_adapter(tiny_bridge).fast_path()
    real = prefix.PrefixRunner._hf_packed

    def broken(self, *a, **kw):
        return real(self, *a, **kw) + 1.0

    monkeypatch.setattr(prefix.PrefixRunner, "_hf_packed", broken)
    fp._packing_ok = None
    try:
        out = _run(tiny_bridge, "occlusion", monkeypatch, env=PACK)
        ref = _run(tiny_bridge, "occlusion", monkeypatch, env={"MECHATTR_PREFIX_REUSE": "0"})
    finally:
        fp._packing_ok = None
    d = out.diagnostics["prefix_reuse"]
    assert "did not reproduce" in d["packing_fallback"] and "packed_forwards" not in d
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-5, rtol=1e-5)


# ----- 3. CUDA -----------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "kernel_shap"])
def test_cuda_matches_cpu(method, tiny_bridge, monkeypatch):
    gpu = ma.load_model("tiny-gpt2", kind="bridge", device="cuda")
    kw = {**GRADIENT, **PERTURBATION}.get(method, {})
    on_gpu = _run(gpu, method, monkeypatch, **kw)
    on_cpu = _run(tiny_bridge, method, monkeypatch, **kw)
    torch.testing.assert_close(on_gpu.scores, on_cpu.scores, atol=1e-4, rtol=1e-3)
    if method == "kernel_shap":
        assert on_gpu.diagnostics["prefix_reuse"]["backend"] == "hf"


@pytest.mark.cuda
@cuda
def test_cuda_autocast_bf16_keeps_float32_completeness_inputs(monkeypatch):
    gpu = ma.load_model("tiny-gpt2", kind="bridge", device="cuda")
    ref = _run(gpu, "integrated_gradients", monkeypatch, n_steps=8)
    with fastpath.options(autocast="bf16"):
        low = _run(gpu, "integrated_gradients", monkeypatch, n_steps=8)
    assert torch.corrcoef(torch.stack([low.scores.flatten(), ref.scores.flatten()]))[0, 1] > 0.9
    assert low.scores.dtype == torch.float32


def test_reagent_probes_reuse_the_prefix(tiny_bridge, monkeypatch):
    kw = {"max_probe_steps": 3, "min_probe_steps": 1, "num_probes": 8}
    reused = _run(tiny_bridge, "reagent", monkeypatch, **kw)
    plain = _run(tiny_bridge, "reagent", monkeypatch, env={"MECHATTR_PREFIX_REUSE": "0"}, **kw)
    torch.testing.assert_close(reused.scores, plain.scores, atol=1e-5, rtol=1e-5)
    assert reused.diagnostics["prefix_reuse"]["backend"] == "hf"


def test_prefix_reuse_on_a_fresh_model_whose_prompt_has_the_self_checks_length():
    """The fast path's first build (and its self-check against the bridge) may happen inside a
    reuse block; the self-check's reference forward must not be taken over by the runner."""
    m = ma.load_model("tiny-gpt2", kind="bridge")
    ids = as_adapter(m).tokenize("The quick brown fox jumps")  # the self-check's own prompt
    out = ma.attribute(m, ids[0], target=" over", method="occlusion", quiet=True)
    assert out.diagnostics["prefix_reuse"]["backend"] == "hf"
