"""Dataset runs: results equal per-item ``attribute`` calls, shards are resumable without
recomputation, mismatched reruns are refused, the CLI drives it, and two gloo ranks under torchrun
split the shards and merge to the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mechattr as ma
import mechattr.api
from mechattr.tl.adapter import tl_major
from mechattr.cli import main
from mechattr.dataset import read_prompts, read_shard, shard_path

PROMPTS = [
    "The capital of France is",
    {"text": "The keys to the cabinet", "target": " are", "contrast": " is"},
    "When Mary and John went to the store, John gave a drink to",
    {"text": "One two three", "target": " four"},
    "Hello world",
]


def _reference(model, prompts, method, **params):
    """Each item through ma.attribute on its own: what a dataset run must reproduce."""
    out = []
    for p in prompts:
        p = {"text": p} if isinstance(p, str) else p
        out.append(ma.attribute(model, p["text"], p.get("target"), contrast=p.get("contrast"),
                                method=method, **params))
    return out


def _assert_same(results, reference):
    assert len(results) == len(reference)
    for i, (r, ref) in enumerate(zip(results, reference)):
        assert r.diagnostics["dataset_index"] == i
        assert r.tokens == ref.tokens and r.targets == ref.targets and r.dims == ref.dims
        assert r.method == ref.method and r.target_description == ref.target_description
        torch.testing.assert_close(r.scores, ref.scores, rtol=0, atol=1e-6)


class Counter:
    """Wraps mechattr.api.attribute: counts calls and can fail on the n-th, like a crash."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at, self.orig = 0, fail_at, mechattr.api.attribute

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return self.orig(*args, **kwargs)


def test_interrupted_run_resumes_without_recomputing(tiny_model, tmp_path, monkeypatch):
    reference = _reference(tiny_model, PROMPTS, "ixg")
    out = tmp_path / "run"

    crash = Counter(fail_at=4)  # item 3: shards 0 (items 0-1) done, shard 1 (2-3) half done
    monkeypatch.setattr(mechattr.api, "attribute", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ma.attribute_dataset(tiny_model, PROMPTS, method="ixg", out_dir=out, shard_size=2, quiet=True)
    assert shard_path(out, 0).exists() and not shard_path(out, 1).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ma.ResultFileError, match="unfinished"):
        ma.load_dataset_results(out)
    partial = ma.load_dataset_results(out, allow_missing=True)
    _assert_same(partial, reference[:2])
    before = shard_path(out, 0).stat().st_mtime_ns

    again = Counter()
    monkeypatch.setattr(mechattr.api, "attribute", again)
    run = ma.attribute_dataset(tiny_model, PROMPTS, method="ixg", out_dir=out, shard_size=2, quiet=True)
    assert again.calls == 3  # items 2, 3, 4 only
    assert run.shards_skipped == [0] and run.shards_computed == [1, 2]
    assert run.items_computed == 3 and run.n_items == 5 and run.n_shards == 3
    assert run.items_per_second > 0 and "items/s" in run.summary()
    assert shard_path(out, 0).stat().st_mtime_ns == before  # not rewritten
    _assert_same(ma.load_dataset_results(out), reference)
    _assert_same(run.load(), reference)

    done = Counter()
    monkeypatch.setattr(mechattr.api, "attribute", done)
    run = ma.attribute_dataset(tiny_model, PROMPTS, method="ixg", out_dir=out, shard_size=2, quiet=True)
    assert done.calls == 0 and run.shards_skipped == [0, 1, 2] and run.items_computed == 0

    # A shard file holds its items' indices and the rank that wrote it; results save/load alike.
    header, entries = read_shard(shard_path(out, 1))
    assert header["shard"] == 1 and header["rank"] == 0 and header["world_size"] == 1
    assert [i for i, _ in entries] == [2, 3]
    entries[0][1].save(tmp_path / "one.mechattr")
    torch.testing.assert_close(ma.Attribution.load(tmp_path / "one.mechattr").scores, reference[2].scores)


def test_other_arguments_are_refused_and_no_resume_restarts(tiny_model, tmp_path):
    prompts = PROMPTS[:2]
    out = tmp_path / "run"
    ma.attribute_dataset(tiny_model, prompts, method="saliency", out_dir=out, shard_size=1, quiet=True)
    for change, word in [
        (dict(method="ixg"), "method"),
        (dict(method="saliency", reduce="l1"), "params"),
        (dict(method="saliency", prompts=prompts[::-1]), "prompts_sha256"),
        (dict(method="saliency", shard_size=2), "shard_size"),
        (dict(method="saliency", target=" Paris"), "target"),
        (dict(method="saliency", seed=1), "seed"),
    ]:
        kw = {"prompts": prompts, "shard_size": 1, **change}
        with pytest.raises(ma.InputError, match=word) as e:
            ma.attribute_dataset(tiny_model, kw.pop("prompts"), out_dir=out, quiet=True, **kw)
        assert "resume=False" in str(e.value)
    # Batching is not part of the result, so another memory cap resumes the same run.
    run = ma.attribute_dataset(tiny_model, prompts, method="saliency", out_dir=out, shard_size=1,
                               memory_mb=64, quiet=True)
    assert run.items_computed == 0
    run = ma.attribute_dataset(tiny_model, prompts, method="ixg", out_dir=out, shard_size=2,
                               resume=False, quiet=True)
    assert run.shards_computed == [0] and sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    (res,) = ma.load_dataset_results(out, allow_missing=True)[:1]
    assert res.method == "input_x_gradient" and res.params["reduce"] == "sum"
    assert json.loads((out / "manifest.json").read_text())["method"] == "input_x_gradient"


def test_prompt_sources_and_bad_input(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text('"Hello world"\n\n{"text": "The keys to the cabinet", "target": " are", "contrast": " is"}\n')
    assert read_prompts(jl) == [{"text": "Hello world"},
                                {"text": "The keys to the cabinet", "target": " are", "contrast": " is"}]
    txt = tmp_path / "p.txt"
    txt.write_text("one\n\ntwo three\n")
    assert read_prompts(str(txt)) == [{"text": "one"}, {"text": "two three"}]
    js = tmp_path / "p.json"
    js.write_text('["a", {"text": "b", "position": 1}]')
    assert read_prompts(js) == [{"text": "a"}, {"text": "b", "position": 1}]
    for bad, word in [
        ([], "empty"),
        ([{"txt": "a"}], "unknown keys"),
        ([{"target": " a"}], "text"),
        ([3], "string or a dict"),
        (str(tmp_path / "missing.jsonl"), "No prompts file"),
        (42, "list of strings"),
    ]:
        with pytest.raises(ma.InputError, match=word):
            read_prompts(bad)
    (tmp_path / "bad.jsonl").write_text('"ok"\n{oops\n')
    with pytest.raises(ma.InputError, match="line 2"):
        read_prompts(tmp_path / "bad.jsonl")


def test_bad_arguments_fail_before_any_work(tiny_model, tmp_path):
    with pytest.raises(ma.MethodError, match="n_step"):
        ma.attribute_dataset(tiny_model, ["a"], method="ig", out_dir=tmp_path / "x", n_step=4)
    with pytest.raises(ma.InputError, match="shard_size"):
        ma.attribute_dataset(tiny_model, ["a"], method="ixg", out_dir=tmp_path / "x", shard_size=0)
    assert not (tmp_path / "x").exists()
    # An item that cannot be attributed is named; the shards before it are kept.
    bad = ["Hello world", {"text": "The capital of France is", "target": " Paris Rome"}]
    with pytest.raises(ma.TargetError, match=r"Prompt 1 \('The capital of France is'\)"):
        ma.attribute_dataset(tiny_model, bad, method="saliency", out_dir=tmp_path / "y", shard_size=1, quiet=True)
    assert shard_path(tmp_path / "y", 0).exists() and not shard_path(tmp_path / "y", 1).exists()
    with pytest.raises(ma.ResultFileError, match="No dataset run"):
        ma.load_dataset_results(tmp_path)


def test_cli_attribute_dataset(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ma, "load_model", lambda *a, **k: tiny_model)  # the model is loaded once per session
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(p) for p in PROMPTS[:2]) + "\n")
    out = tmp_path / "run"
    args = ["attribute-dataset", str(f), "--model", "tiny-gpt2", "--method", "saliency", "--out", str(out),
            "--shard-size", "1", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_items"] == 2 and summary["shards_computed"] == [0, 1] and summary["items_per_second"] > 0
    _assert_same(ma.load_dataset_results(out), _reference(tiny_model, PROMPTS[:2], "saliency"))
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["shards_skipped"] == [0, 1]
    assert main([*args[:5], "ixg", *args[6:]]) == 2  # another method into the same directory
    assert "other arguments" in capsys.readouterr().err
    assert main([*args[:5], "saliency", *args[6:], "--no-resume", "-p", "reduce='l1'"]) == 0
    assert ma.load_dataset_results(out)[0].params["reduce"] == "l1"


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import mechattr as ma

    model = ma.load_model("tiny-gpt2")
    run = ma.attribute_dataset(model, sys.argv[1], method="ixg", out_dir=sys.argv[2], shard_size=1)
    with open(os.path.join(sys.argv[3], f"rank{run.rank}.json"), "w") as f:
        json.dump(run.to_dict(), f)
    """
)


def test_torchrun_two_gloo_ranks_match_one_process(tiny_model, tmp_path):
    prompts = [PROMPTS[0], PROMPTS[1], "Hello world", "A B C"]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(p) for p in prompts) + "\n")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MECHATTR_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         str(script), str(f), str(out), str(logs)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["shards_computed"] == [0, 2] and ranks[1]["shards_computed"] == [1, 3]
    assert ranks[0]["total_items_computed"] == 4
    for s in range(4):  # each shard written once, by the rank it belongs to
        header, entries = read_shard(shard_path(out, s))
        assert header["rank"] == s % 2 and header["world_size"] == 2 and [i for i, _ in entries] == [s]
    merged = ma.load_dataset_results(out)
    single = ma.attribute_dataset(tiny_model, str(f), method="ixg", out_dir=tmp_path / "one",
                                  shard_size=1, quiet=True)
    assert single.shards_computed == [0, 1, 2, 3]
    _assert_same(merged, single.load())


def test_load_model_passes_multi_device_options_to_transformerlens(tiny_model, monkeypatch, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    from mechattr.tl.loading import cache_dir

    seen = []

    def fake_boot(name, **kwargs):
        seen.append((name, kwargs))
        return tiny_model

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(fake_boot))
    d = cache_dir() / "models" / "tiny-gpt2-v1"
    assert ma.load_model(d, kind="bridge", device_map="auto", max_memory={0: "10GiB"}) is tiny_model
    assert ma.load_model(d, kind="bridge", n_devices=2) is tiny_model
    assert ma.load_model(d, kind="bridge") is tiny_model
    # TransformerLens takes a placement or a device, never both.
    assert seen[0][1] == {"device_map": "auto", "max_memory": {0: "10GiB"}, "dtype": torch.float32}
    assert seen[1][1] == {"n_devices": 2, "dtype": torch.float32}
    assert seen[2][1] == {"device": "cpu", "dtype": torch.float32}
    with pytest.raises(ma.ModelError, match="built-in"):
        ma.load_model("tiny-gpt2", n_devices=2)
    with pytest.raises(ma.ModelError, match="already loaded"):
        ma.load_model(tiny_model, device_map="auto")
    if tl_major() < 4:
        with pytest.raises(ma.ModelError, match="n_devices"):
            ma.load_model(d, kind="hooked", device_map="auto")
