"""Position-only controls in the deletion (AOPC) and ablation checks (issue 19, item 12): a method
that ranks tokens by position alone passed both on zoo:agreement; with the ``position`` prior and
``recency`` controls beside ``random`` and ``frequency`` it fails, while occlusion (which reads the
prompt) still passes. The fake sits between the old bar (random mean + std; Spearman > 0) and the
new one (every control), so the test fails on the old criterion."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.contract import MethodOutput
from mechattr.validation.controls import position_prior_scores, recency_scores


def subject_slot(ctx):
    """Position alone: the slots where zoo:agreement's subject noun sits (2, 3) first, then the
    earliest positions first. It never looks at the tokens."""
    s = -torch.arange(ctx.n_pos, dtype=torch.float32)
    s[2:4] += 100.0
    return MethodOutput(s[None].repeat(ctx.plan.n_rows, 1).masked_fill(~ctx.free, 0.0))


def latest_first(ctx):
    s = torch.arange(ctx.n_pos, dtype=torch.float32)[None].repeat(ctx.plan.n_rows, 1)
    return MethodOutput(s.masked_fill(~ctx.free, 0.0))


@pytest.fixture(scope="module")
def report():
    from mechattr.zoo import tasks as zt

    model = ma.load_model("zoo:agreement")
    prompts = [e.prompt for e in zt.get_task("agreement").examples(8, seed=123)]
    return ma.validate(
        model, prompts, methods=["occlusion", subject_slot, latest_first],
        checks=["perturbation", "ablation"], seed=0, quiet=True,
    )


def test_a_position_only_method_fails_deletion_that_it_passed_before(report):
    res = report.checks["perturbation"]
    s = res.data["summary"]
    assert {"random", "random ± std", "frequency", "position", "recency"} <= set(s)
    assert {r["method"] for r in res.records} >= {"position", "recency"}
    fake = report.verdict("perturbation", "subject_slot")
    old_bar = s["random"]["aopc"] + 1.0 * s["random ± std"]["aopc"]
    assert fake.value > old_bar  # the old criterion passed it (measured 2.837 > 2.737)
    assert fake.passed is False and "position" in fake.note
    assert fake.threshold == pytest.approx(max(old_bar, s["frequency"]["aopc"], s["position"]["aopc"], s["recency"]["aopc"]))
    occ = report.verdict("perturbation", "occlusion")
    assert occ.passed is True and occ.value > s["position"]["aopc"]  # measured 2.949 > 2.838
    # a method identical to a control cannot beat it
    rec = report.verdict("perturbation", "latest_first")
    assert rec.passed is False and rec.value == pytest.approx(s["recency"]["aopc"])


def test_the_ablation_criterion_is_compared_with_the_controls(report):
    res = report.checks["ablation"]
    fake = report.verdict("ablation", "subject_slot")
    assert fake.value > 0.0  # the old criterion (Spearman > 0) passed it (measured 0.164)
    assert fake.passed is False and "position" in fake.note
    pos = [r["value"] for r in res.records if r["method"] == "position" and r["metric"] == "mean_spearman"]
    assert len(pos) == 1 and fake.threshold == pytest.approx(max(0.0, pos[0])) and fake.value < pos[0]
    assert report.passed("ablation", "occlusion") is True
    assert report.passed("ablation", "latest_first") is False


def test_position_prior_is_leave_one_out_and_recency_is_latest_first():
    effects = {
        0: (torch.tensor([[1.0, 2.0, 3.0]]), [1, 2, 3]),
        1: (torch.tensor([[5.0, 0.0], [3.0, 2.0]]), [1, 2]),  # two target rows: their mean
        2: (torch.tensor([[7.0]]), [3]),
    }
    # prompt 0: positions 1, 2 from prompt 1 only; position 3 from prompt 2 only; 0 has none
    got = position_prior_scores(effects, 0, 5)
    assert got.tolist() == [0.0, 4.0, 1.0, 7.0, 0.0]
    # prompt 2: positions 1, 2 averaged over prompts 0 and 1; position 3 from prompt 0 alone (its own
    # effect, 7, never counts)
    assert position_prior_scores(effects, 2, 4).tolist() == [0.0, 2.5, 1.5, 3.0]
    assert position_prior_scores({0: effects[0]}, 0, 4).tolist() == [0.0] * 4  # alone: flat (primacy)
    assert recency_scores(4).tolist() == [0.0, 1.0, 2.0, 3.0]
