"""Jain & Wallace (2019) attention checks (issue #17 item 4), each against a computation written
here with plain TransformerLens hooks: attention rows, leave-one-out, permuted-attention TVD,
the adversarial row's feasibility and divergence (scipy); reproducible seeds; bad input; the
model left as it came; the readings in the text, JSON and HTML reports."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest
import torch
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

import mechattr as ma
from mechattr.validation import attention_checks as jw

from .conftest import model_unchanged

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]
CHECKS = ["attention_correlation", "attention_permutation", "attention_adversarial"]


def _ids(model: Any, text: str) -> list[int]:
    return [model.tokenizer.bos_token_id] + model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _probs(model: Any, toks: torch.Tensor, hooks: list[Any] = ()) -> torch.Tensor:
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        return torch.softmax(model(toks)[:, -1].double(), -1)


def _pattern(model: Any, toks: torch.Tensor, layer: int) -> torch.Tensor:
    box = {}

    def grab(x: torch.Tensor, hook: Any) -> None:
        box["p"] = x.detach().double().clone()

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", grab)]):
        model(toks)
    return box["p"][0]  # [head, dst, src]


@pytest.fixture(scope="module")
def report(tiny_model: Any) -> Any:
    with model_unchanged(tiny_model):
        return ma.validate(
            tiny_model, PROMPTS, methods=["saliency"], checks=CHECKS, replacement="unk", n_permutations=6,
            adversarial_steps=12, seed=3,
        )


def test_causal_permutations_are_permutations_of_the_allowed_positions() -> None:
    g = torch.Generator().manual_seed(0)
    idx = jw.causal_permutations(7, 3, 6, g)
    for q in range(6):
        rows = idx[:, :, q].reshape(-1, 6)
        for r in rows.tolist():
            assert sorted(r[: q + 1]) == list(range(q + 1)) and r[q + 1 :] == list(range(q + 1, 6))
    assert len({tuple(r) for r in idx[:, :, 5].reshape(-1, 6).tolist()}) > 5  # actually random
    again = jw.causal_permutations(7, 3, 6, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def _my_perms(n_perm: int, H: int, P: int, seed: int) -> torch.Tensor:
    """Permutations built independently: randperm of 0..q per (perm, head, row)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.arange(P).repeat(n_perm, H, P, 1)
    for k in range(n_perm):
        for h in range(H):
            for q in range(P):
                out[k, h, q, : q + 1] = torch.randperm(q + 1, generator=g)
    return out


@pytest.mark.parametrize("layer", [0, 1])
def test_permutation_tvd_matches_a_plain_hook(tiny_model: Any, layer: int) -> None:
    toks = torch.tensor([_ids(tiny_model, PROMPTS[0])])
    P, H = toks.shape[1], ma.as_adapter(tiny_model).n_heads
    perms = _my_perms(4, H, P, seed=layer)
    with model_unchanged(tiny_model):
        got = jw.permutation_tvd(ma.as_adapter(tiny_model), toks, [P - 1], layer, perms, batch_size=3)
    base = _probs(tiny_model, toks)
    for k in range(4):
        def permute(x: torch.Tensor, hook: Any) -> torch.Tensor:
            y = torch.empty_like(x)
            for h in range(H):
                for q in range(P):
                    y[0, h, q] = x[0, h, q, perms[k, h, q]]
            return y

        q = _probs(tiny_model, toks, [(f"blocks.{layer}.attn.hook_pattern", permute)])
        expected = 0.5 * float((base - q).abs().sum())
        assert float(got[k]) == pytest.approx(expected, abs=1e-6)
    assert float(got.max()) > 1e-4  # the hook really changes the output


def test_permutation_check_numbers(tiny_model: Any, report: Any) -> None:
    """The check's per-prompt median equals the median of TVDs computed here for its permutations."""
    a = ma.as_adapter(tiny_model)
    recs = [r for r in report.checks["attention_permutation"].records if r["metric"] == "median_tvd" and "prompt" in r]
    assert {(r["layer"], r["prompt"]) for r in recs} == {(l, p) for l in (0, 1) for p in (0, 1)}
    for r in recs:
        toks = torch.tensor([_ids(tiny_model, PROMPTS[r["prompt"]])])
        g = torch.Generator().manual_seed(3 * 7919 + 101 * r["prompt"] + r["layer"])
        perms = jw.causal_permutations(6, a.n_heads, toks.shape[1], g)
        base = _probs(tiny_model, toks)
        tvds = []
        for k in range(6):
            hook = (f"blocks.{r['layer']}.attn.hook_pattern", lambda x, hook, k=k: x.gather(-1, perms[k][None]))
            tvds.append(0.5 * float((base - _probs(tiny_model, toks, [hook])).abs().sum()))
        assert r["value"] == pytest.approx(statistics.median(tvds), abs=1e-6)


def test_correlation_matches_scipy_kendall(tiny_model: Any, report: Any) -> None:
    unk = tiny_model.tokenizer.unk_token_id
    tid_of = {}
    for p, text in enumerate(PROMPTS):
        ids = _ids(tiny_model, text)
        toks = torch.tensor([ids])
        sal = ma.attribute(tiny_model, text, method="saliency").token_scores(0).abs().double()
        target = int(_probs(tiny_model, toks)[0].argmax())
        tid_of[p] = target
        f_x = float(torch.log(_probs(tiny_model, toks)[0, target]))
        loo = torch.zeros(len(ids), dtype=torch.float64)
        for i in range(1, len(ids)):
            t2 = toks.clone()
            t2[0, i] = unk
            loo[i] = abs(f_x - float(torch.log(_probs(tiny_model, t2)[0, target])))
        for layer in (0, 1):
            att = _pattern(tiny_model, toks, layer)[:, -1].mean(0)
            for label, ranking in (("saliency", sal), ("leave_one_out", loo)):
                expected = sps.kendalltau(att[1:].numpy(), ranking[1:].numpy()).statistic
                got = report.value("attention_correlation", label, "kendall_tau", layer=layer, prompt=p, row=0)
                assert got == pytest.approx(expected, abs=1e-9), (label, layer, p)


def test_adversarial_row_is_feasible_and_its_divergence_is_right(tiny_model: Any) -> None:
    a = ma.as_adapter(tiny_model)
    toks = torch.tensor([_ids(tiny_model, PROMPTS[0])])
    t = toks.shape[1] - 1
    with model_unchanged(tiny_model):
        out = jw.adversarial_attention(a, toks, [t], 1, eps=0.02, steps=25, generator=torch.Generator().manual_seed(0))
    assert out["js_divergence"] > 0.01  # a random 2-layer model leaves room: something was found
    row = out["row"]
    orig = _pattern(tiny_model, toks, 1)[:, t, : t + 1]
    torch.testing.assert_close(out["original_row"], orig)
    expected = sum(jensenshannon(row[h].numpy(), orig[h].numpy(), base=2) ** 2 for h in range(row.shape[0])) / row.shape[0]
    assert out["js_divergence"] == pytest.approx(expected, abs=1e-6)
    assert out["js_distance"] == pytest.approx(out["js_divergence"] ** 0.5)

    def put(x: torch.Tensor, hook: Any) -> torch.Tensor:
        y = x.clone()
        y[:, :, t, : t + 1] = row.to(x)
        return y

    d = 0.5 * float((_probs(tiny_model, toks) - _probs(tiny_model, toks, [("blocks.1.attn.hook_pattern", put)])).abs().sum())
    assert d <= 0.02 + 1e-5 and d == pytest.approx(out["tvd"], abs=1e-5)


def test_adversarial_constraint_binds(tiny_model: Any) -> None:
    """A tighter epsilon can never give a larger feasible divergence than a loose one finds."""
    a = ma.as_adapter(tiny_model)
    toks = torch.tensor([_ids(tiny_model, PROMPTS[0])])
    t = toks.shape[1] - 1
    kw = dict(steps=20, generator=None)
    tight = jw.adversarial_attention(a, toks, [t], 0, eps=1e-9, **{**kw, "generator": torch.Generator().manual_seed(0)})
    loose = jw.adversarial_attention(a, toks, [t], 0, eps=0.5, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert tight["js_divergence"] == 0.0 and tight["step"] == -1  # only the original row is feasible
    assert loose["js_divergence"] > 0.05


def test_seeded_and_reproducible(tiny_model: Any, report: Any) -> None:
    again = ma.validate(tiny_model, PROMPTS, methods=["saliency"], checks=CHECKS, replacement="unk", n_permutations=6,
                        adversarial_steps=12, seed=3)
    for c in CHECKS:
        assert [r["value"] for r in again.checks[c].records] == [r["value"] for r in report.checks[c].records]


def test_reports_show_the_readings(report: Any, tmp_path: Any) -> None:
    text = report.to_markdown()
    for c in CHECKS:
        assert f"- {c}:" in text
    data = json.loads(report.to_json())
    assert set(data["readings"]) == set(CHECKS)
    assert any(r["check"] == "attention_adversarial" and r["metric"] == "max_js_divergence" for r in data["records"])
    page = report.to_html(tmp_path / "v.html")
    for c in CHECKS:
        assert c in page
    assert "attention_permutation by layer" in page and "<svg" in page
    # measurements, not verdicts
    assert all(v.passed is None for c in CHECKS for v in report.checks[c].verdicts.values())


def test_not_in_all_and_bad_input(tiny_model: Any) -> None:
    from mechattr.validation.core import _check_list

    names, _ = _check_list("all")
    assert not set(CHECKS) & set(names)
    with model_unchanged(tiny_model):
        for opts in (dict(attention_layers=[5]), dict(attention_layers=[]), dict(n_permutations=0),
                     dict(adversarial_epsilon=2.0), dict(adversarial_steps=0), dict(adversarial_lr=-1)):
            check = "attention_adversarial" if any(k.startswith("adv") for k in opts) else (
                "attention_permutation" if "n_permutations" in opts else "attention_correlation")
            with pytest.raises(ma.InputError):
                ma.validate(tiny_model, PROMPTS[0], methods=["saliency"], checks=[check], **opts)
        with pytest.raises(ma.InputError, match="n_permutations"):
            ma.validate(tiny_model, PROMPTS[0], checks=["attention_permutation"], n_permutation=3)


def test_hooked_transformer(tiny_hooked: Any) -> None:
    """TL 3 HookedTransformer: the permutation hook acts there too and matches a plain hook."""
    toks = torch.tensor([_ids(tiny_hooked, PROMPTS[0])])
    P, H = toks.shape[1], ma.as_adapter(tiny_hooked).n_heads
    perms = _my_perms(2, H, P, seed=0)
    with model_unchanged(tiny_hooked):
        got = jw.permutation_tvd(ma.as_adapter(tiny_hooked), toks, [P - 1], 0, perms)
    base = _probs(tiny_hooked, toks)
    q = _probs(tiny_hooked, toks, [("blocks.0.attn.hook_pattern", lambda x, hook: x.gather(-1, perms[1][None]))])
    assert float(got[1]) == pytest.approx(0.5 * float((base - q).abs().sum()), abs=1e-6)
