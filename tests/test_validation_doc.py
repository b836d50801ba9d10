"""The validation doc's own logic (scripts/make_validation_doc.py, scripts/make_smollm2_doc.py): two
validate runs over disjoint methods merge into one report without changing a number; the #17
verdict ("a rule-based method passes deletion and ablation where IG fails, at <= 2x saliency") is
pinned on both sides of each condition; a section written by another script survives a merge."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import mechattr as ma
from mechattr.contract import MethodOutput

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_smollm2_doc  # noqa: E402
import make_validation_doc as mvd  # noqa: E402

sys.path.pop(0)

PROMPTS = ["The quick brown fox jumps over the lazy dog because it", "When Mary and John went to the store, John gave"]


def latest_first(ctx):
    s = torch.arange(1, ctx.n_pos + 1, dtype=torch.float32)
    return MethodOutput(s[None].repeat(ctx.plan.n_rows, 1).masked_fill(~ctx.free, 0.0))


def earliest_first(ctx):
    s = -torch.arange(1, ctx.n_pos + 1, dtype=torch.float32)
    return MethodOutput(s[None].repeat(ctx.plan.n_rows, 1).masked_fill(~ctx.free, 0.0))


def test_merged_runs_equal_one_run(tiny_model):
    kw = dict(checks=["perturbation", "ablation", "agreement"], seed=0, quiet=True, n_random=3)
    both = ma.validate(tiny_model, PROMPTS, methods=[latest_first, earliest_first], **kw)
    a = ma.validate(tiny_model, PROMPTS, methods=[latest_first], **kw)
    b = ma.validate(tiny_model, PROMPTS, methods=[earliest_first], checks=["perturbation", "ablation"], seed=0,
                    quiet=True, n_random=3)
    m = mvd.merge_reports([a, b])
    assert m.methods == ["latest_first", "earliest_first"]
    for check in ("perturbation", "ablation"):
        for meth in m.methods:
            assert m.verdict(check, meth).value == pytest.approx(both.verdict(check, meth).value)
            assert m.verdict(check, meth).passed == both.verdict(check, meth).passed
    s, s1 = m.checks["perturbation"].data["summary"], both.checks["perturbation"].data["summary"]
    assert set(s) == set(s1)  # each method once, the controls and random orderings once
    assert s["recency"]["aopc"] == pytest.approx(s1["recency"]["aopc"])
    key = lambda r: (r["check"], r["method"], r["metric"], r.get("prompt"), r.get("row"), r.get("seed"))  # noqa: E731
    for check in ("perturbation", "ablation"):
        assert sorted(map(key, m.checks[check].records)) == sorted(map(key, both.checks[check].records))
    # a check the second run did not run reads n/a for its methods, never PASS/FAIL
    assert m.verdict("agreement", "earliest_first").passed is None
    rows = {r["method"]: r for r in m.summary_rows()}
    assert rows["earliest_first"]["agreement"] == "n/a"
    assert len(m.checks["agreement"].data["blocks"]) == 1
    text = mvd.section("t", m)
    assert "| earliest_first |" in text and "| recency |" in text


def test_merge_refuses_runs_with_different_controls(tiny_model):
    a = ma.validate(tiny_model, PROMPTS, methods=[latest_first], checks=["perturbation"], seed=0, quiet=True)
    b = ma.validate(tiny_model, PROMPTS, methods=[earliest_first], checks=["perturbation"], seed=0, quiet=True,
                    n_random=2)
    with pytest.raises(SystemExit, match="controls differ"):
        mvd.merge_reports([a, b])


def _write(tmp_path, cells: dict[str, tuple[str, str]], ratio: float) -> tuple[Path, Path]:
    summary = [{"method": m, "perturbation": d, "ablation": ab, "randomization": "PASS 0.1"} for m, (d, ab) in cells.items()]
    rep = tmp_path / "rep.json"
    rep.write_text(json.dumps({"summary": summary}))
    rules = ["attnlrp", "cp_lrp", "gim"]
    bench = {"x_saliency_median": {m: ratio for m in rules}, "x_saliency_max": {m: ratio for m in rules},
             "x_ig_median": {m: 0.03 for m in rules}, "ig_x_saliency_median": 40.0, "threads": 1, "repeats": 5,
             "loadavg_before": [1.0], "loadavg_after": [1.0],
             "per_prompt": [{"tokens": 5, "x_saliency": {m: ratio for m in rules}, "seconds": {"integrated_gradients": 1.0},
                             "ig_points": 50}]}
    b = tmp_path / "bench.json"
    b.write_text(json.dumps(bench))
    return rep, b


FAILS = ("FAIL 1", "FAIL 0.1")


@pytest.mark.parametrize(
    "attn, ig, ratio, met",
    [
        (("PASS 9", "PASS 0.5"), FAILS, 1.9, True),
        (("PASS 9", "PASS 0.5"), FAILS, 2.1, False),  # too slow
        (("PASS 9", "FAIL 0.5"), FAILS, 1.2, False),  # fails ablation
        (("FAIL 9", "PASS 0.5"), FAILS, 1.2, False),  # fails deletion
        (("PASS 9", "PASS 0.5"), ("PASS 9", "PASS 0.6"), 1.2, False),  # IG does not fail
    ],
)
def test_issue17_target_on_both_sides(tmp_path, attn, ig, ratio, met):
    cells = {"attnlrp": attn, "cp_lrp": FAILS, "gim": FAILS, "integrated_gradients": ig}
    rep, bench = _write(tmp_path, cells, ratio)
    text = mvd.rule_section(rep, bench)
    assert ("**Target met** by `attnlrp`" in text) is met
    assert ("**Target met**" in text) is met


def test_a_section_of_another_script_survives_a_merge(tmp_path):
    doc = tmp_path / "v.md"
    doc.write_text("# head\n\nintro\n\n## SmolLM2-135M\n\nlm\n\n## zoo:agreement\n\nzoo\n\n_The last run took 5 s._\n")
    mvd.replace_section(doc, mvd.ATTENTION_TITLE, "jw numbers")
    secs = mvd.old_sections(doc)
    assert list(secs) == ["lm", "zoo:agreement", mvd.ATTENTION_TITLE]
    assert "jw numbers" in secs[mvd.ATTENTION_TITLE] and "lm" in secs["lm"]
    assert "_The last run took" not in "".join(secs.values())  # the tail is not part of a section
    text = doc.read_text()
    assert text.startswith("# head\n\nintro\n") and text.count("_The last run took 5 s._") == 1
    mvd.replace_section(doc, mvd.ATTENTION_TITLE, "new numbers")
    assert "jw numbers" not in doc.read_text() and doc.read_text().count(f"## {mvd.ATTENTION_TITLE}") == 1


def test_smollm2_doc_blocks(tmp_path):
    text = "a\n<!-- BEGIN generated: x -->\nold\n<!-- END generated: x -->\nb\n"
    out = make_smollm2_doc.replace_block(text, "x", "new\n")
    assert out == "a\n<!-- BEGIN generated: x -->\nnew\n<!-- END generated: x -->\nb\n"
    with pytest.raises(SystemExit, match="not found"):
        make_smollm2_doc.replace_block(text, "y", "z")


def _reading(d_attn: float, a_attn: float, d_ig: float = 8.0) -> str:
    recs = [
        {"check": "perturbation", "metric": "mean_aopc", "method": "random", "value": 9.5},
        {"check": "perturbation", "metric": "mean_aopc", "method": "random ± std", "value": 0.5},
        {"check": "perturbation", "metric": "mean_aopc", "method": "frequency", "value": 9.8},
        {"check": "ablation", "metric": "mean_spearman", "method": "frequency", "value": 0.1},
        {"check": "perturbation", "metric": "mean_aopc", "method": "attnlrp", "value": d_attn},
        {"check": "ablation", "metric": "mean_spearman", "method": "attnlrp", "value": a_attn},
        {"check": "perturbation", "metric": "mean_aopc", "method": "integrated_gradients", "value": d_ig},
        {"check": "ablation", "metric": "mean_spearman", "method": "integrated_gradients", "value": -0.1},
    ]
    rep = {"meta": {"options": {"margin": 1.0, "ablation_min_corr": 0.0}}}
    rows = {"attnlrp": {}, "integrated_gradients": {}}
    bench = {"x_saliency_median": {"attnlrp": 1.2}}
    return "\n".join(mvd.reading_without_content_blind(rep, recs, rows, bench))


@pytest.mark.parametrize(
    "d_attn, a_attn, d_ig, met",
    [
        (10.1, 0.2, 8.0, True),  # above random + 1 std (10.0) and frequency on both checks
        (9.9, 0.2, 8.0, False),  # above frequency (9.8) but not random + 1 std
        (10.1, 0.05, 8.0, False),  # ablation above 0 but not above frequency (0.1)
        (10.1, 0.2, 10.5, True),  # IG passes deletion but fails ablation: it still fails
    ],
)
def test_issue17_reading_against_random_and_frequency_on_both_sides(d_attn, a_attn, d_ig, met):
    """The #17 section also reads the run against the bars #17 was written with (random + 1 std
    and frequency), without the position and recency controls; each bar is pinned on both sides."""
    text = _reading(d_attn, a_attn, d_ig)
    assert "deletion AOPC > 10.000" in text and "ablation Spearman > 0.100" in text
    assert ("the target would be met by `attnlrp`" in text) is met
