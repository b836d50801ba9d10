"""The zoo: shipped models load offline under both TL lines and do their task; twins do not;
training is deterministic; probes and SAEs work on activations read through TL hooks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import mechattr as ma
from mechattr import zoo
from mechattr.tl.adapter import as_adapter
from mechattr.zoo import tasks as T
from mechattr.zoo import train as TR

from .conftest import TL_MAJOR

# Tasks with a shipped model (all of them); an unshipped one would have to fail clearly.
TASKS = zoo.shipped_tasks()
UNSHIPPED = sorted(set(zoo.TASKS) - set(TASKS))


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def get(models: dict, name: str, kind: str = "auto"):
    if (name, kind) not in models:
        models[(name, kind)] = ma.load_model(name, kind=kind)
    return models[(name, kind)]


def predictions(model, examples) -> list[bool]:
    """Independent accuracy check: tokenize through the adapter, one forward per example,
    argmax over the whole vocabulary at the last position."""
    a = as_adapter(model)
    hits = []
    with torch.no_grad():
        for ex in examples:
            toks = a.tokenize(ex.prompt)
            logits = model(toks)[0, -1]
            hits.append(int(logits.argmax()) == a.single_token(" " + ex.answer))
    return hits


def test_tasks_are_deterministic_and_consistent():
    for name in TASKS:
        t = zoo.get_task(name)
        a, b = t.examples(50, seed=3), t.examples(50, seed=3)
        assert a == b and a != t.examples(50, seed=4)
        for ex in a:
            words = ex.words
            assert all(w in t.vocab for w in words) and ex.answer in t.answers
            assert len(words) <= t.max_words
            assert all(0 <= p < len(words) for p in ex.truth + ex.distractors)
    # planted structure, checked directly on the words
    for ex in T.AGREEMENT.examples(100, seed=1):
        subj = ex.words[ex.truth[0]]
        assert ex.answer == ("are" if subj in {p for _, p in T._NOUNS} else "is")
        assert all(ex.words[p] in {w for pair in T._NOUNS for w in pair} for p in ex.distractors)
    for ex in T.INDUCTION.examples(100, seed=1):
        w = ex.words
        nxt, first, last = ex.truth
        assert last == len(w) - 1 and w[first] == w[last] and w[nxt] == ex.answer and nxt == first + 1
        assert len(set(w[:-1])) == len(w) - 1  # only the last token repeats
    for ex in T.RECALL.examples(100, seed=1):
        assert T.FACTS[ex.words[ex.truth[0]]] == ex.answer


def test_shipped_size_and_cards():
    total = sum(f.stat().st_size for f in zoo.DATA.rglob("*") if f.is_file())
    assert total <= 5 * 2**20, f"zoo data is {total / 2**20:.2f} MB"
    for name in TASKS:
        c = zoo.card(name)
        assert c["heldout_accuracy"] >= 0.98 and not c["randomized_labels"]
        r = zoo.card(name + "-random")
        assert r["randomized_labels"] and r["heldout_accuracy"] < c["heldout_accuracy"]
    assert set(zoo.zoo_models()) == {n for t in TASKS for n in (t, t + "-random")}
    assert {f"zoo:{t}" for t in TASKS} <= set(ma.builtin_models())


def test_every_task_is_shipped():
    assert set(TASKS) == set(zoo.TASKS) == {"agreement", "induction", "recall"}


@pytest.mark.parametrize("name", UNSHIPPED)
def test_unshipped_task_says_how_to_train_it(name):
    with pytest.raises(ma.ModelError, match=f"python -m mechattr.zoo.train {name}"):
        ma.load_model(f"zoo:{name}")


def test_tokenizer_is_one_word_one_token(models):
    for name in TASKS:
        task = zoo.get_task(name)
        a = as_adapter(get(models, f"zoo:{name}"))
        assert a.prepend_bos
        for ex in task.examples(20, seed=9):
            toks, truth, _ = zoo.example_tokens(a, ex)
            ids, _, _ = TR.encode(task, [ex])
            assert toks[0].tolist() == ids[0].tolist()
            assert [a.str_tokens(toks)[p] for p in truth] == [ex.words[p - 1] for p in truth]


@pytest.mark.parametrize("name", TASKS)
def test_zoo_model_accuracy_on_fresh_examples(models, name):
    task = zoo.get_task(name)
    examples = task.examples(200, seed=424242)
    acc = sum(predictions(get(models, f"zoo:{name}"), examples)) / len(examples)
    assert acc >= 0.98, f"zoo:{name} held-out accuracy {acc}"


@pytest.mark.parametrize("name", TASKS)
def test_randomized_twin_is_near_chance(models, name):
    task = zoo.get_task(name)
    examples = task.examples(200, seed=424242)
    acc = sum(predictions(get(models, f"zoo:{name}-random"), examples)) / len(examples)
    # chance: 1/2 for agreement, 1/40 and 1/24 for induction and recall
    assert acc <= task.chance + 0.12, f"zoo:{name}-random accuracy {acc} (chance {task.chance})"


@pytest.mark.skipif(TL_MAJOR >= 4, reason="HookedTransformer exists only in the TL 3.x lane")
@pytest.mark.parametrize("name", TASKS)
def test_hooked_and_bridge_agree(models, name):
    ex = zoo.get_task(name).examples(5, seed=1)
    hooked, bridge = get(models, f"zoo:{name}", "hooked"), get(models, f"zoo:{name}", "bridge")
    assert type(hooked).__name__ == "HookedTransformer"
    for e in ex:
        t = as_adapter(hooked).tokenize(e.prompt)
        assert torch.equal(t, as_adapter(bridge).tokenize(e.prompt))
        with torch.no_grad():
            torch.testing.assert_close(hooked(t), bridge(t), atol=1e-4, rtol=1e-4)


def test_unknown_zoo_name_is_a_model_error():
    with pytest.raises(ma.ModelError, match="zoo:agreement"):
        ma.load_model("zoo:agreemnt")


def _tiny_cfg(seed: int) -> TR.TrainConfig:
    return TR.TrainConfig(n_embd=16, n_head=2, n_inner=32, steps=4, batch=8, eval_every=10**6, seed=seed)


@pytest.mark.parametrize("name", ["agreement", "induction"])
def test_training_is_deterministic(name):
    task = zoo.get_task(name)
    m1, _ = TR.train(task, _tiny_cfg(0))
    m2, _ = TR.train(task, _tiny_cfg(0))
    m3, _ = TR.train(task, _tiny_cfg(1))
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    # training moved the weights away from the initialisation
    init = TR.make_model(task, _tiny_cfg(0)).state_dict()
    assert any(not torch.equal(s1[k], init[k]) for k in s1)


def test_twin_data_keeps_inputs_and_shuffles_answers():
    cfg = TR.TrainConfig(twin_examples=300)
    orig = T.RECALL.examples(300, seed=10_000)
    twin = TR.shuffled_twin_data(T.RECALL, cfg)
    assert [e.prompt for e in twin] == [e.prompt for e in orig]
    assert sorted(e.answer for e in twin) == sorted(e.answer for e in orig)
    assert sum(a.answer == b.answer for a, b in zip(twin, orig)) < 60


@pytest.mark.parametrize("name", TASKS)
def test_probe_reads_the_residual_stream(models, name):
    probe = zoo.load_probe(name)
    task = zoo.get_task(name)
    a = as_adapter(get(models, f"zoo:{name}"))
    assert probe.position == "last" and probe.W.shape == (a.d_model, len(probe.classes))
    hits = []
    with torch.no_grad():
        for ex in task.examples(100, seed=777):
            resid = a.run_until(a.tokenize(ex.prompt), probe.hook)[0, -1]
            label = ("plural" if ex.answer == "are" else "singular") if name == "agreement" else ex.answer
            hits.append(probe.classes[int(probe.predict(resid))] == label)
    assert sum(hits) / len(hits) >= 0.95


@pytest.mark.parametrize("name", TASKS)
def test_sae_reconstructs(models, name):
    sae = zoo.load_sae(name)
    task = zoo.get_task(name)
    a = as_adapter(get(models, f"zoo:{name}"))
    assert sae.W_enc.shape == (a.d_model, sae.d_sae) and sae.W_dec.shape == (sae.d_sae, a.d_model)
    with torch.no_grad():
        x = torch.cat([a.run_until(a.tokenize(ex.prompt), sae.hook)[0] for ex in task.examples(40, seed=5)])
        f = sae.encode(x)
        rec = sae.decode(f)
    assert bool((f >= 0).all())
    # the same formula written out
    torch.testing.assert_close(f, torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc))
    fve = 1 - float((rec - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fve >= 0.8, fve
    assert float((f > 0).float().sum(-1).mean()) < sae.d_sae / 3  # sparse-ish (held-out L0: 30-65 of 256)


def test_zoo_attribution_end_to_end(models, tmp_path):
    ex = T.RECALL.examples(1, seed=0)[0]
    res = ma.attribute(get(models, "zoo:recall"), ex.prompt, " " + ex.answer, method="ig")
    assert res.tokens[0] == "<bos>" and res.tokens[1:] == ex.words
    res.save(tmp_path / "r")
    assert "<" in res.to_html()
