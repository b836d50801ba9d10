"""Ground truth scores a user's callable method as it scores a registered one (issue 19, item 14;
the verdict used to be "n/a"). Both sides of the criterion (MRR of the planted tokens > MRR of a
random ranking): a callable that calls occlusion passes with occlusion's exact numbers, one that
ranks the latest token first fails on zoo:agreement (its subject noun is early)."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr import groundtruth as gt
from mechattr.contract import MethodOutput
from mechattr.registry import get_method


def my_occlusion(ctx):
    return get_method("occlusion").fn(ctx)


def latest_first(ctx):
    s = torch.arange(ctx.n_pos, dtype=torch.float32)[None].repeat(ctx.plan.n_rows, 1)
    return MethodOutput(s.masked_fill(~ctx.free, 0.0))


def test_ground_truth_verdicts_for_callables():
    from mechattr.zoo import tasks as zt

    model = ma.load_model("zoo:agreement")
    prompts = [e.prompt for e in zt.get_task("agreement").examples(2, seed=5)]
    rep = ma.validate(model, prompts, methods=["occlusion", my_occlusion, latest_first], checks=["ground_truth"],
                      ground_truth_n=16, seed=0, quiet=True)
    ref = rep.verdict("ground_truth", "occlusion")
    mine = rep.verdict("ground_truth", "my_occlusion")
    assert mine.passed is True and mine.value == pytest.approx(ref.value, abs=1e-12)
    assert rep.value("ground_truth", "my_occlusion", "top1") == rep.value("ground_truth", "occlusion", "top1")
    late = rep.verdict("ground_truth", "latest_first")
    assert late.passed is False and late.value <= late.threshold
    # and through the public scorer directly, with parameters
    out = gt.score(model, latest_first, "agreement", n=4, seed=1)
    assert out["method"] == "latest_first" and 0.0 <= out["mrr"] <= 1.0
