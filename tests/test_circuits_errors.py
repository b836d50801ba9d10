"""mechattr.circuits: bad input gets a clear MechattrError; the model leaves every call as it came
(hooks, weights, flags, TransformerLens' split-hook config), also when a call fails half-way; and
grouped-query SmolLM2 works (TransformerLens 4.3's own edge tool refuses it)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError, MechattrError, ModelError, TargetError

from .conftest import TL_MAJOR, model_unchanged

CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"
FLAGS = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in", "use_attn_in")


def flags(model: Any) -> dict[str, Any]:
    return {f: getattr(model.cfg, f, None) for f in FLAGS}


def test_bad_input_errors(tiny_model: Any) -> None:
    before = flags(tiny_model)
    with model_unchanged(tiny_model):
        with pytest.raises(InputError, match="same token length"):
            ma.circuits.edge_attribution(tiny_model, CLEAN, "The capital of the United Kingdom is", " Paris")
        with pytest.raises(TargetError, match="undefined"):
            ma.circuits.faithfulness(tiny_model, [], CLEAN, CLEAN, " Paris")
        res = ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, " Paris", contrast=" Rome", method="eap")
        for b in (0, 1.5, -0.1, True):
            with pytest.raises(InputError, match=r"\(0, 1\]"):
                res.circuit(b)
        with pytest.raises(InputError, match=r"\(0, 1\]"):
            ma.circuits.faithfulness_curve(tiny_model, res, CLEAN, CORRUPT, " Paris", budgets=[0.1, 2.0])
        with pytest.raises(InputError, match="Unknown node"):
            ma.circuits.patch(tiny_model, CLEAN, CORRUPT, " Paris", nodes=["a9.h0"])
        with pytest.raises(InputError, match="Unknown reader"):
            ma.circuits.faithfulness(tiny_model, [("input", "a0.h9<q>")], CLEAN, CORRUPT, " Paris")
        with pytest.raises(InputError, match="Unknown writer"):
            ma.circuits.patch(tiny_model, CLEAN, CORRUPT, " Paris", edges=["a7.h1->logits"])
        with pytest.raises(InputError, match="no edge"):
            ma.circuits.patch(tiny_model, CLEAN, CORRUPT, " Paris", edges=[("a1.h0", "a0.h1<q>")])
        with pytest.raises(MechattrError):
            ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, " Paris", method="acdc")
        with pytest.raises(MechattrError):
            ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, " Paris", direction="sideways")
    assert flags(tiny_model) == before


def test_attention_output_not_a_sum_of_heads(tiny_model: Any) -> None:
    """A hook that rescales the attention output per position (as a post-attention norm would)
    makes the head -> reader edges undefined; the call refuses and leaves the model as it came."""
    before = flags(tiny_model)

    def rescale(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x * torch.linspace(0.5, 2.0, x.shape[1])[None, :, None]

    with model_unchanged(tiny_model):
        with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", rescale)]):
            with pytest.raises(ModelError, match="not the sum of its heads"):
                ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, " Paris", method="eap")
    assert flags(tiny_model) == before


@pytest.mark.skipif(TL_MAJOR >= 4, reason="HookedTransformerConfig exists only on TL 3.x")
def test_post_norm_config_refused() -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=50,
                                  act_fn="relu", use_normalization_before_and_after=True, normalization_type="RMS")
    model = HookedTransformer(cfg, tokenizer=ma.load_model("tiny-gpt2").tokenizer)
    with pytest.raises(ModelError, match="sum of heads"):
        ma.circuits.edge_attribution(model, torch.tensor([1, 2, 3]), torch.tensor([1, 4, 3]), 5)


def test_model_unchanged_when_a_call_fails_half_way(tiny_model: Any) -> None:
    calls = {"n": 0}

    def flaky(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:  # inside the gradient pass, with the split hooks switched on
            raise RuntimeError("boom")
        return logits[:, -1, 0]

    before = flags(tiny_model)
    with model_unchanged(tiny_model):
        with pytest.raises(RuntimeError, match="boom"):
            ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, ma.FunctionTarget(flaky), method="eap_ig_inputs")
        calls["n"] = -100
        with pytest.raises(RuntimeError, match="boom"):
            calls["n"] = 1
            ma.circuits.faithfulness(tiny_model, [], CLEAN, CORRUPT, ma.FunctionTarget(flaky))
    assert flags(tiny_model) == before


def test_save_load_mib_and_display_data(tiny_model: Any, tmp_path: Any) -> None:
    res = ma.circuits.edge_attribution(tiny_model, CLEAN, CORRUPT, " Paris", contrast=" Rome",
                                       method="eap_ig_inputs", ig_steps=3, per_position=True)
    assert res.scores_by_pos is not None
    torch.testing.assert_close(res.scores_by_pos.sum(0), res.scores, atol=1e-5, rtol=1e-5)
    res.save(tmp_path / "r")
    back = ma.circuits.EdgeAttribution.load(tmp_path / "r.json")
    assert back.edge_scores == res.edge_scores and back.direction == "denoise"
    mib = res.to_mib_json(budget=0.1)
    assert set(mib["edges"]) == {f"{w}->{r}" for w, r in res.edge_scores}
    assert sum(e["in_graph"] for e in mib["edges"].values()) == len(res.circuit(0.1))
    data = res.to_graph_data(budget=0.1)
    assert data["n_layers"] == 2 and data["direction"] == "denoise" and data["method"] == "eap_ig_inputs"
    assert len(data["nodes"]) == len(res.graph.writers) + 1
    scores = [abs(e["score"]) for e in data["edges"]]
    assert scores == sorted(scores, reverse=True)
    assert len(data["in_circuit"]) == len(res.circuit(0.1))
    df = res.to_dataframe()
    assert len(df) == res.graph.n_edges
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ma.ResultFileError):
        ma.circuits.EdgeAttribution.load(tmp_path / "bad.json")


def alias_of(reader: str) -> str:
    """Another query head of the same kv group: a0.h3<k> -> a0.h4<k>."""
    layer, rest = reader.split(".h")
    return f"{layer}.h{int(rest[:-3]) + 1}{rest[-3:]}"


def test_grouped_query_smollm2() -> None:
    model = ma.load_model("smollm2-135m")
    clean, corrupt = "The capital of France is", "The capital of Italy is"
    g = ma.circuits.graph(model)
    assert (g.n_heads, g.n_kv_heads) == (9, 3)
    # one k and one v reader per kv head, named after the group's first query head
    assert [r for r in g.readers if r.startswith("a0.") and r.endswith("<k>")] == ["a0.h0<k>", "a0.h3<k>", "a0.h6<k>"]
    before = flags(model)
    res = ma.circuits.edge_attribution(model, clean, corrupt, " Paris", contrast=" Rome", method="eap",
                                       keep_patterns=False)
    top = [(w, r) for w, r, _ in res.top_edges(3)]
    kedge = max(((w, r) for (w, r) in res.edge_scores if r.endswith("<k>") and w == "input"),
                key=lambda e: abs(res.edge_scores[e]))
    both = ma.circuits.patch(model, clean, corrupt, " Paris", contrast=" Rome",
                             edges=top + [(kedge[0], alias_of(kedge[1]))])
    exact = both.effects
    # the alias (another query head of the group) is the same physical reader
    assert list(exact)[-1] == f"{kedge[0]}->{kedge[1]}"
    assert flags(model) == before
    assert not any(len(getattr(hp, "_forward_hooks", {})) for hp in model.hook_dict.values())
    print("\nSmolLM2 top edges", res.top_edges(3), "exact", exact)
    for (w, r), v in zip(top, list(exact.values())[:3]):
        assert v * res.edge_scores[(w, r)] > 0  # the strongest estimates have the sign of the truth
    if TL_MAJOR >= 4:
        from transformer_lens.tools.analysis import attribution_patching as ap

        a = ma.as_adapter(model)
        with pytest.raises(ValueError, match="GQA"):
            ap.attribution_patch(model, a.tokenize(clean), a.tokenize(corrupt), lambda l: l[0, -1, 0],
                                 ap.EdgeAttributionConfig(granularity="edge"))
