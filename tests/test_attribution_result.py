"""The result type: accessors, aggregation, tables, files, offline HTML."""

from __future__ import annotations

import json

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError, ResultFileError

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def res(tiny_model):
    return ma.attribute(tiny_model, "Unbelievably, the capital of France is", ma.ForcedContinuation(" Paris ok"), method="ig", n_steps=16)


def test_fields(res):
    assert res.dims == ("target", "src")
    assert res.scores.shape == (len(res.targets), len(res.tokens))
    assert res.targets == [" Paris", " ok"]
    assert res.method == "integrated_gradients" and res.params["n_steps"] == 16
    assert "completeness_error" in res.diagnostics and res.diagnostics["seconds"] > 0
    assert res.is_signed
    with pytest.raises(Exception):
        res.method = "x"  # immutable


def test_top_k(res):
    top = res.top_k(3)
    s = res.scores[0]
    assert [i for i, _, _ in top] == torch.topk(s, 3).indices.tolist()
    top_abs = res.top_k(2, by="abs", target=" ok")
    assert [i for i, _, _ in top_abs] == torch.topk(res.scores[1].abs(), 2).indices.tolist()
    with pytest.raises(InputError):
        res.top_k(2, target=" nope")


def test_word_aggregation_keeps_completeness(res):
    words = res.aggregate("words")
    assert len(words.tokens) < len(res.tokens)
    assert "".join(words.tokens) == "".join(res.tokens)
    torch.testing.assert_close(words.scores.sum(-1), res.scores.sum(-1))
    assert words.diagnostics["completeness_preserved_by_aggregation"] is True
    assert any(t.strip() == "Unbelievably" for t in words.tokens)
    mx = res.aggregate("words", how="max")
    assert mx.diagnostics["completeness_preserved_by_aggregation"] is False


def test_span_aggregation(res):
    agg = res.aggregate([(1, 4)])
    assert agg.tokens[1] == "".join(res.tokens[1:4])
    torch.testing.assert_close(agg.scores[:, 1], res.scores[:, 1:4].sum(-1))
    with pytest.raises(InputError, match="overlap"):
        res.aggregate([(1, 3), (2, 4)])
    with pytest.raises(InputError):
        res.aggregate([(3, 3)])


def test_dataframe(res):
    df = res.to_dataframe()
    assert len(df) == res.scores.numel()
    row = df[(df.target == 1) & (df.src == 2)].iloc[0]
    assert row.score == pytest.approx(float(res.scores[1, 2]))
    assert row.token == res.tokens[2]


def test_save_load_roundtrip(res, tmp_path):
    p = res.save(tmp_path / "r.mechattr")
    back = ma.Attribution.load(p)
    assert back.tokens == res.tokens and back.targets == res.targets and back.dims == res.dims
    torch.testing.assert_close(back.scores, res.scores)
    assert back.params["n_steps"] == 16
    assert back.diagnostics["completeness_error"] == pytest.approx(res.diagnostics["completeness_error"])


def test_truncated_file(res, tmp_path):
    p = res.save(tmp_path / "r.mechattr")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultFileError, match="truncated"):
        ma.Attribution.load(p)


def test_other_version_and_foreign_files(res, tmp_path):
    from safetensors.torch import save_file

    meta = res.to_dict()
    meta.pop("scores")
    meta["format_version"] = 99
    save_file({"scores": res.scores.contiguous()}, str(tmp_path / "v.mechattr"), metadata={"mechattr": json.dumps(meta)})
    with pytest.raises(ResultFileError, match="version 99"):
        ma.Attribution.load(tmp_path / "v.mechattr")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ResultFileError, match="not a mechattr"):
        ma.Attribution.load(tmp_path / "f.safetensors")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ResultFileError):
        ma.Attribution.load(tmp_path / "t.txt")
    with pytest.raises(ResultFileError, match="No result file"):
        ma.Attribution.load(tmp_path / "missing.mechattr")


def test_failed_save_keeps_existing_file(res, tmp_path, monkeypatch):
    p = res.save(tmp_path / "r.mechattr")
    before = p.read_bytes()
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        res.save(p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["r.mechattr"]  # no temp file left


def test_html_is_offline(res, tmp_path):
    html = res.to_html(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert text == html
    assert "CircuitsVis.render(" in text and "ColoredTokensMulti" in text
    assert "unpkg.com" not in text and "cdn." not in text.lower().replace("cdn_src", "")
    assert text.count("var CircuitsVis=") == 1  # the bundle is inlined once
    assert "<script src=" not in text


def test_show_returns_circuitsvis(res, tiny_model):
    from circuitsvis.utils.render import RenderedHTML

    assert isinstance(res.show(), RenderedHTML)
    single = ma.attribute(tiny_model, PROMPT, " Paris", method="saliency")
    assert isinstance(single.show(), RenderedHTML)
    assert isinstance(ma.compare([single, ma.attribute(tiny_model, PROMPT, " Paris", method="ixg")]), RenderedHTML)


def test_json(res, tmp_path):
    d = json.loads(res.to_json(tmp_path / "r.json"))
    assert d["tokens"] == res.tokens and d["dims"] == ["target", "src"]
    assert len(d["scores"]) == len(res.targets)
