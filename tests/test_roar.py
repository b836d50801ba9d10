"""ROAR-lite (validation check 7) end to end on zoo:agreement: a real method's masks hurt the
retrained model more than random masks, an input-independent method's do not, the cache answers
without retraining, and neither the user's model nor torch's thread count is changed."""

from __future__ import annotations

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError
from mechattr.contract import MethodOutput
from mechattr.validation import roar
from tests.conftest import model_unchanged

# Small enough for a test, large enough that the retrained model learns the task unmasked.
CONFIG = {"n_train": 160, "n_test": 128, "n_random": 3, "steps": 120}
PROMPT = "the key to the cabinets"


def first_word(ctx):
    """Input-independent: always ranks the earliest free token first (on agreement: 'the')."""
    s = -torch.arange(ctx.n_pos, dtype=torch.float32)[None].repeat(ctx.plan.n_rows, 1)
    return MethodOutput(s.masked_fill(~ctx.free, 0.0))


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


@pytest.fixture(scope="module")
def zoo_model():
    return ma.load_model("zoo:agreement")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHATTR_CACHE", str(tmp_path_factory.mktemp("roar_cache")))
        yield


@pytest.fixture(scope="module")
def first(zoo_model, cache):
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        counter = Counter(roar.train_and_score)
        mp.setattr(roar, "train_and_score", counter)
        with model_unchanged(zoo_model):
            rep = ma.validate(zoo_model, PROMPT, methods=["occlusion", first_word], checks=["roar"],
                              roar_k=1, roar_config=CONFIG, seed=0)
    assert torch.get_num_threads() == threads  # the one-thread training context restores it
    return rep, counter.calls


def test_real_method_beats_random_masks(first):
    rep, calls = first
    assert calls == 1 + CONFIG["n_random"] + 2  # unmasked, random maskings, one per method
    table = {r["masking"]: r for r in rep.checks["roar"].data["table"]}
    assert table["none"]["accuracy"] >= 0.9  # the lite model learns the unmasked task
    v = rep.verdict("roar", "occlusion")
    assert v.passed is True
    assert v.value == pytest.approx(table["none"]["accuracy"] - table["occlusion"]["accuracy"])
    rd = rep.checks["roar"].data["random_drop"]
    drops = [table[f"random {r}"]["drop"] for r in range(CONFIG["n_random"])]
    assert rd["mean"] == pytest.approx(sum(drops) / len(drops))
    assert v.threshold == pytest.approx(rd["mean"] + max(2 * rd["std"], rd["se"]))
    assert v.value > max(drops)


def test_input_independent_method_fails(first):
    rep, _ = first
    v = rep.verdict("roar", "first_word")
    assert v.passed is False
    assert v.value <= v.threshold
    assert rep.summary().loc["first_word", "roar"].startswith("FAIL")


def test_cache_gives_the_same_number_without_retraining(first, cache, monkeypatch):
    from mechattr.zoo import tasks as zt
    from mechattr.zoo import train as ztr

    rep, _ = first
    assert not any(r["cached"] for r in rep.checks["roar"].data["table"])  # fresh cache dir
    task = zt.get_task("agreement")
    _, tc, _ = roar.configs("agreement", {"steps": 3}, seed=0)
    toks, last, ans = ztr.encode(task, task.examples(24, seed=1))
    train, test = (toks[:16], last[:16], ans[:16]), (toks[16:], last[16:], ans[16:])
    counter = Counter(roar.train_and_score)
    monkeypatch.setattr(roar, "train_and_score", counter)
    a, hit_a = roar.cached_accuracy(task, tc, train, test)
    b, hit_b = roar.cached_accuracy(task, tc, train, test)
    assert (counter.calls, hit_a, hit_b, a) == (1, False, True, b)
    c, hit_c = roar.cached_accuracy(task, tc, train, test, cache=False)
    assert (counter.calls, hit_c, c) == (2, False, a)  # retrained: deterministic, same number
    masked = roar.mask_tokens(train[0], [[1]] * 16, ztr.UNK)
    roar.cached_accuracy(task, tc, (masked, *train[1:]), test)
    assert counter.calls == 3  # other masks, other key


def test_config_reuses_the_zoo_training_config():
    from mechattr.zoo import train as ztr

    rc, tc, cache = roar.configs("agreement", {"steps": 7, "n_train": 10}, seed=3)
    want = ztr.TrainConfig(**{**ztr.TASK_CONFIGS["agreement"], **ztr.ROAR_OVERRIDES, "steps": 7, "seed": 3})
    assert tc == want and rc.n_train == 10 and cache is True
    with pytest.raises(InputError, match="unknown keys"):
        roar.configs("agreement", {"n_trian": 10}, seed=0)
    with pytest.raises(InputError, match="n_random"):
        roar.configs("agreement", {"n_random": 1}, seed=0)
