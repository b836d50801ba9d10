"""ROAR and KAR swept over fractions of the tokens with several retrainings per point (Hooker et
al. 2019; issue 19, item 15), ROAR-lite staying the default. The verdict arithmetic is pinned with
a stand-in for retraining whose accuracy is known (it falls when the subject noun is masked), and
fakes on both sides: a ranking with the subject first passes, one with the subject last fails. A
small real sweep checks the mechanics (retraining count, cache)."""

from __future__ import annotations

import math

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError
from mechattr.contract import MethodOutput
from mechattr.validation import roar
from mechattr.zoo import tasks as zt
from mechattr.zoo import train as ztr

PROMPT = "the key to the cabinets"
TASK = zt.get_task("agreement")
NOUNS = {TASK.vocab[w] for pair in zt._NOUNS for w in pair}


def _subject_pos(tokens: torch.Tensor) -> int:
    return next(i for i, t in enumerate(tokens.tolist()) if t in NOUNS)


def subject_first(ctx):
    s = -torch.arange(ctx.n_pos, dtype=torch.float32)
    s[_subject_pos(ctx.plan.tokens[0])] = 100.0
    return MethodOutput(s[None].repeat(ctx.plan.n_rows, 1).masked_fill(~ctx.free, 0.0))


def subject_last(ctx):
    s = torch.zeros(ctx.n_pos)
    s[_subject_pos(ctx.plan.tokens[0])] = -100.0
    return MethodOutput(s[None].repeat(ctx.plan.n_rows, 1).masked_fill(~ctx.free, 0.0))


@pytest.fixture(scope="module")
def zoo_model():
    return ma.load_model("zoo:agreement")


def test_sweep_verdicts_with_a_known_accuracy(zoo_model, monkeypatch):
    cfg = {"n_train": 24, "n_test": 64}
    examples = TASK.examples(cfg["n_train"], seed=60_000) + TASK.examples(cfg["n_test"], seed=70_000)
    clean, _, _ = ztr.encode(TASK, examples)
    subj = torch.tensor([_subject_pos(r) for r in clean[cfg["n_train"]:]])
    calls = []

    def known_accuracy(task, tc, train, test, cache=True):
        calls.append(tc.seed)
        masked = test[0][torch.arange(len(subj)), subj] == ztr.UNK
        return 1.0 - 0.8 * float(masked.double().mean()), False

    monkeypatch.setattr(roar, "cached_accuracy", known_accuracy)
    rep = ma.validate(zoo_model, PROMPT, methods=[subject_first, subject_last], checks=["roar"], roar_mode="sweep",
                      roar_config=cfg, roar_repeats=3, seed=0, quiet=True)
    fr = (0.1, 0.3, 0.5, 0.7, 0.9)
    assert rep.checks["roar"].data["sweep"]["fractions"] == list(fr)  # Hooker et al.'s fractions by default
    # unmasked x 3 repeats + (ROAR, KAR) x 5 fractions x 3 repeats x (random + 2 methods)
    assert len(calls) == 3 + 2 * 5 * 3 * 3 and len(set(calls)) == 3  # three training seeds
    curves = rep.checks["roar"].data["sweep"]["curves"]
    assert curves["roar"]["subject_first"] == pytest.approx([0.2] * 5)  # the subject always goes first
    # and is kept, until 90 % of a short prompt rounds up to all of it
    assert curves["kar"]["subject_first"][:4] == pytest.approx([1.0] * 4) and curves["kar"]["subject_first"][4] < 1
    assert curves["roar"]["subject_last"][:3] == pytest.approx([1.0] * 3)  # kept until the fraction reaches it
    good, bad = rep.verdict("roar", "subject_first"), rep.verdict("roar", "subject_last")
    # an independent recomputation of the gap and its s.e. from the per-repeat records
    recs = rep.checks["roar"].records

    def acc(label, mode):
        return torch.tensor([[r["value"] for r in recs if r["method"] == label and r["metric"] == f"{mode}_accuracy"
                              and r["fraction"] == t] for t in fr], dtype=torch.float64)

    d = acc("random", "roar") - acc("subject_first", "roar")
    p = float(acc("random", "roar").mean())
    se = max(float(d.flatten().std()) / math.sqrt(d.numel()), math.sqrt(p * (1 - p) / (64 * d.numel())))
    assert good.value == pytest.approx(float(d.mean())) and good.threshold == pytest.approx(2 * se)
    assert good.passed is True and bad.passed is False and bad.value < 0
    assert rep.value("roar", "subject_first", "kar_gap") > 0 > rep.value("roar", "subject_last", "kar_gap")


def test_a_small_real_sweep_retrains_and_caches(zoo_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHATTR_CACHE", str(tmp_path))
    n = []
    real = roar.train_and_score
    monkeypatch.setattr(roar, "train_and_score", lambda *a: n.append(1) or real(*a))
    kw = dict(methods=[subject_first], checks=["roar"], roar_mode="sweep", roar_fractions=(0.5,), roar_repeats=3,
              roar_config={"n_train": 48, "n_test": 32, "steps": 30}, seed=0, quiet=True)
    rep = ma.validate(zoo_model, PROMPT, **kw)
    assert len(n) == 3 + 2 * 1 * 3 * 2  # unmasked, then ROAR and KAR at 50 %, 3 repeats, random + method
    again = ma.validate(zoo_model, PROMPT, **kw)
    assert len(n) == 15  # every accuracy from the cache
    assert again.checks["roar"].data["sweep"] == rep.checks["roar"].data["sweep"]
    acc = rep.checks["roar"].data["sweep"]["curves"]
    assert set(acc) == {"roar", "kar"} and set(acc["roar"]) == {"random", "subject_first"}


def test_sweep_options_are_checked(zoo_model):
    for bad in ({"roar_mode": "full"}, {"roar_mode": "sweep", "roar_fractions": (0.0, 0.5)},
                {"roar_mode": "sweep", "roar_repeats": 1}):
        with pytest.raises(InputError):
            ma.validate(zoo_model, PROMPT, methods=[subject_first], checks=["roar"], quiet=True, **bad)
