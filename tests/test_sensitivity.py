"""Baseline sensitivity (issue #17 item 3): every named baseline's tensor checked directly, the
completeness of each attribution against f(b) computed here with a plain hook, the agreement
statistics against scipy, the verdict on both sides of its thresholds, skipped rows, bad input,
the CLI flag, the report section, and the model left as it came."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from scipy import stats as sps

import mechattr as ma
from mechattr.cli import main
from mechattr.sensitivity import parse_baselines, sensitivity_verdict

from .conftest import model_unchanged

PROMPT = "The capital of France is"
CF = "The capital of Italy is"  # same token length under the GPT-2 tokenizer
IG = {"n_steps": 24, "rule": "gausslegendre"}


def _embed(model: Any, ids: list[int]) -> torch.Tensor:
    """Token embeddings straight from W_E (the hook_embed output of GPT-2-style models)."""
    return model.W_E.detach()[torch.tensor(ids)].clone()


def _f_with_embed(model: Any, ids: list[int], emb: torch.Tensor, target_id: int) -> float:
    """log p(target | prompt) with the token embedding replaced by ``emb``: a plain hook, no mechattr."""
    with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: emb[None].to(x))]):
        logits = model(torch.tensor([ids]))
    return float(torch.log_softmax(logits[0, -1].double(), -1)[target_id])


@pytest.fixture(scope="module")
def sens(tiny_model: Any) -> Any:
    with model_unchanged(tiny_model):
        return ma.baseline_sensitivity(
            tiny_model, PROMPT, " Paris",
            baselines=["zero", "pad", "mask", "mean", "uniform", "gaussian", f"prompt:{CF}"],
            top_k=2, **IG,
        )


def _expected(model: Any, ids: list[int]) -> dict[str, torch.Tensor]:
    """The deterministic baselines, built here from W_E; the BOS position keeps the input."""
    x = _embed(model, ids)
    W_E = model.W_E.detach()
    tok = model.tokenizer
    out = {
        "zero": torch.zeros_like(x),
        "pad": W_E[tok.pad_token_id].expand_as(x).clone(),
        "mean": W_E.mean(0).expand_as(x).clone(),
        "prompt:" + CF: _embed(model, [tok.bos_token_id] + tok(CF, add_special_tokens=False)["input_ids"]),
    }
    for e in out.values():
        e[0] = x[0]
    return out


def test_each_baseline_tensor_is_what_its_name_says(tiny_model: Any, sens: Any) -> None:
    ids = sens.attributions["zero"].token_ids
    W_E = tiny_model.W_E.detach()
    expected = _expected(tiny_model, ids)
    # The mean of a random W_E is small but not zero: a mean baseline built as zeros must fail.
    assert float(W_E.mean(0).abs().max()) > 1e-5
    for name, e in expected.items():
        got = dict((r.label, r.embedding) for r in sens.rows)[name]
        torch.testing.assert_close(got, e, atol=1e-7, rtol=0, msg=name)
    emb = {r.label: r.embedding for r in sens.rows if r.ok}
    lo, hi = W_E.min(0).values, W_E.max(0).values
    u = emb["uniform"][1:]
    assert bool(((u >= lo) & (u <= hi)).all()) and float(u.std()) > 0
    # not the mean, not a token: spread over the box (a quarter of the box width at least)
    assert float((u.max(0).values - u.min(0).values).mean()) > 0.25 * float((hi - lo).mean())
    g = emb["gaussian"][1:]
    sd = float(W_E.float().std())
    assert abs(float(g.std()) / sd - 1) < 0.25 and abs(float(g.mean())) < 0.25 * sd


def test_random_baselines_follow_the_seed(tiny_model: Any) -> None:
    kw = dict(baselines=["uniform", "gaussian"], n_steps=4, rule="gausslegendre")
    a = ma.baseline_sensitivity(tiny_model, PROMPT, " Paris", seed=1, **kw)
    b = ma.baseline_sensitivity(tiny_model, PROMPT, " Paris", seed=1, **kw)
    c = ma.baseline_sensitivity(tiny_model, PROMPT, " Paris", seed=2, **kw)
    for i in range(2):
        assert torch.equal(a.rows[i].embedding, b.rows[i].embedding)
        assert not torch.equal(a.rows[i].embedding, c.rows[i].embedding)


def test_completeness_against_f_of_each_baseline(tiny_model: Any, sens: Any) -> None:
    """sum of IG scores = f(x) - f(b) with f(b) computed here from the expected baseline tensor:
    an attribution run from any other baseline would miss it."""
    tid = tiny_model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    expected = _expected(tiny_model, sens.attributions["zero"].token_ids)
    for r in sens.rows:
        if not r.ok:
            continue
        ids = r.attribution.token_ids
        fx = _f_with_embed(tiny_model, ids, _embed(tiny_model, ids), tid)
        # random baselines (uniform, gaussian) are checked for their distribution above
        fb = _f_with_embed(tiny_model, ids, expected.get(r.label, r.embedding), tid)
        total = float(r.attribution.token_scores(0).double().sum())
        assert abs(total - (fx - fb)) < 1e-3 + 0.02 * abs(fx - fb), r.label
        assert r.attribution.diagnostics["f_baseline"][0] == pytest.approx(fb, abs=1e-4)
    # The counterfactual differs from the input in one token only: IG gives the others exactly 0.
    cf = sens.attributions["prompt:" + CF].token_scores(0)
    differ = [i for i, (a, b) in enumerate(zip(sens.attributions["zero"].token_ids,
                                                 [0] + tiny_model.tokenizer(CF, add_special_tokens=False)["input_ids"])) if a != b and i > 0]
    assert differ == [4]
    assert bool((cf[[1, 2, 3, 5]] == 0).all()) and float(cf[4]) != 0


def test_agreement_matches_scipy(sens: Any) -> None:
    maps = sens.score_maps()[:, sens.attributed].numpy()
    k = sens.verdict["top_k"]
    for i in range(len(maps)):
        for j in range(len(maps)):
            rho = sps.spearmanr(maps[i], maps[j]).statistic
            tau = sps.kendalltau(maps[i], maps[j]).statistic  # tau-b
            assert float(sens.matrices["spearman"][i, j]) == pytest.approx(rho, abs=1e-9, nan_ok=True)
            assert float(sens.matrices["kendall"][i, j]) == pytest.approx(tau, abs=1e-9, nan_ok=True)
            ti = set(sorted(range(len(maps[i])), key=lambda p: (-abs(maps[i][p]), p))[:k])
            tj = set(sorted(range(len(maps[j])), key=lambda p: (-abs(maps[j][p]), p))[:k])
            assert float(sens.matrices["top_k_overlap"][i, j]) == pytest.approx(len(ti & tj) / k)


def test_skipped_rows_say_why(sens: Any) -> None:
    assert sens.skipped == {"mask": "the tokenizer has no mask token"}
    assert "mask" not in sens.labels
    rows = {r["baseline"]: r for r in sens.summary_rows()}
    assert rows["mask"]["status"].startswith("skipped: the tokenizer has no mask token")
    assert "same token as" in rows["pad"]["note"]  # GPT-2: pad = eos = bos = unk
    text = sens.to_text()
    assert "skipped" in text and "verdict:" in text


def test_zero_is_skipped_where_it_is_degenerate(tiny_gqa: Any) -> None:
    with model_unchanged(tiny_gqa):
        # Without a BOS (as SmolLM2's tokenizer): a fixed BOS would keep the residual non-zero.
        s = ma.baseline_sensitivity(tiny_gqa, PROMPT, " Paris", baselines=["zero", "pad", "mean"],
                                    prepend_bos=False, n_steps=4, rule="gausslegendre")
    assert set(s.skipped) == {"zero"} and "degenerate" in s.skipped["zero"]
    assert s.labels == ["pad", "mean"]
    # With the BOS held fixed the zero point is regular again, and zero runs.
    s = ma.baseline_sensitivity(tiny_gqa, PROMPT, " Paris", baselines=["zero", "mean"], n_steps=2,
                                rule="gausslegendre")
    assert s.skipped == {}


def test_verdict_on_both_sides_of_the_threshold() -> None:
    a = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    b = torch.tensor([4.0, 5.0, 3.0, 0.5, 2.0, 1.0])
    rho = sps.spearmanr(a.numpy(), b.numpy()).statistic
    maps = torch.stack([a, b])
    at = sensitivity_verdict(maps, top_k=3, threshold=rho - 1e-9)
    above = sensitivity_verdict(maps, top_k=3, threshold=rho + 1e-6)
    assert at["stable"] and not above["stable"]
    assert at["min_spearman"] == pytest.approx(rho)
    assert at["robust"] == [0, 1, 2] and at["dependent"] == []
    # A token at rank k under one baseline is robust; at rank k + 1 it is baseline-dependent.
    c = torch.tensor([5.0, 4.0, 2.0, 3.0, 1.0, 0.5])  # tokens 2 and 3 swap ranks 3 and 4
    v = sensitivity_verdict(torch.stack([a, c]), top_k=3, threshold=0.0)
    assert v["robust"] == [0, 1] and v["dependent"] == [2, 3]
    v = sensitivity_verdict(torch.stack([a, c]), top_k=4, threshold=0.0)
    assert v["robust"] == [0, 1, 2, 3] and v["dependent"] == []
    # |score| ranks: a large negative score is a top token.
    d = torch.tensor([-9.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    assert sensitivity_verdict(torch.stack([a, d]), top_k=1, threshold=-1)["robust"] == [0]
    # High correlation but no common top-1 token: not stable.
    e = torch.tensor([4.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    v = sensitivity_verdict(torch.stack([a, e]), top_k=1, threshold=0.5)
    assert v["min_spearman"] > 0.5 and v["robust"] == [] and not v["stable"]
    # A constant map has no ranking: NaN, never stable.
    v = sensitivity_verdict(torch.stack([a, torch.ones(6)]), top_k=2, threshold=-1)
    assert v["min_spearman"] != v["min_spearman"] and not v["stable"]


def test_result_verdict_is_the_rule_on_its_maps(sens: Any) -> None:
    maps = sens.score_maps()[:, sens.attributed]
    again = sensitivity_verdict(maps, top_k=sens.verdict["top_k"], threshold=sens.verdict["threshold"])
    assert again == sens.verdict
    robust_pos = {p for p, _ in sens.robust_tokens}
    df = sens.to_dataframe()
    for p in robust_pos:
        assert bool(df[df.position == p].in_top_k.all())
    assert set(df.baseline) == set(sens.labels)


def test_displays_open_offline(sens: Any, tmp_path: Any) -> None:
    page = sens.to_html(tmp_path / "b.html")
    assert (tmp_path / "b.html").read_text() == page
    assert 'src="http' not in page and "Content-Security-Policy" in page
    for lab in sens.labels:
        assert lab in page
    assert "Agreement between baselines" in page and "token-matrix" in page
    assert sens.show() is not None
    assert json.loads(sens.to_json())["labels"] == sens.labels
    assert list(sens.summary().index) == [r.label for r in sens.rows]


def test_bad_input(tiny_model: Any) -> None:
    with model_unchanged(tiny_model):
        cases = [
            dict(baselines=["zero", "nonsense"]),
            dict(baselines=["zero", "prompt:Rome"]),  # another token length
            dict(baselines=["zero"]),
            dict(baselines="zero,pad"),
            dict(baselines=["zero", "zero"]),
            dict(baselines=["zero", "mean"], baseline="pad"),
            dict(baselines=["zero", "mean"], method="saliency"),
            dict(baselines=["zero", "mean"], top_k=0),
            dict(baselines=["zero", "mean"], row=3),
            dict(baselines=["mask", "mean"]),  # only one left after skipping
        ]
        for kw in cases:
            with pytest.raises(ma.MechattrError) as e:
                ma.baseline_sensitivity(tiny_model, PROMPT, " Paris", **{"n_steps": 2, "rule": "gausslegendre", **kw})
            assert len(str(e.value)) > 20, kw
    with pytest.raises(ma.InputError, match="same token length"):
        ma.baseline_sensitivity(tiny_model, PROMPT, " Paris", baselines=["zero", "prompt:Rome"], n_steps=2)


def test_parse_baselines() -> None:
    assert parse_baselines("zero, pad,mean") == ["zero", "pad", "mean"]
    assert parse_baselines("zero,prompt:Hello, world") == ["zero", "prompt:Hello, world"]
    with pytest.raises(ma.InputError):
        parse_baselines(" , ")


def test_cli_flag(tmp_path: Any, capsys: Any) -> None:
    out = tmp_path / "s.json"
    page = tmp_path / "s.html"
    rc = main(["attribute", "tiny-gpt2", PROMPT, "-t", " Paris", "--baselines", f"zero,mean,prompt:{CF}",
               "-p", "n_steps=4", "-p", "rule='gausslegendre'", "--json", str(out), "--html", str(page)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "spearman between baselines" in printed
    data = json.loads(out.read_text())
    assert data["labels"] == ["zero", "mean", f"prompt:{CF}"]
    assert page.exists()
    assert main(["attribute", "tiny-gpt2", PROMPT, "--baselines", "zero,nonsense"]) == 2
    assert main(["attribute", "tiny-gpt2", PROMPT, "--baselines", "zero,mean", "--save", str(tmp_path / "x")]) == 2


def test_report_section(tiny_model: Any) -> None:
    with model_unchanged(tiny_model):
        page = ma.report(tiny_model, PROMPT, " Paris", methods=["saliency"], figures=False,
                         baselines=["zero", "mean"], baseline_params={"n_steps": 4, "rule": "gausslegendre"})
    assert "Baseline sensitivity" in page and "Agreement between baselines" in page
    assert '"stable"' in page or "stable" in page


def test_hooked_transformer(tiny_hooked: Any) -> None:
    """TL 3 HookedTransformer: same baseline tensors and completeness as on the bridge."""
    with model_unchanged(tiny_hooked):
        s = ma.baseline_sensitivity(tiny_hooked, PROMPT, " Paris", baselines=["zero", "mean"], **IG)
    W_E = tiny_hooked.W_E.detach()
    torch.testing.assert_close(s.rows[1].embedding[1:], W_E.mean(0).expand(5, -1), atol=1e-7, rtol=0)
    for r in s.rows:
        assert r.attribution.diagnostics["completeness_relative_error"] < 0.02
