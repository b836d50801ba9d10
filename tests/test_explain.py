"""``ma.explain``: the trust rule on both sides of its thresholds (fake methods whose scores the
test computes itself), the verdicts on real prompts (zoo models; one SmolLM2 check), the object's
views, the CLI, and that the user's model is left as it came."""

from __future__ import annotations

import json
import math

import pytest
import torch

import mechattr as ma
from mechattr.explain import explain, trust_rule
from mechattr.explain.verdict import decide
from mechattr.contract import MethodOutput

from conftest import model_unchanged

RECALL = "so you the capital of quentaris so is"  # zoo:recall, answer "rivenby"
AGREE_PROMPT = ("the house under the old box", "is")  # zoo:agreement: trusted methods agree
DISAGREE_PROMPT = ("the big girls on the boxes", "are")  # zoo:agreement: trusted methods disagree


@pytest.fixture(scope="module")
def recall():
    return ma.load_model("zoo:recall")


@pytest.fixture(scope="module")
def agreement():
    return ma.load_model("zoo:agreement")


def deletion_effects(model, text: str, answer: str) -> torch.Tensor:
    """f(x) - f(x with token i cut out), f = log p(answer) at the last position; the BOS and the
    last token (where the prediction is read) are never cut. Written here, independently of mechattr."""
    a = ma.as_adapter(model)
    toks = a.tokenize(text)[0]
    tid = a.tokenize(answer)[0][-1]

    def logp(t: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.log_softmax(model(t[None])[0, -1].double(), -1)[tid])

    full = logp(toks)
    eff = torch.zeros(len(toks), dtype=torch.float64)
    for i in range(1, len(toks) - 1):
        eff[i] = full - logp(torch.cat([toks[:i], toks[i + 1:]]))
    return eff


def fake(scores: torch.Tensor):
    def fn(ctx):
        return MethodOutput(scores[None].float().clone())

    return fn


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = torch.argsort(torch.argsort(x)).double()
    ry = torch.argsort(torch.argsort(y)).double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


# ---- the trust rule ---------------------------------------------------------------------------
def test_trust_rule_each_condition_on_both_sides():
    others = {"frequency": 5.0, "position": 6.0, "recency": 7.0}
    ok = trust_rule(8.0, 4.0, 1.0, others, 0.6, margin=1.0, min_ablation_corr=0.5)
    assert ok.trusted and all(ok.beats.values()) and ok.agrees_with_ablation
    # random: the bar is mean + margin * std = 4 + 3.99 (passes) / 4 + 4.01 (fails)
    assert trust_rule(8.0, 4.0, 1.0, others, 0.6, margin=3.99).trusted
    r = trust_rule(8.0, 4.0, 1.0, others, 0.6, margin=4.01)
    assert not r.trusted and r.beats == {"random": False, "frequency": True, "position": True, "recency": True}
    assert "random" in r.reason
    for c in others:  # each deterministic control, just below and just above the method's AOPC
        assert trust_rule(8.0, 4.0, 1.0, {**others, c: 7.99}, 0.6).trusted
        r = trust_rule(8.0, 4.0, 1.0, {**others, c: 8.0}, 0.6)  # a tie does not beat it
        assert not r.trusted and not r.beats[c] and c in r.reason
    assert trust_rule(8.0, 4.0, 1.0, others, 0.5).trusted
    r = trust_rule(8.0, 4.0, 1.0, others, 0.499)
    assert not r.trusted and not r.agrees_with_ablation and "does not agree" in r.reason
    assert not trust_rule(8.0, 4.0, 1.0, others, float("nan")).trusted


def test_fake_methods_on_both_sides_of_the_thresholds(recall):
    truth = deletion_effects(recall, RECALL, "rivenby")
    good = fake(truth)
    bad = fake(-truth)
    ex = explain(recall, RECALL, "rivenby", methods=[("good", good), ("bad", bad)])
    by = {m.label: m for m in ex.methods}
    assert by["good"].trust.trusted and not by["bad"].trust.trusted
    assert by["good"].trust.ablation_spearman == pytest.approx(1.0)
    assert by["bad"].trust.ablation_spearman == pytest.approx(-1.0)
    # mechattr's deletion effects are the ones computed above
    free = ex.free
    assert [ex.deletion_effects[p] for p in free] == pytest.approx([float(truth[p]) for p in free], abs=1e-4)
    assert ex.verdict.status == "single" and ex.trusted == ["good"]
    top2 = sorted(free, key=lambda p: -float(truth[p]))[:2]
    assert [m["position"] for m in ex.matter] == top2

    # ablation threshold: a method whose ranking swaps the two largest effects has a Spearman
    # below 1 (computed here); the rule flips when min_ablation_corr crosses it
    s = truth.clone()
    i, j = top2
    s[i], s[j] = truth[j], truth[i]
    rho = spearman(s[free], truth[free])
    assert rho < 1
    hi = explain(recall, RECALL, "rivenby", methods=[("swapped", fake(s))], min_ablation_corr=rho - 0.01)
    lo = explain(recall, RECALL, "rivenby", methods=[("swapped", fake(s))], min_ablation_corr=rho + 0.01)
    assert hi.methods[0].trust.agrees_with_ablation and not lo.methods[0].trust.agrees_with_ablation
    assert not lo.methods[0].trust.trusted and lo.verdict.status == "none" and not lo.matter
    # deletion threshold: margin just below / above the method's z-score against random orderings
    t = hi.methods[0].trust
    z = (t.deletion_aopc - hi.controls["random"]["aopc"]) / hi.controls["random"]["std"]
    assert z > 0
    below = explain(recall, RECALL, "rivenby", methods=[("swapped", fake(s))], min_ablation_corr=rho - 0.01, margin=z - 0.01)
    above = explain(recall, RECALL, "rivenby", methods=[("swapped", fake(s))], min_ablation_corr=rho - 0.01, margin=z + 0.01)
    assert below.methods[0].trust.beats["random"] and not above.methods[0].trust.beats["random"]
    assert not above.methods[0].trust.trusted


def test_position_and_recency_controls_are_their_orderings(recall):
    """A fake method that ranks earliest-first scores exactly the position control's AOPC, so it
    does not beat it (a tie), and likewise latest-first against recency."""
    n = len(ma.as_adapter(recall).tokenize(RECALL)[0])
    early = fake(torch.arange(n, 0, -1).double())
    late = fake(torch.arange(1, n + 1).double())
    ex = explain(recall, RECALL, "rivenby", methods=[("early", early), ("late", late)])
    by = {m.label: m.trust for m in ex.methods}
    assert by["early"].deletion_aopc == pytest.approx(ex.controls["position"]["aopc"])
    assert by["late"].deletion_aopc == pytest.approx(ex.controls["recency"]["aopc"])
    assert not by["early"].beats["position"] and not by["late"].beats["recency"]


# ---- verdicts ----------------------------------------------------------------------------------
def test_verdict_logic_with_fake_score_maps():
    toks = ["<bos>", "a", "b", "c", "d"]
    free = [1, 2, 3, 4]
    m1 = torch.tensor([0, 3.0, 2.0, 0.1, 0.0])
    m2 = torch.tensor([0, 1.0, 5.0, 0.2, -1.0])
    m3 = torch.tensor([0, 0.1, 0.2, 5.0, 3.0])
    assert decide({}, toks, free, 2, 3).status == "none"
    v = decide({"m1": m1, "m2": m2}, toks, free, 2, 3)
    assert v.status == "agree" and v.tokens == [2, 1] and "'b' and 'a'" in v.text  # consensus (1+.4)/2 < (.67+1)/2
    v = decide({"m1": m1, "m3": m3}, toks, free, 2, 3)
    assert v.status == "disagree" and v.text.startswith("methods disagree") and v.tokens == []
    v = decide({"m3": m3}, toks, free, 2, 3)
    assert v.status == "single" and v.tokens == [3, 4]


def test_agreeing_prompt_gets_a_confident_answer(agreement):
    # Methods pinned: with the whole thorough set, IG (top: 'box') and CP-LRP (one positive token)
    # are trusted too on this prompt and the verdict is, rightly, "methods disagree".
    ex = explain(agreement, *AGREE_PROMPT, methods=["input_x_gradient", "occlusion", "shapley"])
    assert ex.verdict.status == "agree" and len(ex.trusted) >= 2
    assert ex.verdict.text.startswith("all trusted methods")
    assert "house" in [m["token"].strip() for m in ex.matter]


def test_disagreeing_prompt_gets_methods_disagree(agreement):
    with model_unchanged(agreement):
        ex = explain(agreement, *DISAGREE_PROMPT, budget="thorough")
    assert ex.verdict.status == "disagree" and len(ex.trusted) >= 2
    assert ex.verdict.text.startswith("methods disagree")
    assert ex.matter == []  # no confident answer on the card
    page = ex.to_html()
    assert "methods disagree" in page and "Tokens that matter" not in page


# ---- the object --------------------------------------------------------------------------------
def test_views_budget_and_heads(recall, tmp_path):
    with model_unchanged(recall):
        ex = explain(recall, RECALL, "rivenby", counterfactual="so you the capital of ostrava so is")
    assert [m.label for m in ex.methods][:2] == ["input_x_gradient", "occlusion"]
    assert {m.label for m in ex.methods} <= {"input_x_gradient", "occlusion", "attnlrp", "cp_lrp", "gim"}
    assert ex.replacement == "delete" and set(ex.controls) == {"random", "frequency", "position", "recency"}
    assert ex.prediction["prob"] == pytest.approx(math.exp(ex.prediction["value"]))
    assert ex.counterfactual is not None and ex.heads["carry"] and all(h["score"] > 0 for h in ex.heads["carry"])
    assert "EAP-IG" in ex.heads["source"]
    df = ex.to_dataframe()
    assert set(df["method"]) == {m.label for m in ex.methods} and len(df) == len(ex.methods) * len(ex.tokens)
    d = json.loads(ex.to_json(tmp_path / "ex.json"))
    assert d["verdict"]["status"] == ex.verdict.status and (tmp_path / "ex.json").exists()
    s = ex.summary()
    assert "verdict:" in s and "occlusion" in s
    shown = ex.show()
    if shown is not None:  # IPython installed: the page in an iframe
        assert "answer-card" in shown.data
    text = ex.to_html(tmp_path / "ex.html")
    assert text.index('id="answer-card"') < text.index("Token maps")
    assert text.count("<details>") >= 3 and "<details open" not in text
    assert "Content-Security-Policy" in text and "<script src" not in text and "<link" not in text


def test_bad_input(recall):
    with model_unchanged(recall), pytest.raises(ma.InputError, match="same token length"):
        explain(recall, RECALL, "rivenby", counterfactual="so you the capital")  # raises late, after the checks
    with pytest.raises(ma.InputError, match="budget"):
        explain(recall, RECALL, "rivenby", budget="slow")
    with pytest.raises(ma.InputError, match="one target"):
        explain(recall, RECALL, ["rivenby", "daskel"])
    with pytest.raises(ma.InputError, match="top_k"):
        explain(recall, RECALL, "rivenby", top_k=0)
    with pytest.raises(ma.InputError):
        explain(recall, RECALL, "rivenby", counterfactual="so you")


def test_cli_explain(tmp_path, capsys):
    from mechattr.cli import main

    out = tmp_path / "e.html"
    assert main(["explain", "zoo:recall", RECALL, "-t", "rivenby", "--html", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert out.exists() and "verdict:" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["target"] == "rivenby"
    assert main(["explain", "zoo:recall", "so", "-t", "rivenby"]) == 2  # one token: a clear error
    assert "at least 2" in capsys.readouterr().err


@pytest.mark.smollm
def test_smollm2_paris_names_france_and_capital():
    m = ma.load_model("smollm2-135m")
    ex = explain(m, "The capital of France is", " Paris", counterfactual="The capital of Italy is")
    assert {t["token"] for t in ex.matter} == {" France", " capital"}
    eff = {t["token"]: t["deletion_effect"] for t in ex.matter}
    # measured independently (issue #16): deleting ' France' costs 6.0 nats, ' capital' 6.8
    assert eff[" France"] == pytest.approx(6.0, abs=0.15) and eff[" capital"] == pytest.approx(6.8, abs=0.15)
    assert "occlusion" in ex.trusted and "input_x_gradient" not in ex.trusted
    page = ex.to_html()
    card = page[page.index('id="answer-card"'):page.index("Evidence")]
    assert "Methods trusted on this prompt" in card and "deletion beats every control" in card
    assert "capital" in card and "France" in card and "Heads that carry it" in card


def test_words_outside_the_vocabulary_are_named_on_the_card_and_warned(agreement, tmp_path) -> None:
    """A zoo model reads words it does not know as <unk>: the call warns with the words, and the
    answer card and the summary say so (before, the page silently explained '<unk>')."""
    with pytest.warns(ma.UnknownTokenWarning, match="'cat'"):
        ex = explain(agreement, "the cat under the old box", "is", methods=["input_x_gradient", "occlusion"])
    assert ex.diagnostics["unknown words"] == ["cat"]
    assert "'cat'" in ex.summary() and "vocabulary" in ex.summary()
    page = ex.to_html()
    assert "has no token for" in page and "cat" in page.split("has no token for", 1)[1][:200]
    # a prompt the model knows: no warning, nothing on the card
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ma.UnknownTokenWarning)
        ok = explain(agreement, *AGREE_PROMPT, methods=["input_x_gradient", "occlusion"])
    assert ok.diagnostics["unknown words"] == []
    assert "vocabulary" not in ok.summary()
