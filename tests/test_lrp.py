"""AttnLRP, CP-LRP and GIM through TransformerLens hooks, checked against the same rules written
directly on the Hugging Face modules (custom autograd functions, patched in the test only), and
against gim-explain where it imports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError, MechattrError, MethodError
from mechattr.tl.adapter import tl_major

from .conftest import model_unchanged

TEXT = "The capital of France is"
KINDS = ["bridge"] if tl_major() >= 4 else ["hooked", "bridge"]


# ----- tiny models built offline --------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: Any) -> Path:
    from mechattr.tl.loading import make_gpt2_dir

    d = tmp_path_factory.mktemp("lrp-gpt2")
    make_gpt2_dir(d, n_layer=2, n_head=4, n_embd=32, n_positions=64, seed=3)
    return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: Any) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechattr.tl.loading import gpt2_tokenizer

    d = tmp_path_factory.mktemp("lrp-llama")
    cfg = LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attn_implementation="eager", tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(5)
        m = LlamaForCausalLM(cfg)
        # random norm weights, so a norm rule that ignores them would show
        for mod in m.modules():
            if type(mod).__name__ == "LlamaRMSNorm":
                mod.weight.data.uniform_(0.5, 1.5)
    m.save_pretrained(str(d))
    gpt2_tokenizer().save_pretrained(str(d))
    return d


_TL: dict[tuple[str, str], Any] = {}


def tl_model(d: Path, kind: str) -> Any:
    key = (str(d), kind)
    if key not in _TL:
        _TL[key] = ma.load_model(str(d), kind=kind)
    return _TL[key]


def hf_model(d: Path, attn: str = "eager") -> Any:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(d), attn_implementation=attn)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ----- the rules, written again on the HF modules --------------------------------------------------
class ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: float) -> torch.Tensor:
        ctx.s = s
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        return g * ctx.s, None


class IdentityAct(torch.autograd.Function):
    """f(x) forward, g * f(x)/x backward (1/2 where x == 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: Any) -> torch.Tensor:
        y = f(x)
        safe = torch.where(x == 0, torch.ones_like(x), x)
        ctx.save_for_backward(torch.where(x == 0, torch.full_like(x, 0.5), y / safe))
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        (r,) = ctx.saved_tensors
        return g * r, None


class UniformProduct(torch.autograd.Function):
    """a * b (elementwise) or a @ b; each factor gets half the plain gradient."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, matmul: bool) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.matmul = matmul
        return a @ b if matmul else a * b

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        a, b = ctx.saved_tensors
        if ctx.matmul:
            return 0.5 * g @ b.transpose(-1, -2), 0.5 * a.transpose(-1, -2) @ g, None
        return 0.5 * g * b, 0.5 * g * a, None


class SoftmaxT(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, T: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.T = T
        return torch.softmax(x, -1)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        s = torch.softmax(x / ctx.T, -1)
        return s * (g - (g * s).sum(-1, keepdim=True)), None


def patch_rules(mp: pytest.MonkeyPatch, hf: Any, rules: str, box: dict | None = None) -> None:
    """Apply ``rules`` ('attnlrp', 'cp_lrp', 'gim') to the HF model's modules (undone by mp);
    ``box['z']`` collects each layer's head outputs [batch, pos, head, d_head]."""
    from transformers.models.gpt2 import modeling_gpt2
    from transformers.models.llama import modeling_llama

    for mod in hf.modules():
        name = type(mod).__name__
        if isinstance(mod, torch.nn.LayerNorm):
            def ln(h: torch.Tensor, m: Any = mod) -> torch.Tensor:
                mu = h.mean(-1, keepdim=True)
                sd = ((h - mu).pow(2).mean(-1, keepdim=True) + m.eps).sqrt()
                return (h - mu) / sd.detach() * m.weight + m.bias

            mp.setattr(mod, "forward", ln)
        elif name == "LlamaRMSNorm":
            def rms(h: torch.Tensor, m: Any = mod) -> torch.Tensor:
                r = (h.pow(2).mean(-1, keepdim=True) + m.variance_epsilon).sqrt()
                return m.weight * (h / r.detach())

            mp.setattr(mod, "forward", rms)
        elif name == "GPT2MLP" and rules != "gim":
            act = mod.act

            def mlp(h: torch.Tensor, m: Any = mod, f: Any = act) -> torch.Tensor:
                return m.c_proj(IdentityAct.apply(m.c_fc(h), f))

            mp.setattr(mod, "forward", mlp)
        elif name == "LlamaMLP" and rules != "gim":
            def gmlp(h: torch.Tensor, m: Any = mod) -> torch.Tensor:
                a = IdentityAct.apply(m.gate_proj(h), m.act_fn)
                return m.down_proj(UniformProduct.apply(a, m.up_proj(h), False))

            mp.setattr(mod, "forward", gmlp)

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  scaling: Any = None, dropout: float = 0.0, **kw: Any) -> Any:
        rep = getattr(module, "num_key_value_groups", 1)
        if rules == "gim":
            query, key, value = ScaleGrad.apply(query, 0.25), ScaleGrad.apply(key, 0.25), ScaleGrad.apply(value, 0.5)
        k = key.repeat_interleave(rep, dim=1)
        v = value.repeat_interleave(rep, dim=1)
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        if rules == "attnlrp":  # uniform rule on both matrix products
            s = UniformProduct.apply(query, k.transpose(-1, -2), True) * scaling
        else:
            s = query @ k.transpose(-1, -2) * scaling
        if attention_mask is not None:
            s = s + attention_mask
        if rules == "gim":
            A = SoftmaxT.apply(s, 2.0)
        else:
            A = torch.softmax(s, -1)
        if rules == "cp_lrp":
            out = A.detach() @ v
        elif rules == "attnlrp":
            out = UniformProduct.apply(A, v, True)
        else:
            out = A @ v
        out = out.transpose(1, 2).contiguous()
        if box is not None:
            box.setdefault("z", []).append(out)
        return out, A

    mp.setattr(modeling_gpt2, "eager_attention_forward", attention)
    mp.setattr(modeling_llama, "eager_attention_forward", attention)


def hf_relevance(hf: Any, ids: list[int], target_id: int, kind: str = "log_prob",
                 box: dict | None = None, hidden: int | None = None) -> Any:
    """Input relevance [pos]; with ``box``, also each layer's head relevance [head, pos]; with
    ``hidden=l``, also (residual before layer l, its gradient)."""
    emb = hf.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    with torch.enable_grad():
        out = hf(inputs_embeds=emb, use_cache=False, output_hidden_states=hidden is not None)
        logits = out.logits[0, -1]
        v = torch.log_softmax(logits, -1)[target_id] if kind == "log_prob" else logits[target_id]
        extra = list(box["z"]) if box is not None else []
        if hidden is not None:
            extra.append(out.hidden_states[hidden])
        g, *gz = torch.autograd.grad(v, [emb] + extra)
    inp = (emb * g).sum(-1)[0].detach()
    if box is None and hidden is None:
        return inp
    heads = None
    if box is not None:
        heads = torch.stack([
            (z * gg).reshape(*z.shape[:2], hf.config.num_attention_heads, -1).sum(-1)[0].T
            for z, gg in zip(box["z"], gz[: len(box["z"])])
        ]).detach()
    res = (out.hidden_states[hidden][0].detach(), gz[-1][0].detach()) if hidden is not None else None
    return inp, heads, res


# ----- independent references ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rules_match_hf_reference(arch: str, kind: str, gpt2_dir: Path, llama_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    d = gpt2_dir if arch == "gpt2" else llama_dir
    model = tl_model(d, kind)
    hf = hf_model(d)
    mine = {
        m: ma.attribute(model, TEXT, " Paris", method=m, attribute_bos=True, quiet=True)
        for m in ("attnlrp", "cp_lrp", "gim", "input_x_gradient")
    }
    ids = mine["attnlrp"].token_ids
    tid = int(mine["attnlrp"].target_token_ids[0])
    plain = hf_relevance(hf, ids, tid)
    assert torch.allclose(mine["input_x_gradient"].token_scores(), plain, atol=1e-5)  # same weights
    for rules in ("attnlrp", "cp_lrp", "gim"):
        with monkeypatch.context() as mp:
            patch_rules(mp, hf, rules)
            ref = hf_relevance(hf, ids, tid)
        got = mine[rules].token_scores()
        assert (ref - plain).abs().max() > 1e-4, f"{rules}: the reference equals the plain gradient"
        assert torch.allclose(got, ref, atol=1e-5, rtol=0), f"{arch}/{kind}/{rules}: {got} vs {ref}"


def _gim_module() -> Any:
    try:
        import gim  # noqa: F401
        from gim import explain
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"gim-explain is not importable here ({type(e).__name__}: {e}); pip install gim-explain")
    return explain


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gim_matches_gim_explain(attn: str, gpt2_dir: Path) -> None:
    """gim-explain on HF GPT-2 applies its softmax patch with eager attention and its q/k/v scales
    through scaled_dot_product_attention only, so each attention implementation checks one of
    them (norm freezing in both); mechattr runs the same subset."""
    explain = _gim_module()
    model = tl_model(gpt2_dir, KINDS[0])
    hf = hf_model(gpt2_dir, attn)
    space = ma.as_adapter(model).single_token(" ")
    if attn == "eager":
        theirs_kw = {"softmax_temperature": 2.0, "q_scale": None, "k_scale": None, "v_scale": None}
        mine_kw = {"q_scale": 1.0, "k_scale": 1.0, "v_scale": 1.0}
    else:
        theirs_kw = {"softmax_temperature": None}
        mine_kw = {"temperature": 1.0}
    res = ma.attribute(model, TEXT, " Paris", method="gim", kind="logit", baseline=" ",
                       attribute_bos=True, quiet=True, **mine_kw)
    ids = torch.tensor([res.token_ids])
    theirs = explain(hf, ids, target_token_id=int(res.target_token_ids[0]), baseline_token_id=space, **theirs_kw)
    assert torch.allclose(res.token_scores(), theirs.float(), atol=1e-4, rtol=0)


# ----- properties ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS[:1])
def test_cp_lrp_conserves_exactly_on_bias_free_model(kind: str, llama_dir: Path) -> None:
    model = tl_model(llama_dir, kind)
    res = ma.attribute(model, TEXT, " Paris", method="cp_lrp", kind="logit", attribute_bos=True,
                       layers=True, quiet=True)
    d = res.diagnostics
    logit = d["target_value"][0]
    assert abs(logit) > 1e-3
    assert d["conservation_relative_error_input"] < 1e-4
    assert len(d["conservation_error_per_layer"]) == model.cfg.n_layers + 1
    assert max(d["conservation_relative_error_per_layer"]) < 1e-4
    # every layer's relevance sums to the logit; the token scores are layer 0's (no positions)
    assert torch.allclose(res.scores.sum(-1)[:, 0].double(), torch.full((3,), logit, dtype=torch.float64), rtol=1e-4)
    # AttnLRP's softmax rule is not conservative: the diagnostic must be able to say so
    lrp = ma.attribute(model, TEXT, " Paris", method="attnlrp", kind="logit", attribute_bos=True, quiet=True)
    assert lrp.diagnostics["conservation_relative_error_input"] > 1e-4


def test_model_and_later_gradients_unchanged(tiny_model: Any) -> None:
    a = ma.as_adapter(tiny_model)
    toks = a.tokenize(TEXT)
    with torch.no_grad():
        before = tiny_model(toks).clone()
    ixg = ma.attribute(tiny_model, TEXT, " Paris", method="input_x_gradient", quiet=True).scores
    with model_unchanged(tiny_model):
        for m in ("attnlrp", "cp_lrp", "gim"):
            ma.attribute(tiny_model, TEXT, " Paris", method=m, layers=True, quiet=True)
    with model_unchanged(tiny_model):
        def boom(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            raise ValueError("target failed")

        with pytest.raises(Exception):
            ma.attribute(tiny_model, TEXT, boom, method="attnlrp", quiet=True)
    with torch.no_grad():
        assert torch.equal(tiny_model(toks), before)
    assert torch.equal(ma.attribute(tiny_model, TEXT, " Paris", method="input_x_gradient", quiet=True).scores, ixg)


def test_batch_invariance(tiny_model: Any) -> None:
    from mechattr.api import resolve
    from mechattr.methods.lrp import relevance_pass
    from mechattr.methods.lrp_rules import rule_set

    both = ma.attribute(tiny_model, TEXT, [" Paris", " London"], method="attnlrp", quiet=True)
    for i, t in enumerate([" Paris", " London"]):
        one = ma.attribute(tiny_model, TEXT, t, method="attnlrp", quiet=True)
        assert torch.allclose(both.scores[i], one.scores[0], atol=1e-6)
    adapter, plan, _ = resolve(tiny_model, TEXT, " Paris")
    e = adapter.embed(plan.tokens)
    noise = 0.1 * torch.randn(1, *e.shape[1:], generator=torch.Generator().manual_seed(0))
    with adapter.guard():
        single = relevance_pass(adapter, plan, plan.tokens, e, rule_set("gim")).embed_grad[0, 0]
        batch = relevance_pass(adapter, plan, plan.tokens, torch.cat([e + noise, e]), rule_set("gim")).embed_grad[0, 1]
    # float32 with 2 threads: a batched matmul reduces in another order (measured 2e-5 on values
    # up to 2.8); mixing up batch rows would be off by O(0.1).
    assert torch.allclose(single, batch, rtol=1e-4, atol=1e-4)


def test_bad_input(tiny_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ({"temperature": 0.0}, {"temperature": "2"}, {"q_scale": math.nan}, {"layers": "yes"},
                {"freeze_norm": 1}):
        with pytest.raises(MethodError):
            ma.attribute(tiny_model, TEXT, " Paris", method="gim", quiet=True, **bad)
    with pytest.raises(MechattrError):
        ma.attribute(tiny_model, TEXT, " Paris", method="attnlrp", temperature=2.0, quiet=True)
    # an activation the rules do not cover: named, never a silent plain gradient
    with model_unchanged(tiny_model):
        monkeypatch.setattr(tiny_model.cfg, "act_fn", "xielu")
        with pytest.raises(MethodError, match="act_fn=.xielu."):
            ma.attribute(tiny_model, TEXT, " Paris", method="attnlrp", quiet=True)
        # GIM has no activation rule, so the activation does not matter to it
        ma.attribute(tiny_model, TEXT, " Paris", method="gim", quiet=True)
        # the config says ReLU but the MLP computes GELU: the runtime check catches it
        monkeypatch.setattr(tiny_model.cfg, "act_fn", "relu")
        with pytest.raises(MethodError, match=r"blocks\.0\.mlp"):
            ma.attribute(tiny_model, TEXT, " Paris", method="cp_lrp", quiet=True)
        monkeypatch.undo()
        monkeypatch.setattr(tiny_model.cfg, "normalization_type", "DyT")
        with pytest.raises(MethodError, match="normalization"):
            ma.attribute(tiny_model, TEXT, " Paris", method="gim", quiet=True)
        monkeypatch.undo()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_head_and_sae_relevance_match_hf_reference(arch: str, gpt2_dir: Path, llama_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mechattr.linking import lrp_relevance

    d = gpt2_dir if arch == "gpt2" else llama_dir
    model = tl_model(d, KINDS[0])
    hf = hf_model(d)
    d_model = hf.config.hidden_size
    g = torch.Generator().manual_seed(1)

    class SAE:  # SAE-like: encode, W_enc, b_enc, W_dec, hook
        hook = "blocks.1.hook_resid_pre"
        W_enc = torch.randn(d_model, 16, generator=g)
        b_enc = torch.zeros(16)
        W_dec = torch.randn(16, d_model, generator=g)

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.W_enc + self.b_enc)

    sae = SAE()
    rel = lrp_relevance(model, TEXT, " Paris", rules="attnlrp", sae=sae, k=4)
    res = ma.attribute(model, TEXT, " Paris", method="attnlrp", attribute_bos=True, quiet=True)
    assert torch.allclose(rel.input[0], res.token_scores(), atol=1e-6)
    box: dict = {}
    with monkeypatch.context() as mp:
        patch_rules(mp, hf, "attnlrp", box)
        inp, heads, (h1, g1) = hf_relevance(hf, res.token_ids, int(res.target_token_ids[0]), box=box, hidden=1)
    assert torch.allclose(rel.input[0], inp, atol=1e-5)
    assert torch.allclose(rel.heads[:, :, 0], heads, atol=1e-5)  # [layer, head, pos]
    assert heads.abs().max() > 1e-4
    # SAE latents: act_f * (W_dec[f] . modified gradient) at the SAE's hook, per position
    acts = sae.encode(h1)  # pos f
    ref = acts * (g1 @ sae.W_dec.T)  # pos f
    assert len(rel.features) == 4 and rel.feature_relevance is not None
    assert torch.allclose(rel.feature_relevance[:, 0], ref[:, rel.features].T, atol=1e-5)
    top = ref.sum(0).abs().argsort(descending=True)[:4].tolist()
    assert rel.features == top
    assert rel.heads_attribution().dims == ("layer", "head", "target", "src")
    fa = rel.features_attribution()
    assert fa.dims == ("feature", "target", "src") and fa.params["features"] == rel.features
    try:
        import circuitsvis  # noqa: F401
    except ImportError:
        return
    from mechattr.linking import feature_view, head_view

    head_view(rel.heads_attribution())
    feature_view(fa)


def test_relp_head_attribution(tiny_model: Any) -> None:
    """RelP: head_attribution with the AttnLRP backward equals (a_clean - a_corrupt) . the
    modified gradient at the corrupt run (direction="denoise", the default), and
    (a_corrupt - a_clean) . the modified gradient at the clean run (direction="noise"); the
    gradients are taken from lrp_relevance's pass."""
    from mechattr.api import resolve
    from mechattr.methods.lrp import relevance_pass
    from mechattr.methods.lrp_rules import rule_set

    clean, corrupt = "The capital of France is", "The capital of Spain is"
    with model_unchanged(tiny_model):
        plain = ma.head_attribution(tiny_model, clean, corrupt, " Paris")
        relp = ma.head_attribution(tiny_model, clean, corrupt, " Paris", gradient="attnlrp")
        relp_noise = ma.head_attribution(tiny_model, clean, corrupt, " Paris", gradient="attnlrp", direction="noise")
    assert relp.method == "relp_attnlrp" and plain.method == "attribution_patching"
    assert not torch.allclose(relp.heads, plain.heads)
    adapter, plan, _ = resolve(tiny_model, clean, " Paris")
    _, cplan, _ = resolve(tiny_model, corrupt, " Paris")
    names = [f"blocks.{l}.attn.hook_z" for l in range(2)]
    with adapter.guard():
        runs = {
            (which, rules): relevance_pass(adapter, p, p.tokens, adapter.embed(p.tokens), rule_set(rules), taps=names)
            for which, p in (("clean", plan), ("corrupt", cplan))
            for rules in ("attnlrp", "plain")
        }
    def want(grad_at: str, sign: float) -> torch.Tensor:
        g = runs[(grad_at, "attnlrp")]
        a_clean, a_corr = runs[("clean", "plain")].acts, runs[("corrupt", "plain")].acts
        return torch.stack(
            [(sign * (a_clean[n][0] - a_corr[n][0]) * g.grads[n][0, 0]).sum(-1).sum(0) for n in names]
        ).float()

    assert torch.allclose(relp.heads, want("corrupt", 1.0), atol=1e-5)
    assert torch.allclose(relp_noise.heads, want("clean", -1.0), atol=1e-5)
    with pytest.raises(MethodError):
        ma.head_attribution(tiny_model, clean, corrupt, " Paris", gradient="lrp-eps")


def test_registered_everywhere(tiny_model: Any, tmp_path: Path, capsys: Any) -> None:
    """CLI, displays, validation and dataset runs take the new methods like any other."""
    from mechattr.cli import main

    html = tmp_path / "a.html"
    assert main(["attribute", "tiny-gpt2", TEXT, "-m", "attnlrp", "-t", " Paris", "-p", "layers=True",
                 "--html", str(html)]) == 0
    assert html.exists() and "conservation" in capsys.readouterr().out
    res = ma.attribute(tiny_model, TEXT, " Paris", method="gim", quiet=True)
    assert "France" in res.to_html()
    rep = ma.validate(tiny_model, [TEXT], " Paris", methods=["attnlrp", "cp_lrp"], checks=["perturbation"], quiet=True)
    assert "attnlrp" in str(rep) and "cp_lrp" in str(rep)
    run = ma.attribute_dataset(tiny_model, [TEXT, "The key to the cabinets"], method="cp_lrp", quiet=True,
                               out_dir=tmp_path / "ds")
    assert run.n_items == 2 and [r.method for r in run.load()] == ["cp_lrp", "cp_lrp"]


def test_probe_target_read_at_an_inner_layer(tiny_model: Any) -> None:
    """A probe at an inner hook stops the forward there: the rules apply to the layers before it
    (no 'hook never fired' error for the layers that never ran) and change its relevance."""
    d = tiny_model.cfg.d_model
    w = torch.randn(d, generator=torch.Generator().manual_seed(2))
    probe = ma.LinearProbe(w, hook="blocks.1.hook_resid_pre")
    res = ma.attribute(tiny_model, TEXT, probe, method="attnlrp", quiet=True)
    assert res.scores.abs().max() > 0
    plain = ma.attribute(tiny_model, TEXT, probe, method="input_x_gradient", quiet=True)
    assert not torch.allclose(res.scores, plain.scores)


# ----- LXT (the AttnLRP authors' library) as a stored reference ------------------------------------
LXT_REF = Path(__file__).parent / "data" / "lxt_reference.json"


@pytest.fixture(scope="module")
def lxt_models(tmp_path_factory: Any) -> dict[str, Any]:
    """The two tiny models of scripts/make_lxt_reference.py, rebuilt here (their weights depend on
    a seed and the parameter names only), loaded as TransformerLens models."""
    sys_path = str(Path(__file__).resolve().parent.parent / "scripts")
    import sys

    sys.path.insert(0, sys_path)
    try:
        import make_lxt_reference as R
    finally:
        sys.path.remove(sys_path)
    from mechattr.tl.loading import gpt2_tokenizer

    out = {}
    for arch in ("gpt2", "llama"):
        d = tmp_path_factory.mktemp(f"lxt-{arch}")
        R.build(arch, d)
        gpt2_tokenizer().save_pretrained(str(d))
        out[arch] = ma.load_model(str(d), kind=KINDS[-1])
    return out


@pytest.mark.parametrize("arch, rule", [("gpt2", "attnlrp"), ("gpt2", "cp_lrp"), ("llama", "attnlrp"), ("llama", "cp_lrp")])
def test_rules_equal_lxt(arch: str, rule: str, lxt_models: dict[str, Any]) -> None:
    """mechattr equals LXT 2.1's efficient AttnLRP / CP-LRP maps on the same weights (values
    computed by LXT with transformers 4.55, where it imports: scripts/make_lxt_reference.py).
    LXT's CP-LRP holds a Llama MLP's gate constant: mechattr's cp_lrp(gate="constant"); its
    default (the uniform product rule it shares with AttnLRP) differs there, and the test says so."""
    import json

    ref_all = json.loads(LXT_REF.read_text())
    case = next(c for c in ref_all["cases"] if c["arch"] == arch and c["rule"] == rule)
    ref = torch.tensor(case["relevance"])
    ids = torch.tensor(ref_all["ids"])

    def rel(**kw: Any) -> torch.Tensor:
        return ma.attribute(lxt_models[arch], ids, ref_all["target"], kind="logit", method=rule,
                            attribute_bos=True, prepend_bos=False, quiet=True, **kw).token_scores()

    tol = 1e-5 * float(ref.abs().max())
    plain = ma.attribute(lxt_models[arch], ids, ref_all["target"], kind="logit", method="input_x_gradient",
                         attribute_bos=True, prepend_bos=False, quiet=True).token_scores()
    assert (plain - ref).abs().max() > 100 * tol  # the rules change the answer here
    if arch == "llama" and rule == "cp_lrp":
        got = rel(gate="constant")
        assert (rel() - ref).abs().max() > 100 * tol  # the default gated rule is not LXT's
    else:
        got = rel()
    assert torch.allclose(got, ref, atol=tol, rtol=0), f"{arch}/{rule}: {got} vs LXT {ref}"


def test_cp_lrp_gate_option_is_checked(tiny_model: Any) -> None:
    with pytest.raises(MethodError, match="gate must be"):
        ma.attribute(tiny_model, TEXT, " Paris", method="cp_lrp", gate="sideways", quiet=True)


def test_cp_lrp_gate_from_the_cli(llama_dir: Path, capsys: Any, tmp_path: Path) -> None:
    """`-p gate=constant` reaches the method from the CLI: on a gated (Llama) MLP the CLI's scores
    equal the API's with the same option and differ from the default's; a bad value is an error."""
    import json

    from mechattr.cli import main

    model = tl_model(llama_dir, KINDS[-1])
    got = {}
    for gate in ("constant", "uniform"):
        out = tmp_path / f"{gate}.json"
        assert main(["attribute", str(llama_dir), TEXT, "-m", "cp_lrp", "-t", " Paris", "--kind", "logit",
                     "-p", f"gate={gate}", "--json", str(out)]) == 0
        got[gate] = torch.tensor(json.loads(out.read_text())["scores"]).reshape(-1)
        api = ma.attribute(model, TEXT, " Paris", kind="logit", method="cp_lrp", gate=gate, quiet=True)
        assert torch.allclose(got[gate], api.token_scores().reshape(-1), atol=1e-6, rtol=0)
    assert (got["constant"] - got["uniform"]).abs().max() > 1e-4
    assert main(["attribute", str(llama_dir), TEXT, "-m", "cp_lrp", "-t", " Paris", "-p", "gate=sideways"]) != 0
    assert "gate must be" in capsys.readouterr().err


def test_token_ids_outside_the_vocabulary(lxt_models: dict[str, Any]) -> None:
    """A tokenizer larger than the model (here GPT-2's BOS id 50256 against a 7,000-token model)
    is a clear InputError, not an index error deep in the embedding."""
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        ma.attribute(lxt_models["llama"], torch.tensor([50256, 464, 3139]), 6342, method="saliency", quiet=True)
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        ma.attribute(lxt_models["llama"], TEXT, " Paris", method="saliency", quiet=True, prepend_bos=True)
